//! A read-only reader for the subset of HDF5 that Keras 3 checkpoints (`.weights.h5`) use.
//!
//! Keras 3 `model.save_weights("m.weights.h5")` writes through h5py with its default
//! `libver="earliest"`: a version 0 superblock, version 1 object headers, groups as symbol tables
//! (a version 1 B-tree of symbol table nodes, names in a local heap), and every variable as a
//! contiguous little-endian float32 dataset at `layers/<layer>/.../vars/<i>`. The C library
//! (libhdf5) does not build for `wasm32-unknown-unknown`, and the pure-Rust HDF5 crates are young
//! and large for the little needed here, so the reader is this module.
//!
//! Read: superblock versions 0 to 3 (so h5py's `libver="latest"` files too), object header
//! versions 1 and 2 with continuation blocks (version 2 checksums are verified), groups as symbol
//! tables or as link messages in the header ("compact" link storage), contiguous and compact
//! dataset layouts, simple and scalar dataspaces, little-endian IEEE float32 and float64 (float64
//! is rounded to the nearest f32, so beyond f32's range it becomes infinite). Attributes and other
//! metadata are skipped.
//!
//! Refused with [`Error::Hdf5`] naming what and where: chunked and virtual layouts, filters,
//! external storage, dense link storage (a fractal heap, which `libver="latest"` uses for groups
//! of more than 8 links), soft and external links, shared messages (committed datatypes), null
//! dataspaces, and every other datatype.
//!
//! The bytes may be hostile (the reader is fuzzed), so:
//! - every offset and length is checked against the buffer with checked arithmetic, and nothing
//!   is indexed without a check;
//! - nothing is allocated by a declared size before the bytes it describes are known to exist;
//! - the structures of a well-formed file do not overlap, so the reader reads at most as many
//!   bytes (headers, B-tree nodes, names, data) as the file holds: overlapping or repeated
//!   structures cannot multiply its work or its output;
//! - group nesting is bounded, B-tree levels must count down, a B-tree node reached twice is an
//!   error, and an object reached twice (hard links may form cycles) is read once, as h5py's
//!   `visit` does.

use std::collections::HashSet;

use crate::error::{Error, Result};

/// One dataset of an HDF5 file.
#[derive(Clone, Debug, PartialEq)]
pub struct H5Dataset {
    /// The full path from the root group, without a leading `/`
    /// (`layers/compositional_attention/to_out/vars/0`).
    pub path: String,
    /// The dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// The elements in row-major order.
    pub data: Vec<f32>,
}

/// Reads every dataset in an HDF5 file as f32, in path order (the children of each group sorted
/// by name, depth first).
pub fn read_datasets(bytes: &[u8]) -> Result<Vec<H5Dataset>> {
    read(bytes, true)
}

/// [`read_datasets`], optionally without verifying checksums: the tests corrupt version 2
/// structures and want the parser, not the checksum, to meet the damage.
fn read(bytes: &[u8], verify_checksums: bool) -> Result<Vec<H5Dataset>> {
    let file = File::open(bytes, verify_checksums)?;
    let mut walk = Walk {
        file,
        budget: bytes.len() as u64,
        seen_objects: HashSet::new(),
        seen_nodes: HashSet::new(),
        datasets: Vec::new(),
    };
    walk.object(file.root, "", 0)?;
    Ok(walk.datasets)
}

/// Groups nested deeper than this are refused (Keras nests about 5).
const MAX_DEPTH: usize = 64;
/// HDF5's own limit on a dataspace's rank (`H5S_MAX_RANK`).
const MAX_RANK: usize = 32;
/// Continuation blocks per object header.
const MAX_HEADER_BLOCKS: usize = 256;
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

fn err(message: impl Into<String>) -> Error {
    Error::Hdf5(message.into())
}

fn to_usize(value: u64, what: impl FnOnce() -> String) -> Result<usize> {
    usize::try_from(value).map_err(|_| err(format!("{} ({value}) does not fit in memory", what())))
}

/// Little-endian fields of `bytes[pos..end]`; reading past `end` is an error naming the structure
/// and its offset, never a panic.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    /// The whole file, so that positions are file offsets.
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..self.end).unwrap_or_default()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let slice = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.end)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or_else(|| {
                err(format!(
                    "{} at offset {} is truncated: {n} more bytes needed, {} left",
                    self.what,
                    self.pos,
                    self.remaining()
                ))
            })?;
        self.pos += n;
        Ok(slice)
    }

    /// The next `n` bytes as a cursor of their own, and skips them.
    fn sub(&mut self, n: usize, what: &'static str) -> Result<Cursor<'a>> {
        let pos = self.pos;
        self.take(n)?;
        Ok(Cursor {
            bytes: self.bytes,
            pos,
            end: self.pos,
            what,
        })
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.take(N)?;
        slice
            .try_into()
            .map_err(|_| err(format!("{}: internal length error", self.what)))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// An unsigned integer of `size` bytes (1 to 8).
    fn uint(&mut self, size: u8) -> Result<u64> {
        let bytes = self.take(usize::from(size))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| acc.wrapping_shl(8) | u64::from(b)))
    }

    fn signature(&mut self, expected: &[u8; 4]) -> Result<()> {
        let at = self.pos;
        let found = self.take(4)?;
        if found == expected {
            Ok(())
        } else {
            Err(err(format!(
                "{} at offset {at}: expected the signature {:?}, found {:?}",
                self.what,
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(found)
            )))
        }
    }
}

