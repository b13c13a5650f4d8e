//! What the messages of an object header say: a dataset's dataspace (its shape), datatype
//! (little-endian IEEE floats only) and layout (compact or contiguous), and a group's links.
//! Each refusal names the dataset or link and what is not supported.

use super::file::{Cursor, File};
use super::{MAX_RANK, err, to_usize};
use crate::error::Result;

/// The dimensions of a dataspace message (none for a scalar).
pub(super) fn dataspace(file: File, mut c: Cursor, path: &str) -> Result<Vec<u64>> {
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
pub(super) enum Float {
    F32,
    F64,
}

impl Float {
    pub(super) fn size(self) -> u64 {
        match self {
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }
}

/// Accepts little-endian IEEE float32 and float64; names anything else.
pub(super) fn datatype(mut c: Cursor, path: &str) -> Result<Float> {
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

pub(super) enum DataLayout<'a> {
    /// The data inside the header message.
    Compact(Cursor<'a>),
    /// The data elsewhere in the file; `size` is given from layout version 3 on.
    Contiguous {
        address: Option<u64>,
        size: Option<u64>,
    },
}

pub(super) fn layout<'a>(file: File<'a>, mut c: Cursor<'a>, path: &str) -> Result<DataLayout<'a>> {
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

/// A hard link message's name and target; soft and external links are refused.
pub(super) fn link(file: File, mut c: Cursor, path: &str) -> Result<(String, u64)> {
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
            let target = file
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

/// A child's path: `parent/name`, or `name` under the root.
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// A name as HDF5 stores it (UTF-8 or ASCII); `/`, `.` and empty names cannot be path parts.
pub(super) fn link_name(bytes: &[u8], at: u64) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(name) if !name.is_empty() && name != "." && !name.contains('/') => Ok(name.to_string()),
        _ => Err(err(format!(
            "the link name {:?} near offset {at} is not a valid name",
            String::from_utf8_lossy(bytes)
        ))),
    }
}
