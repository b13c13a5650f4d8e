//! The walk from the root group to every dataset: which objects are groups and which are
//! datasets, the children of each group in name order, each object once (hard links may form
//! cycles), nesting bounded; and a dataset's data, read only once its bytes are known to exist.
//! Parsing the structures is `header.rs`, `messages.rs` and `groups.rs`.

use std::collections::HashSet;

use super::file::File;
use super::groups::{NodeReads, symbol_table};
use super::header::{
    Budget, DATASPACE, DATATYPE, EXTERNAL_FILES, FILTER_PIPELINE, FLAG_MUST_UNDERSTAND,
    FLAG_SHARED, LAST_KNOWN_MESSAGE, LAYOUT, LINK, LINK_INFO, Message, SYMBOL_TABLE, read_header,
};
use super::messages::{DataLayout, Float, dataspace, datatype, join, layout, link};
use super::{H5Dataset, MAX_DEPTH, err, to_usize};
use crate::error::Result;

/// The walk through the file: what has been read, and how much more may be.
pub(super) struct Walk<'a> {
    pub(super) file: File<'a>,
    /// Bytes that may still be read (see the module docs).
    pub(super) budget: Budget,
    pub(super) seen_objects: HashSet<u64>,
    pub(super) seen_nodes: HashSet<u64>,
    pub(super) datasets: Vec<H5Dataset>,
}

impl<'a> Walk<'a> {
    /// Reads the object at `address` (a group or a dataset) and everything below it.
    pub(super) fn object(&mut self, address: u64, path: &str, depth: usize) -> Result<()> {
        let shown = if path.is_empty() { "/" } else { path };
        if depth > MAX_DEPTH {
            return Err(err(format!(
                "`{shown}` is nested more than {MAX_DEPTH} groups deep"
            )));
        }
        if !self.seen_objects.insert(address) {
            return Ok(());
        }
        let messages = read_header(self.file, &mut self.budget, address)?;
        for m in &messages {
            if m.flags & FLAG_MUST_UNDERSTAND != 0 && m.kind > LAST_KNOWN_MESSAGE {
                return Err(err(format!(
                    "object `{shown}` (header at address {address}) has a message of unknown \
                     type {:#x} marked as required",
                    m.kind
                )));
            }
            if m.flags & FLAG_SHARED != 0
                && [DATASPACE, DATATYPE, LAYOUT, LINK, LINK_INFO, SYMBOL_TABLE].contains(&m.kind)
            {
                return Err(err(format!(
                    "object `{shown}` uses a shared message (type {:#x}, such as a committed \
                     datatype); not supported",
                    m.kind
                )));
            }
        }
        if messages.iter().any(|m| m.kind == LAYOUT) {
            return self.dataset(&messages, path);
        }
        let mut children = Vec::new();
        for m in &messages {
            let mut c = m.data;
            match m.kind {
                SYMBOL_TABLE => {
                    let btree = self.file.address(&mut c)?;
                    let heap = self.file.address(&mut c)?;
                    match (btree, heap) {
                        (Some(btree), Some(heap)) => {
                            let mut nodes = NodeReads {
                                budget: &mut self.budget,
                                seen: &mut self.seen_nodes,
                            };
                            symbol_table(self.file, &mut nodes, btree, heap, path, &mut children)?
                        }
                        _ => {
                            return Err(err(format!(
                                "group `{shown}`'s symbol table message has an undefined address"
                            )));
                        }
                    }
                }
                LINK_INFO => {
                    let _version = c.u8()?;
                    let flags = c.u8()?;
                    if flags & 0x01 != 0 {
                        c.skip(8)?; // maximum creation index
                    }
                    if self.file.address(&mut c)?.is_some() {
                        return Err(err(format!(
                            "group `{shown}` stores its links densely (a fractal heap, as \
                             libver=\"latest\" does for more than 8 links); not supported"
                        )));
                    }
                }
                LINK => children.push(link(self.file, c, path)?),
                _ => {}
            }
        }
        // Any other object (a committed datatype) holds no dataset.
        drop(messages);
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, child) in children {
            self.object(child, &join(path, &name), depth + 1)?;
        }
        Ok(())
    }

    /// Reads a dataset from its header's messages.
    fn dataset(&mut self, messages: &[Message], path: &str) -> Result<()> {
        let find = |kind, name: &str| {
            messages
                .iter()
                .find(|m| m.kind == kind)
                .map(|m| m.data)
                .ok_or_else(|| err(format!("dataset `{path}` has no {name} message")))
        };
        for (kind, what) in [
            (FILTER_PIPELINE, "filters (compression)"),
            (EXTERNAL_FILES, "external storage"),
        ] {
            if messages.iter().any(|m| m.kind == kind) {
                return Err(err(format!("dataset `{path}` uses {what}; not supported")));
            }
        }
        let dims = dataspace(self.file, find(DATASPACE, "dataspace")?, path)?;
        let float = datatype(find(DATATYPE, "datatype")?, path)?;
        let storage = layout(self.file, find(LAYOUT, "layout")?, path)?;

        let count = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| err(format!("dataset `{path}`'s shape {dims:?} overflows")))?;
        let element = float.size();
        let nbytes = count.checked_mul(element).ok_or_else(|| {
            err(format!(
                "dataset `{path}`'s size ({count} elements of {element} bytes) overflows"
            ))
        })?;
        let shape = dims
            .iter()
            .map(|&d| to_usize(d, || format!("dataset `{path}`'s dimension")))
            .collect::<Result<Vec<_>>>()?;
        let raw: &[u8] = if count == 0 {
            &[]
        } else {
            match storage {
                DataLayout::Compact(data) => {
                    if data.remaining() as u64 != nbytes {
                        return Err(err(format!(
                            "dataset `{path}` holds {} bytes of compact data, its shape and \
                             type need {nbytes}",
                            data.remaining()
                        )));
                    }
                    // Already counted against the budget with its header.
                    data.rest()
                }
                DataLayout::Contiguous { address, size } => {
                    let address = address.ok_or_else(|| {
                        err(format!(
                            "dataset `{path}` has no data (storage never allocated)"
                        ))
                    })?;
                    if size.is_some_and(|s| s < nbytes) {
                        return Err(err(format!(
                            "dataset `{path}`'s storage is {} bytes, its shape and type need \
                             {nbytes}",
                            size.unwrap_or_default()
                        )));
                    }
                    let data = self
                        .file
                        .at(address, Some(nbytes), "dataset data")
                        .map_err(|_| {
                            err(format!(
                                "dataset `{path}`'s {nbytes} bytes at address {address} pass \
                                 the end of the {}-byte file",
                                self.file.bytes.len()
                            ))
                        })?
                        .rest();
                    self.budget.charge(nbytes, || format!("dataset `{path}`"))?;
                    data
                }
            }
        };
        // Only now, with the bytes in hand, is memory allocated for them.
        let data = match float {
            Float::F32 => raw
                .chunks_exact(4)
                .filter_map(|b| b.try_into().ok())
                .map(f32::from_le_bytes)
                .collect(),
            Float::F64 => raw
                .chunks_exact(8)
                .filter_map(|b| b.try_into().ok())
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        };
        self.datasets.push(H5Dataset {
            path: path.to_string(),
            shape,
            data,
        });
        Ok(())
    }
}
