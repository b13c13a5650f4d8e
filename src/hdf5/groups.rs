//! Groups stored as symbol tables (h5py's default `libver="earliest"`): a version 1 B-tree whose
//! leaves are symbol table nodes, the names in the group's local heap. Every node is charged to
//! the budget, must sit one level below its parent, and may be reached once.

use std::collections::HashSet;

use super::err;
use super::file::File;
use super::header::Budget;
use super::messages::{join, link_name};
use crate::error::Result;

/// The state reading group structures needs: the byte budget, and the B-tree and symbol table
/// nodes already read (a node reached twice is an error).
pub(super) struct NodeReads<'r> {
    pub(super) budget: &'r mut Budget,
    pub(super) seen: &'r mut HashSet<u64>,
}

/// Adds the links of a symbol-table group: a version 1 B-tree whose leaves are symbol table
/// nodes, the names in the group's local heap.
pub(super) fn symbol_table(
    file: File,
    nodes: &mut NodeReads,
    btree: u64,
    heap: u64,
    path: &str,
    children: &mut Vec<(String, u64)>,
) -> Result<()> {
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
        if !nodes.seen.insert(node) {
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
        nodes
            .budget
            .charge(8 + size as u64, || format!("B-tree node at address {node}"))?;
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
                None => symbol_table_node(file, nodes, child, names, heap_data, path, children)?,
            }
        }
    }
    Ok(())
}

fn symbol_table_node(
    file: File,
    nodes: &mut NodeReads,
    node: u64,
    names: &[u8],
    heap_data: u64,
    path: &str,
    children: &mut Vec<(String, u64)>,
) -> Result<()> {
    if !nodes.seen.insert(node) {
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
    nodes.budget.charge(8 + size as u64, || {
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
        nodes.budget.charge(name.len() as u64 + 1, || {
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
