//! Kernel-level benchmarks: one kernel at a time on random inputs, timed on the GPU.
//!
//! Used by `benches/` (criterion) and `compattn bench`. Each [`KernelBench`] owns its buffers
//! and a recorded dispatch, so a sample is one submit of one kernel, bracketed by timestamps
//! where the adapter has them, else by the host clock around submit-and-wait.

use crate::rng::Rng as StdRng;

use crate::config::Config;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::memory;
use crate::gpu::texture::TexelRows;
use crate::gpu::timing::{PassTimer, TimingSource};
use crate::ops::fused_attention::{Carry, FusedIo};
use crate::ops::gemm::{GemmOperands, GemmPrecision, GemmShape};
use crate::ops::{self, ProjectionLayout, Rows};
use crate::plan::Strategy;
use crate::plan::{
    BlockedPlan, CorePlan, ExecutionPlan, FusedPlan, FusedTiling, GemmPlan, GemmTiling,
    OperandStorage, texel_gemm_kernel,
};
use crate::precision::Precision;
use crate::testing::normal;

/// Which GEMM kernel to measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmKernel {
    /// What the layer's plan uses on this adapter ([`GemmPlan::of`]).
    #[default]
    Auto,
    /// `gemm_texture.wgsl`: operands read as texels (the CPU profile's kernel).
    Texels,
    /// `gemm.wgsl`: register-blocked from storage buffers (CPU profile, layers whose operands
    /// are not texels).
    Register,
    /// `gemm_tiled.wgsl`: workgroup-memory tiles (the GPU kernel).
    Tiled,
}

/// One kernel bound to random inputs, ready to be timed.
pub struct KernelBench {
    ctx: GpuContext,
    name: String,
    flops: f64,
    /// One launch, or several where a loop-capped driver splits the reduction.
    dispatches: Vec<Dispatch>,
    timer: Option<PassTimer>,
    _buffers: Vec<wgpu::Buffer>,
    textures: Vec<TexelRows>,
}

