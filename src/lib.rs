//! Compositional Attention (Mittal et al., "Compositional Attention: Disentangling Search and
//! Retrieval", ICLR 2022) as WGSL compute kernels on any GPU through wgpu.
//!
//! The layer computes exactly what the PyTorch package `compositional-attention-pytorch`
//! computes (see `SPEC.md` in the repository), loads its `state_dict` from safetensors, and
//! checks every kernel against an independent `f64` CPU reference ([`mod@reference`]).
//!
//! ```no_run
//! use compositional_attention::{CompositionalAttention, Config, GpuContext, Weights};
//!
//! # fn main() -> compositional_attention::Result<()> {
//! let gpu = GpuContext::from_env_blocking()?;            // WGPU_BACKEND, WGPU_ADAPTER_NAME
//! let config = Config::new(256).dim_head(32).num_searches(4).num_retrievals(2);
//! let weights = Weights::random(config, 0)?;              // or Weights::load("w.safetensors", false)?
//! let mut layer = CompositionalAttention::new(&gpu, &weights)?;
//! let (batch, seq) = (2, 100);
//! let x = vec![0.1f32; batch * seq * 256];
//! let y = layer.forward_blocking(&x, batch, seq, None)?;  // [batch, seq, 256]
//! # Ok(()) }
//! ```
//!
//! `forward` runs as PyTorch's `.eval()` does (dropout is the identity); the layer also trains
//! (`forward_train`, `backward`, [`Gradients`], [`AdamW`]; the [`training`] module says how).
//!
//! # Features
//!
//! With default features the crate is the layer and what it needs (wgpu, safetensors, and a few
//! small crates); the command line (`compattn`, the `cli/` package of the repository) and the
//! test scaffolding stay out of it. Two features add the tools built on top:
//!
//! | feature | adds |
//! |---|---|
//! | `testing` | `reference` (the `f64` CPU oracle) and `testing`: error statistics against it, random problems, test seeds, `testing::soak` (native) |
//! | `bench` | `kernel_bench` (`KernelBench`: one kernel on random inputs, timed); implies `testing` |
//!
//! The default feature `gpu` is the layer itself (wgpu and everything built on it). Without it
//! (`default-features = false`) the crate is only the configuration and the checkpoint readers
//! and writers (`config`, `dropout`, `error`, `io`, `rng`, `weights`, `checkpoint`, `hdf5`, `maps`): the fuzz
//! targets (`fuzz/` in the repository) build that way, without compiling wgpu.
//!
//! The crate logs through the [`log`](https://docs.rs/log) facade; the application picks the
//! logger (`compattn` uses `env_logger`: `RUST_LOG=info compattn ...`).

pub mod checkpoint;
pub mod config;
#[cfg(feature = "gpu")]
mod cross_memory;
#[cfg(feature = "gpu")]
mod device_parameters;
#[cfg(feature = "gpu")]
mod device_weights;
pub mod dropout;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod hdf5;
pub mod host_memory;
pub mod io;
#[cfg(feature = "bench")]
pub mod kernel_bench;
#[cfg(feature = "gpu")]
mod kv_cache;
#[cfg(feature = "gpu")]
pub mod layer;
pub mod maps;
#[cfg(feature = "gpu")]
mod ops;
#[cfg(feature = "gpu")]
pub mod plan;
#[cfg(feature = "gpu")]
mod precision;
#[cfg(all(feature = "gpu", any(test, feature = "testing")))]
pub mod reference;
pub mod rng;
#[cfg(feature = "gpu")]
pub mod shader_variants;
#[cfg(feature = "gpu")]
mod shape;
#[cfg(all(feature = "gpu", any(test, feature = "testing")))]
pub mod testing;
#[cfg(feature = "gpu")]
mod time;
#[cfg(feature = "gpu")]
pub mod training;
pub mod weights;
#[cfg(feature = "gpu")]
mod wgsl_strip;
#[cfg(feature = "gpu")]
mod workspace;

pub use config::{Config, ExtraKeys, MemoryDims};
#[cfg(feature = "gpu")]
pub use cross_memory::Memory;
pub use error::{Error, Result};
#[cfg(feature = "gpu")]
#[allow(deprecated)]
pub use gpu::KernelProfile;
#[cfg(feature = "gpu")]
pub use gpu::timing::TimingSource;
#[cfg(feature = "gpu")]
pub use gpu::{
    BoundsCheckPolicy, BoundsChecks, CompileProgress, GpuContext, GpuOptions, KernelFamilyRequest,
    LimitsPolicy, Reduction, SubgroupPolicy, TexelRead, TexelReadPolicy, TuneMode,
};
pub use io::Input;
#[cfg(feature = "gpu")]
pub use kv_cache::KvCache;
#[cfg(feature = "gpu")]
#[allow(deprecated)]
pub use layer::Profile;
#[cfg(feature = "gpu")]
pub use layer::{CompositionalAttention, KernelTime, TimedForward, TuneReport, TunedTime};
pub use maps::{AttentionMaps, MapsOptions};
#[cfg(feature = "gpu")]
pub use plan::{ExecutionPlan, Strategy};
#[cfg(feature = "gpu")]
pub use precision::Precision;
#[cfg(feature = "gpu")]
pub use training::{Activations, AdamW, Gradients};
pub use weights::Weights;
