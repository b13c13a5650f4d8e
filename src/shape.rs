//! Checks of forward shapes and of the caller's buffers, before anything is planned or bound.
//!
//! Sizes are multiplied in checked `u64`, so a huge `batch · seq · dim` is a typed error on every
//! target (a 32-bit `usize` in wasm32 included), never an overflow panic or a wrapped size.

use crate::config::Config;
use crate::error::{Error, Result};

/// The product of `dims` in `u64`, or a shape error naming `what` when it overflows.
pub(crate) fn elements(what: &str, dims: &[usize]) -> Result<u64> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| Error::LimitExceeded {
            what: format!("{what} of shape {dims:?}"),
            required: u64::MAX,
            limit: u64::MAX,
            limit_name: "64-bit element count",
            hint: None,
        })
}

/// Fails unless `batch` and `seq` are positive and `[batch, seq, dim]` has a representable size
/// on this target.
pub(crate) fn check_tokens(config: &Config, batch: usize, seq: usize) -> Result<()> {
    if batch == 0 || seq == 0 {
        return Err(Error::shape(
            "input",
            &[batch.max(1), seq.max(1), config.dim],
            &[batch, seq, config.dim],
        ));
    }
    let bytes = elements("input", &[batch, seq, config.dim])?.checked_mul(4);
    match bytes {
        Some(bytes) if usize::try_from(bytes).is_ok() => Ok(()),
        _ => Err(Error::LimitExceeded {
            what: format!("input of shape [{batch}, {seq}, {}]", config.dim),
            required: bytes.unwrap_or(u64::MAX),
            limit: usize::MAX as u64,
            limit_name: "the address space of this target (usize)",
            hint: None,
        }),
    }
}

/// Checks `x` and `mask` against the layer's `dim` and `batch × seq`: a positive, representable
/// shape, an input of `batch·seq·dim` values and a mask of `batch·seq`.
pub fn check_input(
    config: &Config,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
) -> Result<()> {
    // Positive, and `batch · seq · dim` representable: the products below cannot overflow.
    check_tokens(config, batch, seq)?;
    if x.len() != batch * seq * config.dim {
        return Err(Error::shape("input", &[batch, seq, config.dim], &[x.len()]));
    }
    if let Some(mask) = mask
        && mask.len() != batch * seq
    {
        return Err(Error::shape("mask", &[batch, seq], &[mask.len()]));
    }
    Ok(())
}

/// Checks the caller's buffers for `encode`: `STORAGE` usage, at least the bytes of
/// `[batch, seq, dim]` f32 (input, output) and `[batch, seq]` u32 (mask), and a mask that is
/// neither the input nor the output.
pub(crate) fn check_io_buffers(
    config: &Config,
    input: &wgpu::Buffer,
    mask: Option<&wgpu::Buffer>,
    output: &wgpu::Buffer,
    batch: usize,
    seq: usize,
) -> Result<()> {
    check_tokens(config, batch, seq)?;
    let tensor = 4 * elements("input", &[batch, seq, config.dim])?;
    let keys = 4 * elements("mask", &[batch, seq])?;
    let mut buffers = vec![("input", input, tensor), ("output", output, tensor)];
    if let Some(mask) = mask {
        buffers.push(("mask", mask, keys));
        if mask == input || mask == output {
            return Err(Error::IoBuffer {
                name: "mask",
                problem: "the mask buffer is also the input or the output; it must be its own \
                          buffer of u32 words"
                    .into(),
            });
        }
    }
    for (name, buffer, needed) in buffers {
        let element = match name {
            "mask" => "u32".to_string(),
            _ => format!("dim {} × f32", config.dim),
        };
        check_storage_buffer(name, buffer, needed, (batch, seq, &element))?;
    }
    Ok(())
}