/// The superblock's facts every other structure needs.
#[derive(Clone, Copy)]
struct File<'a> {
    bytes: &'a [u8],
    /// Addresses in the file are relative to this offset (non-zero after a user block).
    base: u64,
    offset_size: u8,
    length_size: u8,
    /// The root group's object header address.
    root: u64,
    verify_checksums: bool,
}

impl<'a> File<'a> {
    fn open(bytes: &'a [u8], verify_checksums: bool) -> Result<File<'a>> {
        // The superblock sits at 0, 512, 1024, 2048, ... (after a user block, if any).
        let mut at = 0usize;
        while bytes.get(at..at.saturating_add(8)) != Some(SIGNATURE.as_slice()) {
            at = if at == 0 { 512 } else { at.saturating_mul(2) };
            if at >= bytes.len() {
                return Err(err("not an HDF5 file: no superblock signature found"));
            }
        }
        let mut c = Cursor {
            bytes,
            pos: at + 8,
            end: bytes.len(),
            what: "superblock",
        };
        let version = c.u8()?;
        let mut file = File {
            bytes,
            base: 0,
            offset_size: 8,
            length_size: 8,
            root: 0,
            verify_checksums,
        };
        let eof = match version {
            0 | 1 => {
                c.skip(4)?; // free-space, root group and shared header versions, reserved
                file.offset_size = c.u8()?;
                file.length_size = c.u8()?;
                c.skip(1 + 2 + 2 + 4)?; // reserved, group B-tree K values, consistency flags
                if version == 1 {
                    c.skip(4)?; // indexed storage K, reserved
                }
                file.check_sizes()?;
                file.base = c.uint(file.offset_size)?;
                c.skip(usize::from(file.offset_size))?; // free-space info
                let eof = file.address(&mut c)?;
                c.skip(usize::from(file.offset_size))?; // driver info block
                // The root group's symbol table entry: name offset, then object header address.
                c.skip(usize::from(file.offset_size))?;
                file.root = file
                    .address(&mut c)?
                    .ok_or_else(|| err("the superblock has no root group address"))?;
                eof
            }
            2 | 3 => {
                file.offset_size = c.u8()?;
                file.length_size = c.u8()?;
                c.skip(1)?; // consistency flags
                file.check_sizes()?;
                file.base = c.uint(file.offset_size)?;
                c.skip(usize::from(file.offset_size))?; // superblock extension
                let eof = file.address(&mut c)?;
                file.root = file
                    .address(&mut c)?
                    .ok_or_else(|| err("the superblock has no root group address"))?;
                file.verify_checksum(&mut c, at, "superblock")?;
                eof
            }
            v => {
                return Err(err(format!(
                    "superblock version {v} is not supported (0 to 3 are)"
                )));
            }
        };
        // A truncated file is the commonest damage: say so before anything fails deeper.
        if let Some(eof) = eof {
            let needed = file.base.checked_add(eof);
            if needed.is_none_or(|n| n > bytes.len() as u64) {
                return Err(err(format!(
                    "the file is truncated: the superblock says it ends at byte {}, it has {}",
                    needed.map_or_else(|| "(overflow)".to_string(), |n| n.to_string()),
                    bytes.len()
                )));
            }
        }
        Ok(file)
    }

    fn check_sizes(&self) -> Result<()> {
        for (name, size) in [("offsets", self.offset_size), ("lengths", self.length_size)] {
            if ![2, 4, 8].contains(&size) {
                return Err(err(format!(
                    "the superblock's size of {name} is {size} (2, 4 or 8 expected)"
                )));
            }
        }
        Ok(())
    }

    /// An address field; `None` is HDF5's "undefined address" (all bits set).
    fn address(&self, c: &mut Cursor) -> Result<Option<u64>> {
        let value = c.uint(self.offset_size)?;
        let undefined = u64::MAX >> (64 - 8 * u32::from(self.offset_size));
        Ok((value != undefined).then_some(value))
    }

    /// Reads the Jenkins lookup3 checksum that follows `bytes[start..c.pos]` and checks it.
    fn verify_checksum(&self, c: &mut Cursor, start: usize, what: &str) -> Result<()> {
        let covered = c.bytes.get(start..c.pos).unwrap_or_default();
        let stored = c.u32()?;
        if self.verify_checksums && lookup3(covered) != stored {
            return Err(err(format!("{what} at offset {start} fails its checksum")));
        }
        Ok(())
    }

    fn length(&self, c: &mut Cursor) -> Result<u64> {
        c.uint(self.length_size)
    }

    /// A cursor at file address `address`, over `len` bytes (to the end of the file if `None`).
    fn at(&self, address: u64, len: Option<u64>, what: &'static str) -> Result<Cursor<'a>> {
        let start = self
            .base
            .checked_add(address)
            .and_then(|a| usize::try_from(a).ok())
            .filter(|&a| a <= self.bytes.len());
        let end = match (start, len) {
            (Some(start), Some(len)) => usize::try_from(len)
                .ok()
                .and_then(|len| start.checked_add(len))
                .filter(|&end| end <= self.bytes.len()),
            (Some(_), None) => Some(self.bytes.len()),
            (None, _) => None,
        };
        match (start, end) {
            (Some(pos), Some(end)) => Ok(Cursor {
                bytes: self.bytes,
                pos,
                end,
                what,
            }),
            _ => Err(err(format!(
                "{what} at address {address}{} passes the end of the {}-byte file",
                len.map(|n| format!(" ({n} bytes)")).unwrap_or_default(),
                self.bytes.len()
            ))),
        }
    }
}

/// One object header message.
struct Message<'a> {
    kind: u16,
    flags: u8,
    data: Cursor<'a>,
}

const NIL: u16 = 0x00;
const DATASPACE: u16 = 0x01;
const LINK_INFO: u16 = 0x02;
const DATATYPE: u16 = 0x03;
const LINK: u16 = 0x06;
const EXTERNAL_FILES: u16 = 0x07;
const LAYOUT: u16 = 0x08;
const FILTER_PIPELINE: u16 = 0x0B;
const CONTINUATION: u16 = 0x10;
const SYMBOL_TABLE: u16 = 0x11;
/// The last message type the format defines; a later one flagged "must understand" is refused.
const LAST_KNOWN_MESSAGE: u16 = 0x18;
/// Message flag: the message is stored elsewhere (a shared message or committed datatype).
const FLAG_SHARED: u8 = 0x02;
/// Message flag: a reader that does not know the type must fail.
const FLAG_MUST_UNDERSTAND: u8 = 0x80;

/// The walk through the file: what has been read, and how much more may be.
struct Walk<'a> {
    file: File<'a>,
    /// Bytes that may still be read; starts at the file's size (see the module docs).
    budget: u64,
    seen_objects: HashSet<u64>,
    seen_nodes: HashSet<u64>,
    datasets: Vec<H5Dataset>,
}

