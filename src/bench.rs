//! Kernel-level benchmarks: one kernel at a time on random inputs, timed on the GPU.
//!
//! Used by `benches/` (criterion) and `compattn bench`. Each [`KernelBench`] owns its buffers
//! and a recorded dispatch, so a sample is one submit of one kernel, bracketed by timestamps
//! where the adapter has them, else by the host clock around submit-and-wait.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::Config;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::memory;
use crate::gpu::texture::TexelRows;
use crate::gpu::timing::{PassTimer, TimingSource};
use crate::ops::fused_attention::FusedTiling;
use crate::ops::gemm::{GemmShape, GemmTiling};
use crate::ops::{self, ProjectionLayout};
use crate::verify::normal;

/// Which GEMM kernel to measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmKernel {
    /// What the layer uses on this adapter: `Texels` with the CPU kernel profile, else `Tiled`.
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
    /// `[m, k] · [n, k]ᵀ` with the chosen kernel.
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
        let tiling = match kernel {
            GemmKernel::Auto if ctx.texel_operands() => None,
            GemmKernel::Auto => Some(GemmTiling::choose(ctx)),
            GemmKernel::Texels => None,
            GemmKernel::Register => Some(GemmTiling::REGISTER),
            GemmKernel::Tiled => Some(GemmTiling::TILED),
        };
        let Some(tiling) = tiling else {
            let lhs = TexelRows::with_data(ctx, "lhs", m, k, &lhs_data)?;
            let rhs = TexelRows::with_data(ctx, "rhs", n, k, &rhs_data)?;
            let dispatches =
                ops::gemm::texel_dispatches(ctx, &lhs, &rhs, ops::Rows::Buffer(&out)).await?;
            let mut bench = Self::new(
                ctx,
                format!("gemm {m}x{n}x{k}"),
                shape.flops(),
                dispatches,
                vec![out],
            );
            bench.textures = vec![lhs, rhs];
            return Ok(bench);
        };
        let lhs = memory::storage_init(ctx, "lhs", &lhs_data)?;
        let rhs = memory::storage_init(ctx, "rhs", &rhs_data)?;
        let dispatches = ops::gemm::dispatches_with(ctx, tiling, shape, &lhs, &rhs, &out).await?;
        Ok(Self::new(
            ctx,
            format!("gemm {m}x{n}x{k}"),
            shape.flops(),
            dispatches,
            vec![lhs, rhs, out],
        ))
    }

    /// Every attention-core kernel of both strategies at `batch × seq` for `config`, each on
    /// random projections: `search_scores`, `masked_softmax`, `search_values`,
    /// `retrieval_select` (unfused), `value_mean`, `fused_attention` and, where
    /// [`has_blocked_attention`](Self::has_blocked_attention), `blocked_attention` (fused).
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
        let (b, n, s, r, d) = (
            batch as f64,
            seq as f64,
            c.num_searches as f64,
            c.num_retrievals as f64,
            c.dim_head as f64,
        );
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
        let tiling = FusedTiling::choose(ctx, c.dim_head, c.num_retrievals)?;
        // The fused kernel reads and writes texel rows where the layer would (CPU profile).
        let texels = ctx.texel_operands() && ops::fused_attention::texels_supported(c.dim_head);
        let (proj_texels, concat_texels) = if texels {
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
        let fused_proj = match &proj_texels {
            Some(rows) => ops::Rows::Texels(rows),
            None => ops::Rows::Buffer(&proj),
        };
        let (acc_len, stats_len) = ops::fused_attention::carry_len(ctx, &layout, tiling)?;
        let carry_acc = memory::storage(ctx, "carry_acc", &[acc_len], None)?;
        let carry_stats = memory::storage(ctx, "carry_stats", &[stats_len], None)?;

        let mut kernels = vec![
            (
                "search_scores",
                2.0 * b * s * n * n * d,
                vec![ops::search_scores::dispatch(ctx, &layout, scale, &proj, &logits).await?],
            ),
            (
                "masked_softmax",
                5.0 * b * s * n * n,
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
                2.0 * b * s * n * n * r * d,
                ops::search_values::dispatches(ctx, &layout, &weights, &proj, &retrieved).await?,
            ),
            (
                "retrieval_select",
                2.0 * b * s * r * n * d * d + 4.0 * b * s * r * n * d,
                vec![
                    ops::retrieval_select::dispatch(
                        ctx, &layout, scale, &retrieved, &proj, &w_rk, &g_scratch, &concat,
                    )
                    .await?,
                ],
            ),
            (
                "value_mean",
                b * n * r * d,
                vec![ops::value_mean::dispatch(ctx, &layout, fused_proj, &value_mean).await?],
            ),
            (
                "fused_attention",
                2.0 * b * s * n * n * d * (1.0 + r) + 4.0 * b * s * r * n * d,
                ops::fused_attention::dispatches(
                    ctx,
                    &layout,
                    tiling,
                    scale,
                    c.causal,
                    &ops::fused_attention::FusedBuffers {
                        proj: fused_proj,
                        mask: &mask,
                        value_mean: &value_mean,
                        carry_acc: &carry_acc,
                        carry_stats: &carry_stats,
                        concat: match &concat_texels {
                            Some(rows) => ops::Rows::Texels(rows),
                            None => ops::Rows::Buffer(&concat),
                        },
                    },
                )
                .await?,
            ),
        ];
        // The blocked CPU variant, where the layer would run it (texel operands, aligned heads).
        let retrieved_texels = if let (Some(proj_t), Some(concat_t), true) = (
            &proj_texels,
            &concat_texels,
            ops::blocked_attention::supported(ctx, &layout),
        ) {
            let core = ops::blocked_attention::bind(
                ctx,
                &layout,
                scale,
                c.causal,
                proj_t,
                &mask,
                &value_mean,
                concat_t,
            )
            .await?;
            kernels.push((
                "blocked_attention",
                2.0 * b * s * n * n * d * (1.0 + r) + 4.0 * b * s * r * n * d,
                core.dispatches,
            ));
            Some(core.retrieved)
        } else {
            None
        };
        let buffers = [
            proj,
            mask,
            logits,
            weights,
            retrieved,
            w_rk,
            g_scratch,
            concat,
            value_mean,
            carry_acc,
            carry_stats,
        ];
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
        ops::blocked_attention::supported(ctx, &layout)
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
        let start = web_time::Instant::now();
        ctx.scoped(&self.name, || {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            for (index, dispatch) in self.dispatches.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&self.name),
                    timestamp_writes: self.timer.as_ref().map(|t| t.writes(index)),
                });
                dispatch.record(&mut pass);
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
