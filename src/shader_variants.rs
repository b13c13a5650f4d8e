//! Every WGSL source the host submits, collected for offline translation.
//!
//! Nothing here can run Metal or DX12, so portability to them is proven by translation: the
//! sources are gathered from the pipeline cache after layers were prepared for a set of
//! problems (so they are exactly what the host compiled, specialisation preamble included) and
//! handed to naga's back ends by `tests/shaders.rs`, or written out by `compattn shaders`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::pipelines::ShaderVariant;
use crate::layer::CompositionalAttention;
use crate::plan::Strategy;
use crate::precision::Precision;
use crate::weights::Weights;

/// What a wasm32 build embeds of each kernel (`build.rs`): the WGSL without comments,
/// indentation and blank lines.
pub use crate::wgsl_strip::stripped_wgsl;

/// A configuration at one input shape.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    /// A short name for reports.
    pub name: &'static str,
    /// The layer's configuration.
    pub config: Config,
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
}

/// Problems that between them reach every kernel, io piece and kind of specialisation: vec4 and
/// scalar head widths, one and several retrievals, `prenorm`, causal, biases, dropout, the README size, a
/// sequence long enough to split keys on loop-capped drivers, and one too long for the blocked
/// CPU core. The scalar head widths also keep training's chunked forward
/// (`search_chunk_softmax_texels`) reached on CPU drivers, where every vec4 head trains through
/// the blocked core.
pub fn representative_problems() -> Vec<Problem> {
    let c = |dim, d, s, r| {
        Config::new(dim)
            .dim_head(d)
            .num_searches(s)
            .num_retrievals(r)
    };
    vec![
        Problem {
            name: "readme",
            config: c(1024, 64, 8, 2),
            batch: 1,
            seq: 512,
        },
        Problem {
            name: "odd_sizes",
            // Dropout: the backward's texel epilogue then stores the dropped weights
            // (io/gemm_out_dropped_texels.wgsl).
            config: c(40, 10, 3, 4).dropout(0.1),
            batch: 2,
            seq: 29,
        },
        Problem {
            name: "odd_head",
            config: c(30, 7, 3, 2).causal(true),
            batch: 1,
            seq: 50,
        },
        Problem {
            name: "prenorm",
            config: c(48, 16, 3, 2).prenorm(true),
            batch: 2,
            seq: 13,
        },
        // The general form's biases (bias_add, after both GEMMs and before the cached core).
        Problem {
            name: "biased",
            config: c(40, 12, 3, 2)
                .bias(true)
                .causal(true)
                .prenorm(true)
                .layer_norm_eps(1e-3),
            batch: 2,
            seq: 21,
        },
        // The MLP score network of the general form (retrieval_select with io/select_mlp, unfused only).
        Problem {
            name: "mlp_selection",
            config: c(24, 8, 2, 3).bias(true).selection_mlp(Some(5)),
            batch: 1,
            seq: 7,
        },
        Problem {
            name: "r1_s1",
            config: c(12, 6, 1, 1),
            batch: 2,
            seq: 9,
        },
        Problem {
            name: "wide",
            config: c(256, 128, 4, 4).causal(true),
            batch: 1,
            seq: 300,
        },
        Problem {
            name: "long",
            config: c(256, 32, 4, 4),
            batch: 1,
            seq: 4096,
        },
        // Attention over a memory (issue 19): cross-attention with the extra rows and separate
        // key and value widths, the MLP score network over a memory (decode_reduce without
        // SELECT, then retrieval_select), and causal self-attention with extra rows.
        Problem {
            name: "cross",
            config: c(24, 8, 3, 3)
                .bias(true)
                .memory(Some(crate::config::MemoryDims {
                    key_dim: 20,
                    value_dim: 12,
                    encoder_decoder: false,
                }))
                .extra_keys(crate::config::ExtraKeys {
                    bias_kv: true,
                    zero_attn: true,
                }),
            batch: 2,
            seq: 11,
        },
        Problem {
            name: "cross_mlp",
            config: c(24, 8, 2, 3)
                .bias(true)
                .selection_mlp(Some(5))
                .memory(Some(crate::config::MemoryDims {
                    key_dim: 16,
                    value_dim: 16,
                    encoder_decoder: false,
                })),
            batch: 1,
            seq: 7,
        },
        Problem {
            name: "extra_rows",
            config: c(20, 5, 2, 2)
                .bias(true)
                .causal(true)
                .extra_keys(crate::config::ExtraKeys {
                    bias_kv: false,
                    zero_attn: true,
                }),
            batch: 2,
            seq: 9,
        },
        // Past what the blocked CPU core covers in one dispatch on a loop-capped driver, so the
        // general fused kernel reads texels there (prepared only, never run: small widths).
        Problem {
            name: "longer_than_blocked",
            config: c(8, 4, 1, 1),
            batch: 1,
            seq: 30_000,
        },
    ]
}