impl<'a> Walk<'a> {
    fn charge(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<()> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            err(format!(
                "{} ({n} bytes) would make the reader read more than the file's {} bytes: \
                 its structures overlap or repeat",
                what(),
                self.file.bytes.len()
            ))
        })?;
        Ok(())
    }

    /// Reads the object at `address` (a group or a dataset) and everything below it.
    fn object(&mut self, address: u64, path: &str, depth: usize) -> Result<()> {
        let shown = if path.is_empty() { "/" } else { path };
        if depth > MAX_DEPTH {
            return Err(err(format!(
                "`{shown}` is nested more than {MAX_DEPTH} groups deep"
            )));
        }
        if !self.seen_objects.insert(address) {
            return Ok(());
        }
        let messages = self.header(address)?;
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
                            self.symbol_table(btree, heap, path, &mut children)?
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
                LINK => children.push(self.link(c, path)?),
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

    /// The messages of the object header at `address`, continuation blocks followed.
    fn header(&mut self, address: u64) -> Result<Vec<Message<'a>>> {
        let mut c = self.file.at(address, None, "object header")?;
        let start = c.pos;
        let mut messages = Vec::new();
        let mut blocks = Vec::new();
        if c.rest().starts_with(b"OHDR") {
            c.skip(4)?;
            let version = c.u8()?;
            if version != 2 {
                return Err(err(format!(
                    "object header at address {address}: version {version} is not supported"
                )));
            }
            let flags = c.u8()?;
            if flags & 0x20 != 0 {
                c.skip(16)?; // access, modification, change and birth times
            }
            if flags & 0x10 != 0 {
                c.skip(4)?; // attribute storage phase change values
            }
            let size = c.uint(1 << (flags & 0x03))?;
            let size = to_usize(size, || {
                format!("object header at address {address}'s size")
            })?;
            let body = c.sub(size, "object header")?;
            self.charge(size as u64, || {
                format!("object header at address {address}")
            })?;
            self.file.verify_checksum(&mut c, start, "object header")?;
            let creation_order = flags & 0x04 != 0;
            messages_v2(self.file, body, creation_order, &mut messages, &mut blocks)?;
            let mut i = 0;
            while let Some(&(block, len)) = blocks.get(i) {
                i += 1;
                if i > MAX_HEADER_BLOCKS {
                    return Err(err(format!(
                        "object header at address {address} has more than {MAX_HEADER_BLOCKS} \
                         continuation blocks"
                    )));
                }
                let mut c = self.file.at(block, Some(len), "continuation block")?;
                self.charge(len, || format!("continuation block at address {block}"))?;
                let start = c.pos;
                c.signature(b"OCHK")?;
                let body_len = c.remaining().checked_sub(4).ok_or_else(|| {
                    err(format!(
                        "continuation block at address {block} is too short"
                    ))
                })?;
                let body = c.sub(body_len, "continuation block")?;
                self.file
                    .verify_checksum(&mut c, start, "continuation block")?;
                messages_v2(self.file, body, creation_order, &mut messages, &mut blocks)?;
            }
        } else {
            let version = c.u8()?;
            if version != 1 {
                return Err(err(format!(
                    "object header at address {address}: version {version} is not supported \
                     (1 and 2 are)"
                )));
            }
            c.skip(1 + 2 + 4)?; // reserved, message count, reference count
            let size = c.u32()?;
            c.skip(4)?; // padding to 8 bytes
            let size = to_usize(u64::from(size), || {
                format!("object header at address {address}'s size")
            })?;
            let body = c.sub(size, "object header")?;
            self.charge(size as u64, || {
                format!("object header at address {address}")
            })?;
            messages_v1(self.file, body, &mut messages, &mut blocks)?;
            let mut i = 0;
            while let Some(&(block, len)) = blocks.get(i) {
                i += 1;
                if i > MAX_HEADER_BLOCKS {
                    return Err(err(format!(
                        "object header at address {address} has more than {MAX_HEADER_BLOCKS} \
                         continuation blocks"
                    )));
                }
                let body = self.file.at(block, Some(len), "continuation block")?;
                self.charge(len, || format!("continuation block at address {block}"))?;
                messages_v1(self.file, body, &mut messages, &mut blocks)?;
            }
        }
        Ok(messages)
    }

    /// Adds the links of a symbol-table group: a version 1 B-tree whose leaves are symbol table
    /// nodes, the names in the group's local heap.
    fn symbol_table(
        &mut self,
        btree: u64,
        heap: u64,
        path: &str,
        children: &mut Vec<(String, u64)>,
    ) -> Result<()> {
        let file = self.file;
        let mut c = file.at(heap, None, "local heap")?;
        c.signature(b"HEAP")?;
        c.skip(4)?; // version, reserved
        let heap_size = file.length(&mut c)?;
        file.length(&mut c)?; // free list head
        let heap_data = file
            .address(&mut c)?
            .ok_or_else(|| err(format!("local heap at address {heap} has no data segment")))?;
        let names = file
            .at(heap_data, Some(heap_size), "local heap data")?
            .rest();

        // Depth first with an explicit stack; each node's level must be its parent's minus one.
        let mut stack = vec![(btree, None::<u8>)];
        while let Some((node, expected_level)) = stack.pop() {
            if !self.seen_nodes.insert(node) {
                return Err(err(format!(
                    "B-tree node at address {node} is reached twice"
                )));
            }
            let mut c = file.at(node, None, "B-tree node")?;
            c.signature(b"TREE")?;
            let node_type = c.u8()?;
            let level = c.u8()?;
            let entries = c.u16()?;
            if node_type != 0 || expected_level.is_some_and(|l| l != level) {
                return Err(err(format!(
                    "B-tree node at address {node} has type {node_type} and level {level}, \
                     expected a group node{}",
                    expected_level
                        .map(|l| format!(" of level {l}"))
                        .unwrap_or_default()
                )));
            }
            let (offset, length) = (usize::from(file.offset_size), usize::from(file.length_size));
            // Siblings, then `entries` keys and children, then the last key.
            let size = 2 * offset + usize::from(entries) * (offset + length) + length;
            let mut c = c.sub(size, "B-tree node")?;
            self.charge(8 + size as u64, || format!("B-tree node at address {node}"))?;
            c.skip(2 * offset)?;
            for _ in 0..entries {
                file.length(&mut c)?; // key
                let child = file.address(&mut c)?.ok_or_else(|| {
                    err(format!(
                        "B-tree node at address {node} has an undefined child"
                    ))
                })?;
                match level.checked_sub(1) {
                    Some(below) => stack.push((child, Some(below))),
                    None => self.symbol_table_node(child, names, heap_data, path, children)?,
                }
            }
        }
        Ok(())
    }

    fn symbol_table_node(
        &mut self,
        node: u64,
        names: &[u8],
        heap_data: u64,
        path: &str,
        children: &mut Vec<(String, u64)>,
    ) -> Result<()> {
        let file = self.file;
        if !self.seen_nodes.insert(node) {
            return Err(err(format!(
                "symbol table node at address {node} is reached twice"
            )));
        }
        let mut c = file.at(node, None, "symbol table node")?;
        c.signature(b"SNOD")?;
        c.skip(2)?; // version, reserved
        let count = c.u16()?;
        let size = usize::from(count) * (2 * usize::from(file.offset_size) + 24);
        let mut c = c.sub(size, "symbol table node")?;
        self.charge(8 + size as u64, || {
            format!("symbol table node at address {node}")
        })?;
        for _ in 0..count {
            let name_offset = c.uint(file.offset_size)?;
            let object = file.address(&mut c)?;
            let cache_type = c.u32()?;
            c.skip(4 + 16)?; // reserved, scratch pad
            let name = usize::try_from(name_offset)
                .ok()
                .and_then(|o| names.get(o..))
                .and_then(|rest| rest.get(..rest.iter().position(|&b| b == 0)?))
                .ok_or_else(|| {
                    err(format!(
                        "symbol table node at address {node}: name offset {name_offset} is \
                         outside the local heap at address {heap_data}"
                    ))
                })?;
            self.charge(name.len() as u64 + 1, || {
                format!("a name in the local heap at {heap_data}")
            })?;
            let name = link_name(name, node)?;
            match (object, cache_type) {
                // A soft link: no object, its target's name in the scratch pad.
                (None, 2) => {
                    return Err(err(format!(
                        "`{}` is a soft link; not supported",
                        join(path, &name)
                    )));
                }
                (None, _) => {
                    return Err(err(format!(
                        "`{}` (symbol table node at address {node}) has no object address",
                        join(path, &name)
                    )));
                }
                (Some(object), _) => children.push((name, object)),
            }
        }
        Ok(())
    }

    /// A hard link message's name and target; soft and external links are refused.
    fn link(&self, mut c: Cursor, path: &str) -> Result<(String, u64)> {
        let at = c.pos;
        let version = c.u8()?;
        if version != 1 {
            return Err(err(format!(
                "link message at offset {at}: version {version} is not supported"
            )));
        }
        let flags = c.u8()?;
        let link_type = if flags & 0x08 != 0 { c.u8()? } else { 0 };
        if flags & 0x04 != 0 {
            c.skip(8)?; // creation order
        }
        if flags & 0x10 != 0 {
            c.skip(1)?; // character set
        }
        let name_len = c.uint(1 << (flags & 0x03))?;
        let name_len = to_usize(name_len, || format!("link name length at offset {at}"))?;
        let name = link_name(c.take(name_len)?, at as u64)?;
        let link = join(path, &name);
        match link_type {
            0 => {
                let target = self
                    .file
                    .address(&mut c)?
                    .ok_or_else(|| err(format!("link `{link}` has an undefined address")))?;
                Ok((name, target))
            }
            1 => Err(err(format!("`{link}` is a soft link; not supported"))),
            64 => Err(err(format!(
                "`{link}` is an external link (to another file); not supported"
            ))),
            t => Err(err(format!(
                "`{link}` is a link of type {t}; not supported"
            ))),
        }
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
                    self.charge(nbytes, || format!("dataset `{path}`"))?;
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

/// Splits a version 1 header block into messages; continuation targets go to `blocks`.
fn messages_v1<'a>(
    file: File<'a>,
    mut c: Cursor<'a>,
    messages: &mut Vec<Message<'a>>,
    blocks: &mut Vec<(u64, u64)>,
) -> Result<()> {
    while c.remaining() >= 8 {
        let kind = c.u16()?;
        let size = c.u16()?;
        let flags = c.u8()?;
        c.skip(3)?;
        let data = c.sub(usize::from(size), "header message")?;
        push_message(file, Message { kind, flags, data }, messages, blocks)?;
    }
    Ok(())
}

