//! Buffer creation with the limit checks WebGPU would otherwise turn into validation errors,
//! and the readback path.
//!
//! Sizes are checked against the device's `max_buffer_size` and
//! `max_storage_buffer_binding_size` before allocation, so an oversized problem fails with an
//! [`Error::LimitExceeded`] that says which buffer and why, instead of a generic validation error
//! after the fact.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::precision::Precision;

/// Usage of every storage buffer: bound to kernels, written from the host, read back for tests.
pub(crate) const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// Checks that a storage buffer of `bytes` fits the device; `hint` says what to do if not.
pub(crate) fn check_storage_size(
    ctx: &GpuContext,
    what: &str,
    bytes: u64,
    hint: Option<&'static str>,
) -> Result<()> {
    let limits = ctx.limits();
    // Kernels index elements with u32.
    let index_limit = 4 * u32::MAX as u64;
    for (limit, limit_name) in [
        (index_limit, "32-bit element indices"),
        (
            limits.max_storage_buffer_binding_size,
            "max_storage_buffer_binding_size",
        ),
        (limits.max_buffer_size, "max_buffer_size"),
    ] {
        if bytes > limit {
            return Err(Error::LimitExceeded {
                what: what.to_string(),
                required: bytes,
                limit,
                limit_name,
                hint,
            });
        }
    }
    Ok(())
}

/// An uninitialised storage buffer of 4-byte elements with shape `dims` (at least one element,
/// as WebGPU forbids empty bindings). The size is computed in `u64`, so that a shape whose
/// element count overflows a 32-bit `usize` (wasm32) is refused rather than wrapped.
pub(crate) fn storage(
    ctx: &GpuContext,
    label: &str,
    dims: &[usize],
    hint: Option<&'static str>,
) -> Result<wgpu::Buffer> {
    stored(ctx, label, dims, Precision::F32, hint)
}

/// [`storage`] of `precision` elements, its size rounded up to a multiple of 4 bytes (an odd
/// count of f16 elements), as buffer sizes and copies must be.
pub(crate) fn stored(
    ctx: &GpuContext,
    label: &str,
    dims: &[usize],
    precision: Precision,
    hint: Option<&'static str>,
) -> Result<wgpu::Buffer> {
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let bytes = elements
        .max(1)
        .saturating_mul(precision.bytes())
        .div_ceil(4)
        .saturating_mul(4);
    check_storage_size(ctx, label, bytes, hint)?;
    Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage: STORAGE,
        mapped_at_creation: false,
    }))
}

/// A storage buffer holding `data`.
pub(crate) fn storage_init<T: bytemuck::Pod>(
    ctx: &GpuContext,
    label: &str,
    data: &[T],
) -> Result<wgpu::Buffer> {
    let bytes = std::mem::size_of_val(data) as u64;
    check_storage_size(ctx, label, bytes, None)?;
    if data.is_empty() {
        return storage(ctx, label, &[1], None);
    }
    buffer_init(ctx, label, bytemuck::cast_slice(data), STORAGE)
}

/// A storage buffer of `len` copies of `value`: its size checked against the device first, then
/// the host copy reserved fallibly ([`Error::HostMemory`]), so a size past either is a typed
/// error before anything is made.
pub(crate) fn storage_filled<T: bytemuck::Pod>(
    ctx: &GpuContext,
    label: &str,
    len: usize,
    value: T,
) -> Result<wgpu::Buffer> {
    let bytes = (len as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    check_storage_size(
        ctx,
        label,
        bytes,
        Some("a shorter sequence or a smaller batch"),
    )?;
    let data = crate::host_memory::try_filled(label, len, value)?;
    storage_init(ctx, label, &data)
}

/// A storage buffer holding `data` in `precision`.
pub(crate) fn stored_init(
    ctx: &GpuContext,
    label: &str,
    data: &[f32],
    precision: Precision,
) -> Result<wgpu::Buffer> {
    match precision {
        Precision::F32 => storage_init(ctx, label, data),
        Precision::F16 => {
            let bytes = (data.len() as u64).saturating_mul(2);
            check_storage_size(ctx, label, bytes, None)?;
            if data.is_empty() {
                return stored(ctx, label, &[1], precision, None);
            }
            buffer_init(ctx, label, &precision.encode(data), STORAGE)
        }
    }
}

/// A uniform buffer holding one parameter block.
pub(crate) fn uniform_init(ctx: &GpuContext, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
    buffer_init(ctx, label, data, wgpu::BufferUsages::UNIFORM)
}

/// A buffer created mapped and filled with `bytes`: what `DeviceExt::create_buffer_init` does,
/// but a device lost in between is an [`Error::DeviceLost`] where wgpu's helper panics.
fn buffer_init(
    ctx: &GpuContext,
    label: &str,
    bytes: &[u8],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    ctx.check_alive(label)?;
    let align = wgpu::COPY_BUFFER_ALIGNMENT;
    let size = (bytes.len() as u64).div_ceil(align).max(1) * align;
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: true,
    });
    match buffer.get_mapped_range_mut(..) {
        Ok(mut range) => range.slice(..bytes.len()).copy_from_slice(bytes),
        Err(e) => {
            let reason = format!("mapping a new buffer failed: {e}");
            ctx.mark_lost(&reason);
            return Err(Error::DeviceLost {
                operation: format!("uploading {label}"),
                reason,
            });
        }
    }
    buffer.unmap();
    Ok(buffer)
}