/// Checks the caller's memory buffers (`encode_memory`): `keys [batch, memory_seq, kdim]`,
/// `values [batch, memory_seq, vdim]` (f32) and `mask [batch, memory_seq]` (u32), each with
/// `STORAGE` usage and room for its shape.
pub(crate) fn check_memory_buffers(
    config: &Config,
    keys: &wgpu::Buffer,
    values: Option<&wgpu::Buffer>,
    mask: Option<&wgpu::Buffer>,
    batch: usize,
    memory_seq: usize,
) -> Result<()> {
    check_memory_tokens(config, batch, memory_seq)?;
    let (kdim, vdim) = config.key_value_dims();
    let mut buffers = vec![(
        "memory keys",
        keys,
        4 * elements("memory keys", &[batch, memory_seq, kdim])?,
        format!("kdim {kdim} × f32"),
    )];
    if let Some(values) = values {
        buffers.push((
            "memory values",
            values,
            4 * elements("memory values", &[batch, memory_seq, vdim])?,
            format!("vdim {vdim} × f32"),
        ));
    }
    if let Some(mask) = mask {
        if Some(mask) == values || mask == keys {
            return Err(Error::IoBuffer {
                name: "memory mask",
                problem: "the mask buffer is also a key or value input; it must be its own \
                          buffer of u32 words"
                    .into(),
            });
        }
        buffers.push((
            "memory mask",
            mask,
            4 * elements("memory mask", &[batch, memory_seq])?,
            "u32".into(),
        ));
    }
    for (name, buffer, needed, element) in buffers {
        check_storage_buffer(name, buffer, needed, (batch, memory_seq, &element))?;
    }
    Ok(())
}

/// Checks a memory's host inputs: `keys [batch, memory_seq, kdim]`, `values [batch,
/// memory_seq, vdim]` and `mask [batch, memory_seq]`, positive and representable sizes.
pub(crate) fn check_memory_input(
    config: &Config,
    keys: &[f32],
    values: Option<&[f32]>,
    mask: Option<&[bool]>,
    batch: usize,
    memory_seq: usize,
) -> Result<()> {
    check_memory_tokens(config, batch, memory_seq)?;
    let (kdim, vdim) = config.key_value_dims();
    let mut inputs = vec![("memory keys", keys, kdim)];
    inputs.extend(values.map(|values| ("memory values", values, vdim)));
    for (name, data, width) in inputs {
        if data.len() != batch * memory_seq * width {
            return Err(Error::shape(
                name,
                &[batch, memory_seq, width],
                &[data.len()],
            ));
        }
    }
    if let Some(mask) = mask
        && mask.len() != batch * memory_seq
    {
        return Err(Error::shape(
            "memory mask",
            &[batch, memory_seq],
            &[mask.len()],
        ));
    }
    Ok(())
}

/// Fails unless `batch` and `memory_seq` are positive and `[batch, memory_seq, max(kdim,
/// vdim)]` has a representable size on this target.
fn check_memory_tokens(config: &Config, batch: usize, memory_seq: usize) -> Result<()> {
    let (kdim, vdim) = config.key_value_dims();
    let widest = Config {
        dim: kdim.max(vdim),
        ..*config
    };
    check_tokens(&widest, batch, memory_seq).map_err(|error| match error {
        Error::Shape {
            expected, found, ..
        } => Error::Shape {
            name: "memory".into(),
            expected,
            found,
        },
        other => other,
    })
}

/// A caller's buffer bound as storage: `STORAGE` usage and at least `needed` bytes, the shape
/// `batch × seq × element` named in the error.
fn check_storage_buffer(
    name: &'static str,
    buffer: &wgpu::Buffer,
    needed: u64,
    (batch, seq, element): (usize, usize, &str),
) -> Result<()> {
    if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::IoBuffer {
            name,
            problem: format!(
                "created with usage {:?}, which lacks STORAGE (kernels bind it as a storage \
                 buffer)",
                buffer.usage()
            ),
        });
    }
    if buffer.size() < needed {
        return Err(Error::IoBuffer {
            name,
            problem: format!(
                "holds {} bytes, but batch {batch} × seq {seq} × {element} needs {needed}",
                buffer.size()
            ),
        });
    }
    Ok(())
}

/// Checks a caller's buffer that a training call copies from: `COPY_SRC` usage.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn check_copy_source(name: &'static str, buffer: &wgpu::Buffer) -> Result<()> {
    if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
        return Err(Error::IoBuffer {
            name,
            problem: format!(
                "created with usage {:?}, which lacks COPY_SRC (training copies it into the \
                 activations its backward reads)",
                buffer.usage()
            ),
        });
    }
    Ok(())
}

/// Checks a caller's `[batch, seq, dim]` f32 buffer named `name`: `STORAGE` usage and at least
/// its bytes.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn check_tensor_buffer(
    config: &Config,
    name: &'static str,
    buffer: &wgpu::Buffer,
    batch: usize,
    seq: usize,
) -> Result<()> {
    let needed = 4 * elements(name, &[batch, seq, config.dim])?;
    let element = format!("dim {} × f32", config.dim);
    check_storage_buffer(name, buffer, needed, (batch, seq, &element))
}
