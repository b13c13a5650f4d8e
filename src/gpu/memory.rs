//! Buffer creation with the limit checks WebGPU would otherwise turn into validation errors,
//! and the readback path.
//!
//! Sizes are checked against the device's `max_buffer_size` and
//! `max_storage_buffer_binding_size` before allocation, so an oversized problem fails with an
//! [`Error::LimitExceeded`] that says which buffer and why, instead of a generic validation error
//! after the fact.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

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
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let bytes = elements.max(1).saturating_mul(4);
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
    Ok(ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: STORAGE,
        }))
}

/// A uniform buffer holding one parameter block.
pub(crate) fn uniform_init(ctx: &GpuContext, label: &str, data: &[u8]) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: data,
            usage: wgpu::BufferUsages::UNIFORM,
        })
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
/// unmaps it.
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
    let slice = buffer.slice(..bytes);
    let (sender, receiver) = futures::channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    #[cfg(target_arch = "wasm32")]
    let _ = ctx;
    receiver
        .await
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let values = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    buffer.unmap();
    Ok(values)
}

/// Waits until the queue has finished all submitted work (benchmarks without timestamps).
#[cfg(feature = "bench")]
pub(crate) async fn wait_idle(ctx: &GpuContext) -> Result<()> {
    let (sender, receiver) = futures::channel::oneshot::channel();
    ctx.queue().on_submitted_work_done(move || {
        let _ = sender.send(());
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Readback(e.to_string()))?;
    receiver
        .await
        .map_err(|_| Error::Readback("the work-done callback was dropped".into()))
}