/// Waits for the device's submitted work, at most [`GpuContext::wait_timeout`] (native; in a
/// browser the map callback arrives from the event loop).
#[cfg(not(target_arch = "wasm32"))]
fn wait(ctx: &GpuContext, operation: &str) -> Result<()> {
    let timeout = ctx.wait_timeout();
    match ctx.device().poll(wgpu::PollType::Wait {
        submission_index: None,
        timeout: Some(timeout),
    }) {
        Ok(_) => Ok(()),
        Err(wgpu::PollError::Timeout) => Err(Error::Timeout {
            operation: operation.to_string(),
            seconds: timeout.as_secs_f64(),
        }),
        Err(e) => Err(Error::Readback(e.to_string())),
    }
}

/// A host-mappable buffer that results are copied into and read from.
pub(crate) fn staging(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Maps `staging` (after the submit that filled it), copies out its first `len` `f32`s and
/// unmaps it (the kernel tests' readback; the layer reads through [`read_f32_all`]).
#[cfg(test)]
pub(crate) async fn read_f32(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<f32>> {
    read_mapped(ctx, staging, 4 * len as u64).await
}

/// Maps the first `bytes` of a `MAP_READ` buffer, copies them out as `T`s and unmaps it. On
/// native this waits on the device; in a browser it awaits the map callback (polling is a no-op
/// there).
pub(crate) async fn read_mapped<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<T>> {
    let mut values = read_mapped_all(ctx, &[(buffer, bytes)]).await?;
    Ok(values.pop().expect("one buffer read"))
}

/// [`read_f32`] of several `MAP_READ` buffers (each with its length in `f32`s) with one wait:
/// every map is requested before the device is polled, so a result and the maps recorded in
/// the same submit come back together.
pub(crate) async fn read_f32_all(
    ctx: &GpuContext,
    buffers: &[(&wgpu::Buffer, usize)],
) -> Result<Vec<Vec<f32>>> {
    let byte_ranges: Vec<(&wgpu::Buffer, u64)> = buffers
        .iter()
        .map(|&(b, len)| (b, 4 * len as u64))
        .collect();
    read_mapped_all(ctx, &byte_ranges).await
}

/// Maps the first bytes of each buffer, waits once, copies each out as `T`s and unmaps them all.
/// A wait that fails cancels the pending maps, so the buffers stay usable by the next call.
async fn read_mapped_all<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffers: &[(&wgpu::Buffer, u64)],
) -> Result<Vec<Vec<T>>> {
    ctx.check_alive("reading back a result")?;
    let receivers: Vec<_> = buffers
        .iter()
        .map(|&(buffer, bytes)| {
            let (sender, receiver) = futures::channel::oneshot::channel();
            buffer
                .slice(..bytes)
                .map_async(wgpu::MapMode::Read, move |result| {
                    let _ = sender.send(result);
                });
            receiver
        })
        .collect();
    let unmap_all = || buffers.iter().for_each(|&(buffer, _)| buffer.unmap());
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(error) = wait(ctx, "reading back a result") {
        // Cancel the pending maps, so the buffers are usable by the next call.
        unmap_all();
        return Err(error);
    }
    let mut values = Vec::with_capacity(buffers.len());
    for (receiver, &(buffer, bytes)) in receivers.into_iter().zip(buffers) {
        let copied = async {
            let mapped = receiver
                .await
                .map_err(|_| Error::Readback("the map callback was dropped".into()))?;
            if let Err(e) = mapped {
                // Our buffers are always mappable: a failed map means the device went away.
                let reason = format!("mapping the result failed: {e}");
                ctx.mark_lost(&reason);
                ctx.check_alive("reading back a result")?;
            }
            let view = buffer
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            Ok::<_, Error>(bytemuck::cast_slice::<u8, T>(&view).to_vec())
        }
        .await;
        // A failed map means the device is gone (its buffers destroyed): nothing is unmapped
        // then, since unmapping a destroyed buffer is itself a validation error.
        values.push(copied?);
    }
    unmap_all();
    Ok(values)
}

/// Waits until the queue has finished all submitted work (benchmarks without timestamps).
#[cfg(feature = "bench")]
pub(crate) async fn wait_idle(ctx: &GpuContext) -> Result<()> {
    ctx.check_alive("waiting for the GPU")?;
    let (sender, receiver) = futures::channel::oneshot::channel();
    ctx.queue().on_submitted_work_done(move || {
        let _ = sender.send(());
    });
    #[cfg(not(target_arch = "wasm32"))]
    wait(ctx, "waiting for the GPU")?;
    receiver
        .await
        .map_err(|_| Error::Readback("the work-done callback was dropped".into()))
}