/// Splits a version 2 header block into messages; continuation targets go to `blocks`.
fn messages_v2<'a>(
    file: File<'a>,
    mut c: Cursor<'a>,
    creation_order: bool,
    messages: &mut Vec<Message<'a>>,
    blocks: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let prefix = if creation_order { 6 } else { 4 };
    // Fewer bytes than a message prefix left: a gap, which the format allows.
    while c.remaining() >= prefix {
        let kind = u16::from(c.u8()?);
        let size = c.u16()?;
        let flags = c.u8()?;
        if creation_order {
            c.skip(2)?;
        }
        let data = c.sub(usize::from(size), "header message")?;
        push_message(file, Message { kind, flags, data }, messages, blocks)?;
    }
    Ok(())
}

fn push_message<'a>(
    file: File<'a>,
    message: Message<'a>,
    messages: &mut Vec<Message<'a>>,
    blocks: &mut Vec<(u64, u64)>,
) -> Result<()> {
    match message.kind {
        NIL => {}
        CONTINUATION => {
            let mut c = message.data;
            let at = c.pos;
            let address = file.address(&mut c)?.ok_or_else(|| {
                err(format!(
                    "continuation message at offset {at} has an undefined address"
                ))
            })?;
            blocks.push((address, file.length(&mut c)?));
        }
        _ => messages.push(message),
    }
    Ok(())
}

