//! Shared by the integration tests: one device for the whole test binary, fresh seeds.

#![allow(dead_code)]

pub mod variants;

use std::sync::OnceLock;

use compositional_attention::testing::{self, ErrorStats};
use compositional_attention::{GpuContext, GpuOptions, KernelFamilyRequest, TuneMode};

/// [`GpuOptions::from_env`] with tuning off: the tests run the built-in tilings, so their
/// results are deterministic (the tuner's own tests, in src/layer/tune.rs, turn it on with
/// contexts and cache files of their own).
pub fn options() -> GpuOptions {
    GpuOptions {
        tune: TuneMode::Off,
        tune_cache: None,
        ..GpuOptions::from_env().expect("GPU options from the environment")
    }
}

/// `ctx` (a caller's device, which reads `COMPATTN_TUNE`) with tuning off, as [`options`].
pub fn untuned(ctx: GpuContext) -> GpuContext {
    ctx.set_tune_mode(TuneMode::Off);
    ctx.set_tune_cache_path(None);
    ctx
}

/// The device under test (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `COMPATTN_LIMITS` pick it).
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| match pollster::block_on(GpuContext::new(&options())) {
        Ok(ctx) => {
            eprintln!("testing on {}", ctx.describe());
            ctx
        }
        Err(e) => panic!("these tests need a GPU adapter: {e}"),
    })
}

/// The same adapter with the other kernel profile (GPU-style kernels on a CPU driver and vice
/// versa), so that both families of kernels run through the whole layer on any machine.
pub fn gpu_other_profile() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| {
        let mut options = options();
        options.kernels = if gpu().cpu_kernels() {
            KernelFamilyRequest::Gpu
        } else {
            KernelFamilyRequest::Cpu
        };
        pollster::block_on(GpuContext::new(&options)).expect("the same adapter again")
    })
}

/// A fresh seed (or `COMPATTN_SEED`) and the text that reproduces it.
pub fn seed(test: &str) -> (u64, String) {
    let seed = testing::test_seed();
    (
        seed,
        format!("{test} (reproduce with COMPATTN_SEED={seed})"),
    )
}

#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], tol: f64) -> ErrorStats {
    let stats = ErrorStats::compare(actual, expected);
    assert!(stats.within(tol), "{what}: {stats} exceeds tolerance {tol}");
    stats
}

/// Copies a `COPY_SRC` buffer of f32s to the host (its own encoder and submit).
pub fn read_buffer(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Vec<f32> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test readback"),
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    ctx.queue().submit([encoder.finish()]);
    let slice = staging.slice(..);
    slice.map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let values = bytemuck::cast_slice(&slice.get_mapped_range().expect("mapped")).to_vec();
    staging.unmap();
    values
}
