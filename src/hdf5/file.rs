//! The bytes as the format addresses them: one bounds-checked little-endian [`Cursor`] that
//! every structure is read through (a read past its end is an error naming the structure and
//! its offset, never a panic), and the superblock's facts ([`File`]): where the root group is,
//! the sizes of addresses and lengths, and cursors at file addresses.

use super::checksum::lookup3;
use super::{SIGNATURE, err};
use crate::error::Result;

/// Little-endian fields of `bytes[pos..end]`; reading past `end` is an error naming the structure
/// and its offset, never a panic.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'a> {
    /// The whole file, so that positions are file offsets.
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(super) fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..self.end).unwrap_or_default()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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
    pub(super) fn sub(&mut self, n: usize, what: &'static str) -> Result<Cursor<'a>> {
        let pos = self.pos;
        self.take(n)?;
        Ok(Cursor {
            bytes: self.bytes,
            pos,
            end: self.pos,
            what,
        })
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.take(N)?;
        slice
            .try_into()
            .map_err(|_| err(format!("{}: internal length error", self.what)))
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// An unsigned integer of `size` bytes (1 to 8).
    pub(super) fn uint(&mut self, size: u8) -> Result<u64> {
        let bytes = self.take(usize::from(size))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| acc.wrapping_shl(8) | u64::from(b)))
    }

    pub(super) fn signature(&mut self, expected: &[u8; 4]) -> Result<()> {
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
pub(super) struct File<'a> {
    pub(super) bytes: &'a [u8],
    /// Addresses in the file are relative to this offset (non-zero after a user block).
    base: u64,
    pub(super) offset_size: u8,
    pub(super) length_size: u8,
    /// The root group's object header address.
    pub(super) root: u64,
    verify_checksums: bool,
}

impl<'a> File<'a> {
    pub(super) fn open(bytes: &'a [u8], verify_checksums: bool) -> Result<File<'a>> {
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
    pub(super) fn address(&self, c: &mut Cursor) -> Result<Option<u64>> {
        let value = c.uint(self.offset_size)?;
        let undefined = u64::MAX >> (64 - 8 * u32::from(self.offset_size));
        Ok((value != undefined).then_some(value))
    }

    /// Reads the Jenkins lookup3 checksum that follows `bytes[start..c.pos]` and checks it.
    pub(super) fn verify_checksum(&self, c: &mut Cursor, start: usize, what: &str) -> Result<()> {
        let covered = c.bytes.get(start..c.pos).unwrap_or_default();
        let stored = c.u32()?;
        if self.verify_checksums && lookup3(covered) != stored {
            return Err(err(format!("{what} at offset {start} fails its checksum")));
        }
        Ok(())
    }

    pub(super) fn length(&self, c: &mut Cursor) -> Result<u64> {
        c.uint(self.length_size)
    }

    /// A cursor at file address `address`, over `len` bytes (to the end of the file if `None`).
    pub(super) fn at(
        &self,
        address: u64,
        len: Option<u64>,
        what: &'static str,
    ) -> Result<Cursor<'a>> {
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