/// A child's path: `parent/name`, or `name` under the root.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// A name as HDF5 stores it (UTF-8 or ASCII); `/`, `.` and empty names cannot be path parts.
fn link_name(bytes: &[u8], at: u64) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(name) if !name.is_empty() && name != "." && !name.contains('/') => Ok(name.to_string()),
        _ => Err(err(format!(
            "the link name {:?} near offset {at} is not a valid name",
            String::from_utf8_lossy(bytes)
        ))),
    }
}

/// The dimensions of a dataspace message (none for a scalar).
fn dataspace(file: File, mut c: Cursor, path: &str) -> Result<Vec<u64>> {
    let version = c.u8()?;
    let rank = usize::from(c.u8()?);
    c.skip(1)?; // flags: maximum dimensions follow the dimensions, not read
    match version {
        1 => c.skip(5)?,
        2 => match c.u8()? {
            0 | 1 => {}
            2 => {
                return Err(err(format!(
                    "dataset `{path}` has a null dataspace (no data)"
                )));
            }
            t => return Err(err(format!("dataset `{path}` has dataspace type {t}"))),
        },
        v => {
            return Err(err(format!(
                "dataset `{path}`: dataspace message version {v} is not supported"
            )));
        }
    }
    if rank > MAX_RANK {
        return Err(err(format!(
            "dataset `{path}` has rank {rank} (HDF5 allows at most {MAX_RANK})"
        )));
    }
    (0..rank).map(|_| file.length(&mut c)).collect()
}

#[derive(Clone, Copy)]
enum Float {
    F32,
    F64,
}

