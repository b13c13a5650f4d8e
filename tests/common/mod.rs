//! Shared by the integration tests: one device for the whole test binary, fresh seeds.

#![allow(dead_code)]

use std::sync::OnceLock;

use compositional_attention::verify::{self, ErrorStats};
use compositional_attention::{GpuContext, GpuOptions, KernelProfile};

/// The device under test (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `COMPATTN_LIMITS` pick it).
pub fn gpu() -> &'static GpuContext {
    static GPU: OnceLock<GpuContext> = OnceLock::new();
    GPU.get_or_init(|| match GpuContext::from_env_blocking() {
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
        let mut options = GpuOptions::from_env().expect("environment");
        options.kernels = if gpu().cpu_kernels() {
            KernelProfile::Gpu
        } else {
            KernelProfile::Cpu
        };
        pollster::block_on(GpuContext::new(&options)).expect("the same adapter again")
    })
}

/// A fresh seed (or `COMPATTN_SEED`) and the text that reproduces it.
pub fn seed(test: &str) -> (u64, String) {
    let seed = verify::test_seed();
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
