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