impl KernelBench {
    /// `[m, k] · [n, k]ᵀ` with the chosen kernel (`Auto`: the plan's, [`GemmPlan::of`]).
    pub async fn gemm(
        ctx: &GpuContext,
        kernel: GemmKernel,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<KernelBench> {
        let _serial = ctx.serial().await;
        let mut rng = StdRng::seed_from_u64(1);
        let shape = GemmShape { m, n, k };
        let lhs_data = normal(&mut rng, m * k, 1.0);
        let rhs_data = normal(&mut rng, n * k, 1.0);
        let out = memory::storage(ctx, "out", &[m, n], None)?;
        let plan = match kernel {
            GemmKernel::Auto => GemmPlan::of(ctx, m, k, k, OperandStorage::Buffers),
            GemmKernel::Texels => GemmPlan::Texels {
                input: texel_gemm_kernel(ctx, m, k, false),
                output: texel_gemm_kernel(ctx, m, k, false),
            },
            GemmKernel::Register => GemmPlan::Buffers(GemmTiling::REGISTER),
            GemmKernel::Tiled => GemmPlan::Buffers(GemmTiling::TILED),
        };
        let name = format!("gemm {m}x{n}x{k}");
        match plan {
            GemmPlan::Texels { input, .. } => {
                let lhs = TexelRows::with_data(ctx, "lhs", m, k, &lhs_data)?;
                let rhs = TexelRows::with_data(ctx, "rhs", n, k, &rhs_data)?;
                let dispatches = ops::gemm::dispatches(
                    ctx,
                    GemmOperands::Texels {
                        kernel: input,
                        lhs: &lhs,
                        rhs: &rhs,
                        out: Rows::Buffer((&out).into()),
                        out_precision: Precision::F32,
                    },
                )
                .await?;
                let mut bench = Self::new(ctx, name, shape.flops(), dispatches, vec![out]);
                bench.textures = vec![lhs, rhs];
                Ok(bench)
            }
            GemmPlan::Buffers(tiling) => {
                let lhs = memory::storage_init(ctx, "lhs", &lhs_data)?;
                let rhs = memory::storage_init(ctx, "rhs", &rhs_data)?;
                let dispatches = ops::gemm::dispatches(
                    ctx,
                    GemmOperands::Buffers {
                        tiling,
                        shape,
                        precision: GemmPrecision::F32,
                        lhs: (&lhs).into(),
                        rhs: &rhs,
                        out: (&out).into(),
                    },
                )
                .await?;
                Ok(Self::new(
                    ctx,
                    name,
                    shape.flops(),
                    dispatches,
                    vec![lhs, rhs, out],
                ))
            }
        }
    }

    /// Every attention-core kernel of both strategies at `batch × seq` for `config`, each on
    /// random projections: `search_scores`, `masked_softmax`, `search_values`,
    /// `retrieval_select` (unfused), `value_mean`, `fused_attention` and, where the plan runs
    /// it ([`has_blocked_attention`](Self::has_blocked_attention)), `blocked_attention`. The
    /// fused kernel runs with the tiling, storage and key chunks the layer's plan would use.
    pub async fn attention_kernels(
        ctx: &GpuContext,
        config: &Config,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<KernelBench>> {
        config.validate()?;
        let _serial = ctx.serial().await;
        let c = config;
        let mut rng = StdRng::seed_from_u64(2);
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        let scale = c.scale() as f32;
        let flops = |name| attention_kernel_flops(name, c, batch, seq);
        let proj_data = normal(&mut rng, batch * seq * layout.row_stride, 1.0);
        let proj = memory::storage_init(ctx, "proj", &proj_data)?;
        let mask = memory::storage_init(ctx, "mask", &vec![1u32; batch * seq])?;
        let scores_len = batch * c.num_searches * seq * seq;
        let logits = memory::storage_init(ctx, "logits", &normal(&mut rng, scores_len, 1.0))?;
        let weights = memory::storage(ctx, "weights", &[scores_len], None)?;
        let retrieved_len = batch * c.num_searches * seq * c.value_width();
        let retrieved =
            memory::storage_init(ctx, "retrieved", &normal(&mut rng, retrieved_len, 1.0))?;
        let w_rk = memory::storage_init(ctx, "w_rk", &normal(&mut rng, c.dim_head.pow(2), 0.1))?;
        let g_scratch = memory::storage(
            ctx,
            "g",
            &[batch, c.num_searches, seq, c.num_retrievals],
            None,
        )?;
        let concat = memory::storage(ctx, "concat", &[batch, seq, c.search_width()], None)?;
        let value_mean = memory::storage(ctx, "value_mean", &[batch, c.value_width()], None)?;
        // The cores as the layer's plan runs them: its fused core, and the general fused kernel
        // in the plan's storage even where the plan picks the blocked one (measured as well).
        let plan = ExecutionPlan::resolve(ctx, c, Precision::F32, Strategy::Fused, batch, seq)?;
        let storage = plan.core_storage();
        let (fused, blocked) = match &plan.core() {
            CorePlan::Fused(fused) => (fused.clone(), None),
            CorePlan::Blocked(blocked) => {
                let tiling = FusedTiling::choose(ctx, c.dim_head, c.num_retrievals)?;
                let fused = FusedPlan::resolve(ctx, &layout, tiling, storage)?;
                (fused, Some(*blocked))
            }
            other => {
                return Err(crate::Error::InvalidConfig {
                    field: "strategy",
                    value: other.name().into(),
                    reason: "the kernel benchmarks measure the fused strategy's cores",
                });
            }
        };
        let (proj_texels, concat_texels) = if storage == OperandStorage::Texels {
            let rows = batch * seq;
            (
                Some(TexelRows::with_data(
                    ctx,
                    "proj",
                    rows,
                    layout.row_stride,
                    &proj_data,
                )?),
                Some(TexelRows::new(ctx, "concat", rows, c.search_width())?),
            )
        } else {
            (None, None)
        };
        let (fused_proj, fused_io) = match (&proj_texels, &concat_texels) {
            (Some(proj), Some(concat)) => (Rows::Texels(proj), FusedIo::Texels { proj, concat }),
            _ => (
                Rows::Buffer((&proj).into()),
                FusedIo::Buffers {
                    proj: &proj,
                    concat: &concat,
                    precision: Precision::F32,
                },
            ),
        };
        let carry = Carry::for_plan(ctx, &layout, &fused)?;

        let mut kernels = vec![
            (
                "search_scores",
                flops("search_scores"),
                vec![ops::search_scores::dispatch(ctx, &layout, scale, &proj, &logits).await?],
            ),
            (
                "masked_softmax",
                flops("masked_softmax"),
                vec![
                    ops::masked_softmax::dispatch(
                        ctx,
                        batch,
                        c.num_searches,
                        seq,
                        c.causal,
                        &logits,
                        &mask,
                        &weights,
                    )
                    .await?,
                ],
            ),
            (
                "search_values",
                flops("search_values"),
                ops::search_values::dispatches(ctx, &layout, &weights, &proj, &retrieved).await?,
            ),
            (
                "retrieval_select",
                flops("retrieval_select"),
                vec![
                    ops::retrieval_select::dispatch(
                        ctx,
                        &layout,
                        ops::retrieval_select::Selection::DotProduct { scale, w_rk: &w_rk },
                        &retrieved,
                        &proj,
                        &g_scratch,
                        &concat,
                    )
                    .await?,
                ],
            ),
            (
                "value_mean",
                flops("value_mean"),
                vec![
                    ops::value_mean::dispatch(
                        ctx,
                        &layout,
                        fused_proj,
                        Precision::F32,
                        &value_mean,
                    )
                    .await?,
                ],
            ),
            (
                "fused_attention",
                flops("fused_attention"),
                ops::fused_attention::dispatches(
                    ctx,
                    &layout,
                    &fused,
                    scale,
                    fused_io,
                    ops::key_values::KeyValues::Own {
                        causal: c.causal,
                        mask: (&mask).into(),
                        value_mean: &value_mean,
                    },
                    carry.as_ref(),
                )
                .await?,
            ),
        ];
        // The blocked CPU variant, where the layer's plan runs it.
        let retrieved_texels = match (&proj_texels, &concat_texels, blocked) {
            (Some(proj_t), Some(concat_t), Some(blocked)) => {
                let core = ops::blocked_attention::bind(
                    ctx,
                    &layout,
                    blocked,
                    scale,
                    proj_t,
                    ops::key_values::KeyValues::Own {
                        causal: c.causal,
                        mask: (&mask).into(),
                        value_mean: &value_mean,
                    },
                    concat_t,
                )
                .await?;
                kernels.push((
                    "blocked_attention",
                    flops("blocked_attention"),
                    core.dispatches,
                ));
                Some(core.retrieved)
            }
            _ => None,
        };
        let mut buffers = vec![
            proj, mask, logits, weights, retrieved, w_rk, g_scratch, concat, value_mean,
        ];
        buffers.extend(
            carry
                .map(|carry| [carry.acc, carry.stats])
                .into_iter()
                .flatten(),
        );
        Ok(kernels
            .into_iter()
            .map(|(name, flops, dispatches)| {
                let mut bench =
                    Self::new(ctx, name.to_string(), flops, dispatches, buffers.to_vec());
                if matches!(name, "fused_attention" | "value_mean" | "blocked_attention") {
                    bench.textures = [&proj_texels, &concat_texels, &retrieved_texels]
                        .into_iter()
                        .flatten()
                        .map(TexelRows::share)
                        .collect();
                }
                bench
            })
            .collect())
    }

    /// One decode step's attention over a cache holding `context` positions, without the
    /// projections: the split-KV kernel (`decode_attention`) and the combine that selects the
    /// retrieval (`decode_reduce`), on random keys, values and query, batch 1, f32 storage.
    /// FLOPs: [`decode_attention_flops`].
    pub async fn decode_attention(
        ctx: &GpuContext,
        config: &Config,
        context: usize,
    ) -> Result<KernelBench> {
        config.validate()?;
        let _serial = ctx.serial().await;
        let c = config;
        let (s, r, d) = (c.num_searches, c.num_retrievals, c.dim_head);
        let mut rng = StdRng::seed_from_u64(3);
        let layout = ProjectionLayout::new(1, 1, s, r, d);
        let capacity = context + 1;
        let plan = crate::plan::CachedPlan::resolve(ctx, &layout, capacity)?;
        let proj = memory::storage_init(ctx, "proj", &normal(&mut rng, layout.row_stride, 1.0))?;
        let cache = ops::decode::CacheBuffers {
            precision: Precision::F32,
            keys: memory::storage_init(ctx, "keys", &normal(&mut rng, s * capacity * d, 1.0))?,
            values: memory::storage_init(ctx, "values", &normal(&mut rng, capacity * r * d, 1.0))?,
            mask: memory::storage_init(ctx, "mask", &vec![1u32; capacity])?,
            first_allowed: memory::storage_init(ctx, "first allowed", &[0u32])?,
            state: memory::storage_init(ctx, "length", &[context as u32])?,
        };
        let concat = memory::storage(ctx, "concat", &[s * d], None)?;
        let bound = ops::decode::bind_attention(
            ctx,
            &layout,
            &plan,
            c.scale() as f32,
            &proj,
            &cache,
            ops::decode::AttentionOut::Concat(&concat),
        )
        .await?;
        let flops = decode_attention_flops(config, context);
        let [stats, acc] = bound.partials;
        let ops::decode::CacheBuffers {
            keys,
            values,
            mask,
            first_allowed,
            state,
            ..
        } = cache;
        let buffers = vec![
            proj,
            keys,
            values,
            mask,
            first_allowed,
            state,
            concat,
            stats,
            acc,
        ];
        Ok(Self::new(
            ctx,
            "decode_attention".into(),
            flops,
            bound.dispatches,
            buffers,
        ))
    }

    fn new(
        ctx: &GpuContext,
        name: String,
        flops: f64,
        dispatches: Vec<Dispatch>,
        buffers: Vec<wgpu::Buffer>,
    ) -> KernelBench {
        KernelBench {
            ctx: ctx.clone(),
            name,
            flops,
            timer: PassTimer::new(ctx, dispatches.len()),
            dispatches,
            _buffers: buffers,
            textures: Vec::new(),
        }
    }

    /// Whether [`attention_kernels`](Self::attention_kernels) includes `blocked_attention`:
    /// the fused core the layer runs on CPU drivers that read texels, for heads of `4k` values.
    pub fn has_blocked_attention(
        ctx: &GpuContext,
        config: &Config,
        batch: usize,
        seq: usize,
    ) -> bool {
        let c = config;
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        BlockedPlan::resolve(ctx, &layout).is_some()
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline variant: kernel file and specialisation.
    pub fn variant(&self) -> &str {
        self.dispatches[0].label()
    }

    /// Number of launches one sample makes.
    pub fn launches(&self) -> usize {
        self.dispatches.len()
    }

    /// FLOPs of one launch (multiply-add = 2; elementwise kernels count their operations).
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// Runs the kernel once and returns its time in milliseconds.
    pub async fn sample_ms(&mut self) -> Result<(f64, TimingSource)> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        let start = crate::time::Instant::now();
        ctx.scoped(&self.name, || {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            for (index, dispatch) in self.dispatches.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&self.name),
                    timestamp_writes: self.timer.as_ref().map(|t| t.writes(index)),
                });
                dispatch.record(&mut pass, None);
            }
            if let Some(timer) = &self.timer {
                timer.resolve(&mut encoder);
            }
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        match &self.timer {
            Some(timer) => {
                let ms = timer.read_ms(&ctx).await?;
                Ok((ms.iter().sum(), TimingSource::GpuTimestamps))
            }
            None => {
                memory::wait_idle(&ctx).await?;
                Ok((
                    start.elapsed().as_secs_f64() * 1e3,
                    TimingSource::HostWallClock,
                ))
            }
        }
    }