impl Float {
    fn size(self) -> u64 {
        match self {
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }
}

/// Accepts little-endian IEEE float32 and float64; names anything else.
fn datatype(mut c: Cursor, path: &str) -> Result<Float> {
    // Class and version, then 24 bits of class flags: for floats, byte order and
    // normalization in the first byte, the sign bit's position in the second.
    let [class_version, bits0, sign, _] = c.array::<4>()?;
    let size = c.u32()?;
    let class = class_version & 0x0f;
    let kind = match class {
        0 => "integer",
        1 => "float",
        2 => "time",
        3 => "string",
        4 => "bitfield",
        5 => "opaque",
        6 => "compound",
        7 => "reference",
        8 => "enum",
        9 => "variable-length",
        10 => "array",
        _ => "unknown-class",
    };
    let refuse = |what: String| {
        err(format!(
            "dataset `{path}` has type {what}; only little-endian float32 and float64 are read"
        ))
    };
    if class != 1 {
        return Err(refuse(format!("{kind} ({size} bytes)")));
    }
    match bits0 & 0x41 {
        0 => {}
        0x41 => return Err(refuse(format!("VAX-order float ({size} bytes)"))),
        _ => return Err(refuse(format!("big-endian float ({size} bytes)"))),
    }
    let offset = c.u16()?;
    let precision = c.u16()?;
    let [exp_loc, exp_size, mant_loc, mant_size] = c.array::<4>()?;
    let bias = c.u32()?;
    let normalization = (bits0 >> 4) & 0x03;
    let layout = (
        size, offset, precision, exp_loc, exp_size, mant_loc, mant_size, bias, sign,
    );
    match (layout, normalization) {
        ((4, 0, 32, 23, 8, 0, 23, 127, 31), 2) => Ok(Float::F32),
        ((8, 0, 64, 52, 11, 0, 52, 1023, 63), 2) => Ok(Float::F64),
        _ => Err(refuse(format!(
            "non-IEEE float ({size} bytes, precision {precision}, exponent {exp_size} bits)"
        ))),
    }
}

enum DataLayout<'a> {
    /// The data inside the header message.
    Compact(Cursor<'a>),
    /// The data elsewhere in the file; `size` is given from layout version 3 on.
    Contiguous {
        address: Option<u64>,
        size: Option<u64>,
    },
}

fn layout<'a>(file: File<'a>, mut c: Cursor<'a>, path: &str) -> Result<DataLayout<'a>> {
    let refuse = |what: &str| {
        err(format!(
            "dataset `{path}` has a {what} layout; not supported"
        ))
    };
    let version = c.u8()?;
    match version {
        1 | 2 => {
            let rank = usize::from(c.u8()?);
            let class = c.u8()?;
            c.skip(5)?;
            match class {
                0 => {
                    c.skip(rank.saturating_mul(4))?;
                    let size = c.u32()?;
                    let size = to_usize(u64::from(size), || "compact data size".to_string())?;
                    Ok(DataLayout::Compact(c.sub(size, "compact data")?))
                }
                1 => Ok(DataLayout::Contiguous {
                    address: file.address(&mut c)?,
                    size: None,
                }),
                2 => Err(refuse("chunked")),
                k => Err(refuse(&format!("class-{k}"))),
            }
        }
        3 | 4 => match c.u8()? {
            0 => {
                let size = usize::from(c.u16()?);
                Ok(DataLayout::Compact(c.sub(size, "compact data")?))
            }
            1 => Ok(DataLayout::Contiguous {
                address: file.address(&mut c)?,
                size: Some(file.length(&mut c)?),
            }),
            2 => Err(refuse("chunked")),
            3 => Err(refuse("virtual")),
            k => Err(refuse(&format!("class-{k}"))),
        },
        v => Err(err(format!(
            "dataset `{path}`: layout message version {v} is not supported"
        ))),
    }
}

/// Bob Jenkins' lookup3 `hashlittle` with seed 0, HDF5's checksum for version 2 structures.
fn lookup3(data: &[u8]) -> u32 {
    // Up to 12 bytes as three little-endian words, zero-padded.
    let words = |block: &[u8]| {
        let mut w = block
            .chunks(4)
            .map(|b| b.iter().rev().fold(0u32, |w, &x| (w << 8) | u32::from(x)));
        let mut next = || w.next().unwrap_or(0);
        (next(), next(), next())
    };
    let init = 0xdead_beefu32.wrapping_add(data.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = data;
    while rest.len() > 12 {
        let (block, tail) = rest.split_at(12);
        let (x, y, z) = words(block);
        a = a.wrapping_add(x);
        b = b.wrapping_add(y);
        c = c.wrapping_add(z);
        // mix(a, b, c)
        a = a.wrapping_sub(c) ^ c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a) ^ a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b) ^ b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c) ^ c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a) ^ a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b) ^ b.rotate_left(4);
        b = b.wrapping_add(a);
        rest = tail;
    }
    if rest.is_empty() {
        return c;
    }
    let (x, y, z) = words(rest);
    a = a.wrapping_add(x);
    b = b.wrapping_add(y);
    c = c.wrapping_add(z);
    // final(a, b, c)
    c = (c ^ b).wrapping_sub(b.rotate_left(14));
    a = (a ^ c).wrapping_sub(c.rotate_left(11));
    b = (b ^ a).wrapping_sub(a.rotate_left(25));
    c = (c ^ b).wrapping_sub(b.rotate_left(16));
    a = (a ^ c).wrapping_sub(c.rotate_left(4));
    b = (b ^ a).wrapping_sub(a.rotate_left(14));
    (c ^ b).wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/hdf5-fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn keras(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/golden-variants/keras/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn message(result: Result<Vec<H5Dataset>>) -> String {
        match result {
            Ok(datasets) => panic!("expected an error, read {} datasets", datasets.len()),
            Err(e) => e.to_string(),
        }
    }

    /// Every `h5_variables` entry of the case's JSON is in the `.weights.h5` with its shape, and
    /// equals the case's safetensors tensor bit for bit; the file holds nothing else.
    #[test]
    fn keras_checkpoints_match_their_safetensors() {
        for case in ["k01_defaults", "k02_prenorm"] {
            let datasets = read_datasets(&keras(&format!("{case}.weights.h5"))).unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(&keras(&format!("{case}.json"))).unwrap();
            let st_bytes = keras(&format!("{case}.safetensors"));
            let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
            let variables = json["h5_variables"].as_array().unwrap();
            assert_eq!(datasets.len(), variables.len(), "{case}: dataset count");
            for v in variables {
                let path = v["h5_dataset"].as_str().unwrap();
                let dataset = datasets
                    .iter()
                    .find(|d| d.path == path)
                    .unwrap_or_else(|| panic!("{case}: `{path}` missing"));
                let shape: Vec<usize> = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(dataset.shape, shape, "{case}: `{path}` shape");
                let tensor = st.tensor(v["safetensors_name"].as_str().unwrap()).unwrap();
                assert_eq!(tensor.shape(), shape.as_slice(), "{case}: `{path}`");
                let expected: Vec<u32> = tensor
                    .data()
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let found: Vec<u32> = dataset.data.iter().map(|x| x.to_bits()).collect();
                assert!(
                    expected == found,
                    "{case}: `{path}` differs from safetensors"
                );
            }
        }
    }

    /// Both file formats h5py writes (Keras uses the first), with every supported layout,
    /// float64, a scalar, an empty dataset and an empty group; attributes are skipped.
    #[test]
    fn reads_earliest_and_latest_formats() {
        for name in ["earliest.h5", "latest.h5"] {
            let datasets = read_datasets(&fixture(name)).unwrap();
            let paths: Vec<&str> = datasets.iter().map(|d| d.path.as_str()).collect();
            assert_eq!(
                paths,
                ["a/b/f64", "a/f32", "compact", "scalar", "zero"],
                "{name}"
            );
            let by_path = |p: &str| datasets.iter().find(|d| d.path == p).unwrap();
            let f64s = by_path("a/b/f64");
            assert_eq!(f64s.shape, [4]);
            assert_eq!(f64s.data, [0.1f64 as f32, -2.0, f32::INFINITY, 3.25]);
            let f32s = by_path("a/f32");
            assert_eq!(f32s.shape, [2, 3]);
            assert_eq!(f32s.data, [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
            assert_eq!(by_path("compact").data, [7.0, 8.0, 9.0]);
            let scalar = by_path("scalar");
            assert_eq!(
                (scalar.shape.as_slice(), scalar.data.as_slice()),
                (&[][..], &[2.5][..])
            );
            let zero = by_path("zero");
            assert_eq!((zero.shape.as_slice(), zero.data.len()), (&[0, 4][..], 0));
        }
    }

    /// Each refusal names what is unsupported and where.
    #[test]
    fn refusals_name_the_feature_and_the_dataset() {
        for (name, parts) in [
            ("chunked.h5", &["chunked layout", "`g/x`"][..]),
            ("int32.h5", &["integer (4 bytes)", "`g/x`"]),
            ("big_endian.h5", &["big-endian float (4 bytes)", "`x`"]),
            ("dense.h5", &["densely", "`g`"]),
            ("soft_link.h5", &["soft link", "`y`"]),
        ] {
            let text = message(read_datasets(&fixture(name)));
            assert!(text.starts_with("HDF5: "), "{name}: {text}");
            for part in parts {
                assert!(text.contains(part), "{name}: `{text}` lacks `{part}`");
            }
        }
        assert!(message(read_datasets(b"")).contains("not an HDF5 file"));
        assert!(message(read_datasets(&[0u8; 4096])).contains("not an HDF5 file"));
    }

    /// Symbol tables of several nodes, one with an inner B-tree level; a dataset reached by 300
    /// hard links is read once, under the first path in name order.
    #[test]
    fn reads_large_symbol_tables() {
        let datasets = read_datasets(&fixture("wide.h5")).unwrap();
        let mut expected = vec![("links/l000".to_string(), -1.0)];
        expected.extend((0..40).map(|i| (format!("w/d{i:02}"), i as f32)));
        let found: Vec<(String, f32)> = datasets.into_iter().map(|d| (d.path, d.data[0])).collect();
        assert_eq!(found, expected);
    }

    /// A hard link back to the root is a cycle; every object is read once.
    #[test]
    fn cyclic_links_end() {
        let datasets = read_datasets(&fixture("cycle.h5")).unwrap();
        let paths: Vec<&str> = datasets.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["x"]);
    }

    /// Sets the end-of-file address of a version 0 or 3 superblock (offsets and lengths of 8
    /// bytes, no user block), so a truncated file gets past the superblock's own check.
    fn with_eof(bytes: &[u8], eof: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let (field, checksum) = match bytes.get(8) {
            Some(0) => (40, None),
            Some(3) => (28, Some(44)),
            _ => return out,
        };
        if out.len() >= field + 8 {
            out[field..field + 8].copy_from_slice(&(eof as u64).to_le_bytes());
        }
        if let Some(at) = checksum.filter(|&at| out.len() >= at + 4) {
            let sum = lookup3(&out[..at]);
            out[at..at + 4].copy_from_slice(&sum.to_le_bytes());
        }
        out
    }

    /// What the reader returns never holds more f32s than the file has bytes for.
    fn check_bounded(bytes: &[u8], result: Result<Vec<H5Dataset>>) {
        if let Ok(datasets) = result {
            let values: usize = datasets.iter().map(|d| d.data.len()).sum();
            assert!(values * 4 <= bytes.len());
            for d in &datasets {
                assert_eq!(
                    d.shape.iter().product::<usize>(),
                    d.data.len(),
                    "{}",
                    d.path
                );
            }
        }
    }

    #[test]
    fn truncated_files_are_errors() {
        for name in ["earliest.h5", "latest.h5"] {
            let bytes = fixture(name);
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                assert!(read_datasets(prefix).is_err(), "{name}[..{len}]");
                // With the superblock claiming the shorter length, the reader gets further.
                let patched = with_eof(prefix, len);
                check_bounded(&patched, read_datasets(&patched));
            }
        }
        let bytes = keras("k02_prenorm.weights.h5");
        for len in (0..bytes.len()).step_by(7) {
            assert!(read_datasets(&bytes[..len]).is_err(), "k02[..{len}]");
            let patched = with_eof(&bytes[..len], len);
            check_bounded(&patched, read_datasets(&patched));
        }
    }

    /// Every byte flipped in two ways, then a few random bytes at a time; checksums are also
    /// ignored, so that damage to version 2 structures reaches the parser.
    #[test]
    fn corrupted_bytes_never_panic() {
        // Only version 2 structures have checksums; without them both calls read alike.
        let check = |bad: &[u8]| {
            if bad.get(8) != Some(&0) {
                check_bounded(bad, read_datasets(bad));
            }
            check_bounded(bad, read(bad, false));
        };
        for name in ["earliest.h5", "latest.h5", "cycle.h5"] {
            let bytes = fixture(name);
            for at in 0..bytes.len() {
                for flip in [0xff, 0x01] {
                    let mut bad = bytes.clone();
                    bad[at] ^= flip;
                    check(&bad);
                }
            }
        }
        let mut rng = Rng::seed_from_u64(9);
        let files = [
            keras("k02_prenorm.weights.h5"),
            fixture("latest.h5"),
            fixture("wide.h5"),
        ];
        for bytes in files {
            for _ in 0..1000 {
                let mut bad = bytes.clone();
                for _ in 0..1 + rng.next_u64() % 8 {
                    let at = (rng.next_u64() % bad.len() as u64) as usize;
                    bad[at] = rng.next_u64() as u8;
                }
                check(&bad);
            }
        }
    }

    /// A dataspace claiming far more elements than the file holds is an error before any
    /// allocation, whether the byte count fits in u64 or not.
    #[test]
    fn huge_declared_sizes_are_errors() {
        let bytes = fixture("earliest.h5");
        // `a/f32`'s dataspace message: version 1, rank 2, max dims present, then [2, 3].
        let mut pattern = vec![1u8, 2, 1, 0, 0, 0, 0, 0];
        pattern.extend(2u64.to_le_bytes());
        pattern.extend(3u64.to_le_bytes());
        let at = bytes
            .windows(pattern.len())
            .position(|w| w == pattern)
            .unwrap()
            + 8;
        // Its layout message: version 3, contiguous, the address, then the size (24 bytes).
        let layout = bytes
            .windows(18)
            .position(|w| w[..2] == [3, 1] && w[10..] == 24u64.to_le_bytes())
            .unwrap()
            + 10;
        for (dims, storage, expected) in [
            ([1_000_000_000_000u64, 3], 24, "storage is 24 bytes"),
            (
                [1_000_000_000_000, 3],
                12_000_000_000_000,
                "pass the end of the 11512-byte file",
            ),
            ([1 << 40, 1 << 40], 24, "overflows"),
            ([1 << 62, 1], 24, "overflows"),
        ] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&dims[0].to_le_bytes());
            bad[at + 8..at + 16].copy_from_slice(&dims[1].to_le_bytes());
            bad[layout..layout + 8].copy_from_slice(&u64::to_le_bytes(storage));
            let text = message(read_datasets(&bad));
            assert!(
                text.contains(expected) && text.contains("`a/f32`"),
                "{text}"
            );
        }
    }

    /// lookup3's published test vectors (hashlittle with initval 0).
    #[test]
    fn lookup3_matches_reference_values() {
        assert_eq!(lookup3(b""), 0xdead_beef);
        assert_eq!(lookup3(b"Four score and seven years ago"), 0x1777_0551);
    }
}