/// Prepares a layer for each problem with every strategy on `ctx` (skipping a strategy the
/// device's limits rule out for that problem), a training step, and for causal problems a
/// prefill and a decode step over a KV cache, in f32 and, where the device has `shader-f16`, in f16 storage; and
/// returns every pipeline variant compiled on `ctx` so far, sorted by label. The plans are the
/// built-in ones: tuning is off while it runs (`GpuContext::tune_mode`), so nothing is measured.
pub async fn collect_variants(
    ctx: &GpuContext,
    problems: &[Problem],
) -> Result<Vec<ShaderVariant>> {
    let mode = ctx.tune_mode();
    ctx.set_tune_mode(crate::gpu::TuneMode::Off);
    let variants = collect_built_in(ctx, problems).await;
    ctx.set_tune_mode(mode);
    variants
}

async fn collect_built_in(ctx: &GpuContext, problems: &[Problem]) -> Result<Vec<ShaderVariant>> {
    // f16 storage where the device has it: its variants of the same kernels.
    let precisions: &[Precision] = if ctx.supports_f16() {
        &Precision::ALL
    } else {
        &[Precision::F32]
    };
    for (problem, &precision) in problems
        .iter()
        .flat_map(|problem| precisions.iter().map(move |p| (problem, p)))
    {
        let weights = Weights::random(problem.config, 0)?;
        let mut layer = CompositionalAttention::with_precision(ctx, &weights, precision)?;
        if !problem.config.plain_self_attention() {
            memory_variants(&mut layer, problem, precision).await?;
            continue;
        }
        for strategy in Strategy::ALL {
            layer.set_strategy(strategy);
            match layer.prepare(problem.batch, problem.seq).await {
                // A problem too large for one strategy on this device (the unfused n × n
                // buffers), or a form one strategy does not run (an MLP score network in the
                // fused core in f16), still contributes the other strategy's variants.
                Ok(())
                | Err(Error::LimitExceeded { .. })
                | Err(Error::InvalidConfig {
                    field: "strategy", ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        // Training: every trainable form, in f32 storage (an f16 layer and the MLP score
        // network are refused).
        if precision == Precision::F32 && problem.config.selection_mlp.is_none() {
            match layer.prepare_training(problem.batch, problem.seq).await {
                Ok(()) | Err(Error::LimitExceeded { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Causal layers generate: a prefill of the whole problem and a decode step (with an
        // MLP score network, in f32 storage only).
        let mlp_in_f16 = problem.config.selection_mlp.is_some() && precision != Precision::F32;
        if problem.config.causal && !mlp_in_f16 {
            let mut cache = layer.kv_cache(problem.batch, problem.seq)?;
            for seq in [problem.seq, 1] {
                layer.prepare_cached(&mut cache, seq).await?;
            }
        }
    }
    Ok(ctx.compiled_variants())
}

/// A layer that attends a memory: a memory of the problem's size (two inputs where the widths
/// differ) attended by the whole problem and by one row, or (extra rows in self-attention) a
/// forward. The MLP score network over a memory runs in f32 storage only.
async fn memory_variants(
    layer: &mut CompositionalAttention,
    problem: &Problem,
    precision: Precision,
) -> Result<()> {
    let c = problem.config;
    let (b, n) = (problem.batch, problem.seq);
    if c.selection_mlp.is_some() && precision != Precision::F32 {
        return Ok(());
    }
    let x = vec![0.25f32; b * n * c.dim];
    if c.memory.is_none() {
        return layer.forward(&x, b, n, None).await.map(drop);
    }
    let (kdim, vdim) = c.key_value_dims();
    let keys = vec![0.5f32; b * n * kdim];
    let memory = match kdim == vdim {
        true => layer.memory(&keys, b, n, None).await?,
        false => {
            let values = vec![-0.5f32; b * n * vdim];
            layer.memory_kv(&keys, &values, b, n, None).await?
        }
    };
    for seq in [n, 1] {
        layer.prepare_cross(&memory, seq).await?;
    }
    Ok(())
}
