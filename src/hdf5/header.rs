//! Object headers: the messages of one object (a group or a dataset), with its continuation
//! blocks followed, in header versions 1 and 2. What the messages mean is `messages.rs`; which
//! objects are visited is `walk.rs`.

use super::file::{Cursor, File};
use super::{MAX_HEADER_BLOCKS, err, to_usize};
use crate::error::Result;

/// One object header message.
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) flags: u8,
    pub(super) data: Cursor<'a>,
}

pub(super) const NIL: u16 = 0x00;
pub(super) const DATASPACE: u16 = 0x01;
pub(super) const LINK_INFO: u16 = 0x02;
pub(super) const DATATYPE: u16 = 0x03;
pub(super) const LINK: u16 = 0x06;
pub(super) const EXTERNAL_FILES: u16 = 0x07;
pub(super) const LAYOUT: u16 = 0x08;
pub(super) const FILTER_PIPELINE: u16 = 0x0B;
pub(super) const CONTINUATION: u16 = 0x10;
pub(super) const SYMBOL_TABLE: u16 = 0x11;
/// The last message type the format defines; a later one flagged "must understand" is refused.
pub(super) const LAST_KNOWN_MESSAGE: u16 = 0x18;
/// Message flag: the message is stored elsewhere (a shared message or committed datatype).
pub(super) const FLAG_SHARED: u8 = 0x02;
/// Message flag: a reader that does not know the type must fail.
pub(super) const FLAG_MUST_UNDERSTAND: u8 = 0x80;

/// The bytes the reader may still read: it starts at the file's size, and every structure read
/// is charged to it, so overlapping or repeated structures cannot multiply the reader's work or
/// its output (see the module docs).
pub(super) struct Budget {
    left: u64,
    file_len: usize,
}

impl Budget {
    pub(super) fn new(file_len: usize) -> Budget {
        Budget {
            left: file_len as u64,
            file_len,
        }
    }

    pub(super) fn charge(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<()> {
        self.left = self.left.checked_sub(n).ok_or_else(|| {
            err(format!(
                "{} ({n} bytes) would make the reader read more than the file's {} bytes: \
                 its structures overlap or repeat",
                what(),
                self.file_len
            ))
        })?;
        Ok(())
    }
}

/// How a header version lays out its messages.
#[derive(Clone, Copy)]
enum Layout {
    /// Version 1: type u16, size u16, flags u8, three reserved bytes.
    V1,
    /// Version 2: type u8, size u16, flags u8, and a creation index (u16) when the header's
    /// flags say so.
    V2 { creation_order: bool },
}

/// The messages of the object header at `address`, continuation blocks followed.
pub(super) fn read_header<'a>(
    file: File<'a>,
    budget: &mut Budget,
    address: u64,
) -> Result<Vec<Message<'a>>> {
    let mut c = file.at(address, None, "object header")?;
    let start = c.pos;
    let (layout, body) = if c.rest().starts_with(b"OHDR") {
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
        let body = header_body(&mut c, budget, address, size)?;
        file.verify_checksum(&mut c, start, "object header")?;
        let creation_order = flags & 0x04 != 0;
        (Layout::V2 { creation_order }, body)
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
        (
            Layout::V1,
            header_body(&mut c, budget, address, u64::from(size))?,
        )
    };
    let mut messages = Vec::new();
    let mut blocks = Vec::new();
    split_messages(file, body, layout, &mut messages, &mut blocks)?;
    let mut i = 0;
    while let Some(&(block, len)) = blocks.get(i) {
        i += 1;
        if i > MAX_HEADER_BLOCKS {
            return Err(err(format!(
                "object header at address {address} has more than {MAX_HEADER_BLOCKS} \
                 continuation blocks"
            )));
        }
        let mut c = file.at(block, Some(len), "continuation block")?;
        budget.charge(len, || format!("continuation block at address {block}"))?;
        let body = match layout {
            Layout::V1 => c,
            Layout::V2 { .. } => {
                let start = c.pos;
                c.signature(b"OCHK")?;
                let body_len = c.remaining().checked_sub(4).ok_or_else(|| {
                    err(format!(
                        "continuation block at address {block} is too short"
                    ))
                })?;
                let body = c.sub(body_len, "continuation block")?;
                file.verify_checksum(&mut c, start, "continuation block")?;
                body
            }
        };
        split_messages(file, body, layout, &mut messages, &mut blocks)?;
    }
    Ok(messages)
}

/// The header's first message block, of `size` bytes, charged to the budget.
fn header_body<'a>(
    c: &mut Cursor<'a>,
    budget: &mut Budget,
    address: u64,
    size: u64,
) -> Result<Cursor<'a>> {
    let size = to_usize(size, || {
        format!("object header at address {address}'s size")
    })?;
    let body = c.sub(size, "object header")?;
    budget.charge(size as u64, || {
        format!("object header at address {address}")
    })?;
    Ok(body)
}

/// Splits a header block into messages; continuation targets go to `blocks`.
fn split_messages<'a>(
    file: File<'a>,
    mut c: Cursor<'a>,
    layout: Layout,
    messages: &mut Vec<Message<'a>>,
    blocks: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let prefix = match layout {
        Layout::V1 => 8,
        Layout::V2 {
            creation_order: true,
        } => 6,
        Layout::V2 {
            creation_order: false,
        } => 4,
    };
    // Fewer bytes than a message prefix left: a gap (version 2 allows it; version 1 pads to 8).
    while c.remaining() >= prefix {
        let kind = match layout {
            Layout::V1 => c.u16()?,
            Layout::V2 { .. } => u16::from(c.u8()?),
        };
        let size = c.u16()?;
        let flags = c.u8()?;
        match layout {
            Layout::V1 => c.skip(3)?,
            Layout::V2 {
                creation_order: true,
            } => c.skip(2)?,
            Layout::V2 {
                creation_order: false,
            } => {}
        }
        let data = c.sub(usize::from(size), "header message")?;
        match kind {
            NIL => {}
            CONTINUATION => {
                let mut c = data;
                let at = c.pos;
                let address = file.address(&mut c)?.ok_or_else(|| {
                    err(format!(
                        "continuation message at offset {at} has an undefined address"
                    ))
                })?;
                blocks.push((address, file.length(&mut c)?));
            }
            _ => messages.push(Message { kind, flags, data }),
        }
    }
    Ok(())
}
