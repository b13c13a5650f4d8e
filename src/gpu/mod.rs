//! The wgpu host runtime: device setup, specialised pipelines, buffers, dispatch, timing.
//!
//! | module | concern |
//! |---|---|
//! | [`context`] | adapter and device selection, limits, error scopes |
//! | [`pipelines`] | WGSL specialisation and the pipeline cache |
//! | `memory` | buffer creation with limit checks, readback |
//! | `dispatch` | a kernel bound to its buffers, and the linear workgroup grid |
//! | `texture` | matrices as `rgba32float` texels, the CPU-driver operand format |
//! | [`timing`] | timestamp queries per compute pass |
//! | [`tuning_store`] | tilings measured on this adapter, in memory and on disk |
//! | `uniform` | each kernel's `Params` block, declared once and checked against its WGSL |

pub mod context;
pub(crate) mod dispatch;
pub(crate) mod memory;
pub mod pipelines;
#[cfg(test)]
pub(crate) mod test_device;
pub(crate) mod texture;
pub mod timing;
pub mod tuning_store;
pub(crate) mod uniform;

#[allow(deprecated)]
pub use context::KernelProfile;
pub use context::{
    BoundsCheckPolicy, GpuContext, GpuOptions, KernelFamilyRequest, LimitsPolicy, SubgroupPolicy,
    TexelReadPolicy,
};
pub use dispatch::CompileProgress;
pub use pipelines::{BoundsChecks, Reduction, TexelRead};
pub use tuning_store::{TuneMode, default_cache_path};
