//! Helpers for the kernel tests in `src/ops/`: one shared device, uploads, NaN-poisoned
//! outputs, and readback.

use std::sync::OnceLock;

use crate::rng::Rng as StdRng;

use crate::gpu::dispatch::{Command, Dispatch, record_commands};
use crate::gpu::{GpuContext, memory};
use crate::precision::Precision;
use crate::testing::{self, ErrorStats};

/// The device every kernel test runs on (chosen by `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` /
/// `COMPATTN_LIMITS`).
pub(crate) fn context() -> &'static GpuContext {
    static CONTEXT: OnceLock<GpuContext> = OnceLock::new();
    CONTEXT.get_or_init(|| match GpuContext::from_env_blocking() {
        Ok(ctx) => {
            // Kernel tests run the built-in tilings (layer::tune's tests turn tuning on).
            ctx.set_tune_mode(crate::gpu::TuneMode::Off);
            ctx.set_tune_cache_path(None);
            eprintln!("kernel tests on {}", ctx.describe());
            ctx
        }
        Err(e) => panic!("kernel tests need a GPU adapter: {e}"),
    })
}

/// A fresh seeded generator; the seed goes into every assertion message.
pub(crate) fn rng(test: &str) -> (StdRng, String) {
    let seed = testing::test_seed();
    (
        StdRng::seed_from_u64(seed),
        format!("{test} (reproduce with COMPATTN_SEED={seed})"),
    )
}

/// Holds the device for one helper call (needed on GL; see `GpuContext::serial`).
fn serial() -> Option<futures::lock::MutexGuard<'static, ()>> {
    pollster::block_on(context().serial())
}

pub(crate) fn upload<T: bytemuck::Pod>(data: &[T]) -> wgpu::Buffer {
    let _serial = serial();
    memory::storage_init(context(), "test input", data).expect("upload")
}

/// An output buffer of `len` f32s filled with NaN, so that any element a kernel fails to write
/// fails the comparison.
pub(crate) fn poisoned(len: usize) -> wgpu::Buffer {
    upload(&vec![f32::NAN; len.max(1)])
}

/// `data` stored in `precision` (f16: rounded to nearest).
pub(crate) fn upload_stored(data: &[f32], precision: Precision) -> wgpu::Buffer {
    let _serial = serial();
    memory::stored_init(context(), "test input", data, precision).expect("upload")
}

/// [`poisoned`] in `precision` (f16 NaN is 0x7E00).
pub(crate) fn poisoned_stored(len: usize, precision: Precision) -> wgpu::Buffer {
    upload_stored(&vec![f32::NAN; len.max(1)], precision)
}

/// [`download`] of `len` elements stored in `precision`, widened to f32.
pub(crate) fn download_stored(buffer: &wgpu::Buffer, len: usize, precision: Precision) -> Vec<f32> {
    match precision {
        Precision::F32 => download(buffer, len),
        Precision::F16 => {
            let words = download(buffer, len.div_ceil(2));
            let bytes: &[u8] = bytemuck::cast_slice(&words);
            bytes
                .chunks_exact(2)
                .take(len)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        }
    }
}

/// `values` rounded to `precision`, as the GPU stores them.
pub(crate) fn rounded(values: &[f32], precision: Precision) -> Vec<f32> {
    values
        .iter()
        .map(|&v| precision.round(v as f64) as f32)
        .collect()
}

/// Whether the test device stores f16 (lavapipe does; GL does not).
pub(crate) fn has_f16() -> bool {
    let has = context().supports_f16();
    if !has {
        eprintln!("f16 variant not run: the device has no shader-f16");
    }
    has
}

/// Submits the dispatches in one pass and waits.
pub(crate) fn run(dispatches: &[&Dispatch]) {
    let _serial = serial();
    let ctx = context();
    pollster::block_on(ctx.scoped("test dispatch", || {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass, None);
            }
        }
        ctx.queue().submit([encoder.finish()]);
        Ok(())
    }))
    .expect("dispatch");
}

/// Records `commands` as a training pass does (uploads between compute passes), submits and waits.
pub(crate) fn run_commands(commands: &[Command]) {
    let _serial = serial();
    let ctx = context();
    pollster::block_on(ctx.scoped("test commands", || {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        record_commands(&mut encoder, "test commands", commands);
        ctx.queue().submit([encoder.finish()]);
        Ok(())
    }))
    .expect("commands");
}

/// Copies `len` f32s of `buffer` back to the host.
pub(crate) fn download(buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    let _serial = serial();
    let ctx = context();
    let staging = memory::staging(ctx, "test readback", 4 * len as u64);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, 4 * len as u64);
    ctx.queue().submit([encoder.finish()]);
    pollster::block_on(memory::read_f32(ctx, &staging, len)).expect("readback")
}

/// Builds a dispatch (or whatever a binding function returns), blocking.
pub(crate) fn build<T, F: std::future::Future<Output = crate::Result<T>>>(f: F) -> T {
    let _serial = serial();
    pollster::block_on(f).expect("building the dispatch")
}

/// Builds several dispatches, blocking.
pub(crate) fn build_all<F: std::future::Future<Output = crate::Result<Vec<Dispatch>>>>(
    f: F,
) -> Vec<Dispatch> {
    let _serial = serial();
    pollster::block_on(f).expect("building the dispatches")
}

/// Asserts `actual` matches `expected` within `tol` (relative L2 and max-abs relative to the
/// largest reference value), with no NaN left from the poison.
#[track_caller]
pub(crate) fn assert_close(what: &str, actual: &[f32], expected: &[f64], tol: f64) {
    let stats = ErrorStats::compare(actual, expected);
    assert!(stats.within(tol), "{what}: {stats} exceeds tolerance {tol}");
}

pub(crate) fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// Copies texel rows back as the `[rows, cols]` matrix they hold.
pub(crate) fn download_texels(rows: &crate::gpu::texture::TexelRows) -> Vec<f32> {
    let _serial = serial();
    let ctx = context();
    let shape = rows.shape;
    let texel_bytes = shape.width as u64 * 16;
    let row_bytes = texel_bytes.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64);
    let height = shape.rows_per_layer.min(shape.rows as u32);
    let staging = memory::staging(
        ctx,
        "texel readback",
        row_bytes * height as u64 * shape.layers as u64,
    );
    let scope = ctx.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        wgpu::TexelCopyTextureInfo {
            texture: rows.texture(),
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes as u32),
                rows_per_image: Some(height),
            },
        },
        wgpu::Extent3d {
            width: shape.width,
            height,
            depth_or_array_layers: shape.layers,
        },
    );
    ctx.queue().submit([encoder.finish()]);
    if let Some(error) = pollster::block_on(scope.pop()) {
        panic!("texel readback: {error}");
    }
    let floats = (row_bytes / 4) as usize * height as usize * shape.layers as usize;
    let raw = pollster::block_on(memory::read_f32(ctx, &staging, floats)).expect("readback");
    (0..shape.rows)
        .flat_map(|r| {
            let start = r * (row_bytes / 4) as usize;
            raw[start..start + shape.cols].to_vec()
        })
        .collect()
}