    /// Runs the kernel once (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sample_ms_blocking(&mut self) -> Result<(f64, TimingSource)> {
        pollster::block_on(self.sample_ms())
    }
}

impl std::fmt::Debug for KernelBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBench")
            .field("name", &self.name)
            .field("variant", &self.variant())
            .finish()
    }
}

/// Median, minimum and maximum of samples (`NaN` for none).
pub fn summarize(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    (median, sorted[0], sorted[sorted.len() - 1])
}

/// FLOPs of [`KernelBench::decode_attention`]: `2·s·context·(d + r·d)`, the scores and the
/// weighted values of one query over `context` cached positions.
pub fn decode_attention_flops(config: &Config, context: usize) -> f64 {
    let c = config;
    2.0 * (c.num_searches * context * (c.dim_head + c.num_retrievals * c.dim_head)) as f64
}

/// FLOPs of one launch of the attention kernel `name` of [`KernelBench::attention_kernels`]; the
/// fused and blocked cores count [`Config::core_flops`].
pub fn attention_kernel_flops(name: &str, config: &Config, batch: usize, seq: usize) -> f64 {
    let (b, n) = (batch as f64, seq as f64);
    let (s, r, d) = (
        config.num_searches as f64,
        config.num_retrievals as f64,
        config.dim_head as f64,
    );
    match name {
        "search_scores" => 2.0 * b * s * n * n * d,
        "masked_softmax" => 5.0 * b * s * n * n,
        "search_values" => 2.0 * b * s * n * n * r * d,
        "retrieval_select" => 2.0 * b * s * r * n * d * d + 4.0 * b * s * r * n * d,
        "value_mean" => b * n * r * d,
        _ => config.core_flops(batch, seq),
    }
}
