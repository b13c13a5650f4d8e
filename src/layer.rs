//! The layer on a device: parameters uploaded once, a workspace per input shape, and a forward
//! pass recorded into one command encoder, submitted once and read back once.

use crate::config::Config;
use crate::error::Result;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::texture::TexelRows;
use crate::gpu::timing::{PassTimer, TimingSource};
use crate::gpu::{GpuContext, memory};
use crate::io::{self, Input};
use crate::ops::fused_attention::FusedTiling;
use crate::ops::{self, ProjectionLayout, Rows, gemm::GemmShape};
use crate::reference;
use crate::weights::Weights;

/// How the attention core is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// One flash-style kernel per (batch, search, query tile): online softmax over key tiles,
    /// all retrievals accumulated at once, the retrieval selection in its epilogue. GPU memory
    /// is linear in `n`.
    #[default]
    Fused,
    /// Step by step, each step a kernel of its own: logits, softmax, aggregation, selection.
    /// Materialises the `b·s·n²` search logits and weights; every intermediate can be checked.
    Unfused,
}

impl Strategy {
    /// Every strategy, for tests and benchmarks that cover them all.
    pub const ALL: [Strategy; 2] = [Strategy::Fused, Strategy::Unfused];

    /// The lowercase name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Fused => "fused",
            Strategy::Unfused => "unfused",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == s)
            .ok_or_else(|| crate::Error::InvalidConfig {
                field: "strategy",
                value: s.to_string(),
                reason: "must be `fused` or `unfused`",
            })
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight matrix in the format this device's GEMM reads: texel rows with the CPU kernel
/// profile (see `src/gpu/texture.rs`), a storage buffer otherwise.
enum WeightMatrix {
    Buffer(wgpu::Buffer),
    Texels(TexelRows),
}

impl WeightMatrix {
    fn upload(
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self> {
        Ok(if ctx.texel_operands() {
            WeightMatrix::Texels(TexelRows::with_data(ctx, label, rows, cols, data)?)
        } else {
            WeightMatrix::Buffer(memory::storage_init(ctx, label, data)?)
        })
    }

    fn rows(&self) -> Rows<'_> {
        match self {
            WeightMatrix::Buffer(buffer) => Rows::Buffer(buffer),
            WeightMatrix::Texels(texels) => Rows::Texels(texels),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            WeightMatrix::Buffer(buffer) => buffer.size(),
            WeightMatrix::Texels(texels) => texels.bytes(),
        }
    }
}

/// Parameters in device memory.
struct DeviceParams {
    /// `[W_sq; W_sk; W_rq; W_rv]`, `[(3s + r)·d, dim]`: one GEMM computes all four projections.
    projection: WeightMatrix,
    /// `[W_sq; W_sk; W_q̃; W_rv]` with `W_q̃ = W_rkᵀ·W_rq` per search, so that the projection
    /// GEMM yields `Q̃ = RQ·W_rk` directly and the fused kernel's retrieval logits are
    /// `Q̃·Ret` (SPEC §2.4) with no per-token `d × d` product.
    fused_projection: WeightMatrix,
    /// `W_o [dim, s·d]`.
    out: WeightMatrix,
    /// `W_rk [d, d]`.
    retrieval_keys: wgpu::Buffer,
    /// LayerNorm `(γ, β)` with `prenorm`.
    norm: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl DeviceParams {
    fn upload(ctx: &GpuContext, weights: &Weights) -> Result<Self> {
        let c = weights.config();
        let pack = |third: &[f32]| -> Vec<f32> {
            [
                &weights.search_queries[..],
                &weights.search_keys[..],
                third,
                &weights.retrieval_values[..],
            ]
            .concat()
        };
        let packed = pack(&weights.retrieval_queries);
        let fused_packed = pack(&retrieval_query_keys(weights));
        let norm = match &weights.norm {
            Some((gamma, beta)) => Some((
                memory::storage_init(ctx, "norm.weight", gamma)?,
                memory::storage_init(ctx, "norm.bias", beta)?,
            )),
            None => None,
        };
        let (width, dim) = (c.projection_width(), c.dim);
        Ok(DeviceParams {
            projection: WeightMatrix::upload(ctx, "packed input projections", width, dim, &packed)?,
            fused_projection: WeightMatrix::upload(
                ctx,
                "packed input projections (fused)",
                width,
                dim,
                &fused_packed,
            )?,
            out: WeightMatrix::upload(ctx, "to_out.weight", dim, c.search_width(), &weights.out)?,
            retrieval_keys: memory::storage_init(
                ctx,
                "to_retrieval_keys.weight",
                &weights.retrieval_keys,
            )?,
            norm,
        })
    }

    fn bytes(&self) -> u64 {
        let norm = self
            .norm
            .as_ref()
            .map_or(0, |(gamma, beta)| gamma.size() + beta.size());
        self.projection.bytes()
            + self.fused_projection.bytes()
            + self.out.bytes()
            + self.retrieval_keys.size()
            + norm
    }
}

/// `W_q̃[σ·d + k, c] = Σ_k' W_rk[k', k] · W_rq[σ·d + k', c]`, accumulated in f64: the weight
/// that maps the (normalised) input straight to `RQ·W_rk` for every search.
fn retrieval_query_keys(weights: &Weights) -> Vec<f32> {
    let c = weights.config();
    let (d, dim) = (c.dim_head, c.dim);
    let mut fused = vec![0.0f32; c.search_width() * dim];
    let mut row = vec![0.0f64; dim];
    for sigma in 0..c.num_searches {
        for k in 0..d {
            row.fill(0.0);
            for k_in in 0..d {
                let w = weights.retrieval_keys[k_in * d + k] as f64;
                let rq_row = &weights.retrieval_queries[(sigma * d + k_in) * dim..][..dim];
                for (acc, &v) in row.iter_mut().zip(rq_row) {
                    *acc += w * v as f64;
                }
            }
            for (out, acc) in fused[(sigma * d + k) * dim..][..dim].iter_mut().zip(&row) {
                *out = *acc as f32;
            }
        }
    }
    fused
}

/// The texel copy if there is one, else the buffer.
fn rows_of<'a>(buffer: &'a wgpu::Buffer, copy: Option<&'a TexelRows>) -> Rows<'a> {
    match copy {
        Some(texels) => Rows::Texels(texels),
        None => Rows::Buffer(buffer),
    }
}

/// Intermediate buffers and textures a workspace's dispatches are bound to.
#[derive(Default)]
struct Held {
    buffers: Vec<wgpu::Buffer>,
    texels: Vec<TexelRows>,
}

impl Held {
    fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.size()).sum::<u64>()
            + self.texels.iter().map(TexelRows::bytes).sum::<u64>()
    }
}

/// Buffers and recorded dispatches for one `(batch, seq, strategy)`.
struct Workspace {
    batch: usize,
    seq: usize,
    strategy: Strategy,
    x: wgpu::Buffer,
    mask: wgpu::Buffer,
    y: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Intermediates, kept alive for the dispatches bound to them.
    held: Held,
    dispatches: Vec<Dispatch>,
    /// Timestamp queries, created on the first profiled call.
    timer: Option<PassTimer>,
}

impl Workspace {
    fn bytes(&self) -> u64 {
        let own = [&self.x, &self.mask, &self.y, &self.staging]
            .iter()
            .map(|b| b.size())
            .sum::<u64>();
        let params: u64 = self.dispatches.iter().map(Dispatch::bytes).sum();
        own + self.held.bytes() + params
    }
}

/// Time of one kernel in a profiled forward.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The pipeline variant's label: kernel name and specialisation.
    pub label: String,
    /// Milliseconds on the GPU.
    pub ms: f64,
}

/// The result and timing of one profiled forward.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `[batch, seq, dim]`.
    pub output: Vec<f32>,
    /// Per-kernel GPU times (empty with [`TimingSource::HostWallClock`]).
    pub kernels: Vec<KernelTime>,
    /// The forward's time: the sum of the kernels' GPU times, or the wall time.
    pub total_ms: f64,
    /// Host wall time from upload to readback, always measured.
    pub wall_ms: f64,
    /// Where `total_ms` comes from.
    pub source: TimingSource,
}

const N_SQUARED_HINT: &str = "the unfused strategy stores b·s·n² search logits; the fused strategy \
     (Strategy::Fused, the default) needs no such buffer";

/// A Compositional Attention layer placed on a GPU.
pub struct CompositionalAttention {
    ctx: GpuContext,
    config: Config,
    params: DeviceParams,
    strategy: Strategy,
    workspace: Option<Workspace>,
}

impl std::fmt::Debug for CompositionalAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompositionalAttention")
            .field("config", &self.config)
            .field("strategy", &self.strategy)
            .field("gpu", &self.ctx)
            .finish()
    }
}

impl CompositionalAttention {
    /// Uploads `weights` to the device of `ctx`. The configuration (including `causal`) is the
    /// weights' own.
    pub fn new(ctx: &GpuContext, weights: &Weights) -> Result<Self> {
        let config = *weights.config();
        config.validate()?;
        let _serial = futures::executor::block_on(ctx.serial());
        Ok(CompositionalAttention {
            ctx: ctx.clone(),
            config,
            params: DeviceParams::upload(ctx, weights)?,
            strategy: Strategy::default(),
            workspace: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device the layer lives on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The strategy the next forward uses.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Chooses how the next forward computes attention.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// Bytes of GPU buffers the layer holds now: parameters plus the workspace of the last shape.
    pub fn gpu_bytes(&self) -> u64 {
        self.params.bytes() + self.workspace.as_ref().map_or(0, Workspace::bytes)
    }

    /// `x [batch, seq, dim]`, `mask [batch, seq]` (`true` = the key may be attended) →
    /// `[batch, seq, dim]`. Shapes and values are checked first; buffers and bind groups are
    /// built on the first call for a shape and reused after.
    pub async fn forward(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        Ok(self.execute(x, batch, seq, mask, false).await?.output)
    }

    /// A forward pass that also times each kernel: with GPU timestamps where the adapter has
    /// them (each kernel in a compute pass of its own), else the host wall time of the whole
    /// submit-and-readback. For benchmarks; [`CompositionalAttention::forward`] records all
    /// kernels in one pass.
    pub async fn profile(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Profile> {
        self.execute(x, batch, seq, mask, true).await
    }

    async fn execute(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        timed: bool,
    ) -> Result<Profile> {
        reference::check_input(&self.config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        self.prepare_unserialized(batch, seq).await?;
        let workspace = self.workspace.as_mut().expect("prepared above");
        if timed && workspace.timer.is_none() {
            workspace.timer = PassTimer::new(&ctx, workspace.dispatches.len());
        }
        let timer = workspace.timer.as_ref().filter(|_| timed);
        let mask_words: Vec<u32> = match mask {
            Some(mask) => mask.iter().map(|&allowed| allowed as u32).collect(),
            None => vec![1; batch * seq],
        };
        let start = crate::time::Instant::now();
        ctx.scoped("forward", || {
            ctx.queue()
                .write_buffer(&workspace.x, 0, bytemuck::cast_slice(x));
            ctx.queue()
                .write_buffer(&workspace.mask, 0, bytemuck::cast_slice(&mask_words));
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("forward"),
                    });
            match timer {
                // One pass per kernel, bracketed by timestamps.
                Some(timer) => {
                    for (index, dispatch) in workspace.dispatches.iter().enumerate() {
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(dispatch.label()),
                            timestamp_writes: Some(timer.writes(index)),
                        });
                        dispatch.record(&mut pass);
                    }
                    timer.resolve(&mut encoder);
                }
                // Everything in one pass: no pass boundaries for the driver to synchronise.
                None => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("forward"),
                        timestamp_writes: None,
                    });
                    for dispatch in &workspace.dispatches {
                        dispatch.record(&mut pass);
                    }
                }
            }
            encoder.copy_buffer_to_buffer(
                &workspace.y,
                0,
                &workspace.staging,
                0,
                workspace.y.size(),
            );
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        let output =
            memory::read_f32(&ctx, &workspace.staging, batch * seq * self.config.dim).await?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let (kernels, total_ms, source) = match timer {
            Some(timer) => {
                let times = timer.read_ms(&ctx).await?;
                let kernels: Vec<KernelTime> = workspace
                    .dispatches
                    .iter()
                    .zip(times)
                    .map(|(d, ms)| KernelTime {
                        label: d.label().to_string(),
                        ms,
                    })
                    .collect();
                let total = kernels.iter().map(|k| k.ms).sum();
                (kernels, total, TimingSource::GpuTimestamps)
            }
            None => (Vec::new(), wall_ms, TimingSource::HostWallClock),
        };
        Ok(Profile {
            output,
            kernels,
            total_ms,
            wall_ms,
            source,
        })
    }

    /// Blocking [`CompositionalAttention::forward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.forward(x, batch, seq, mask))
    }

    /// [`CompositionalAttention::forward`] on an [`Input`]; checks its `dim` too.
    pub async fn forward_input(&mut self, input: &Input) -> Result<Vec<f32>> {
        if input.dim != self.config.dim {
            return Err(crate::Error::shape(
                "input",
                &[input.batch, input.seq, self.config.dim],
                &[input.batch, input.seq, input.dim],
            ));
        }
        self.forward(&input.x, input.batch, input.seq, input.mask.as_deref())
            .await
    }

    /// Builds the workspace for `(batch, seq)` and the current strategy, unless it exists.
    pub async fn prepare(&mut self, batch: usize, seq: usize) -> Result<()> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        self.prepare_unserialized(batch, seq).await
    }

    async fn prepare_unserialized(&mut self, batch: usize, seq: usize) -> Result<()> {
        if let Some(w) = &self.workspace
            && (w.batch, w.seq, w.strategy) == (batch, seq, self.strategy)
        {
            return Ok(());
        }
        // Free the old workspace before allocating the new one.
        self.workspace = None;
        let workspace = self.build_workspace(batch, seq).await?;
        self.workspace = Some(workspace);
        Ok(())
    }

    async fn build_workspace(&self, batch: usize, seq: usize) -> Result<Workspace> {
        let ctx = &self.ctx;
        let c = &self.config;
        let tokens = batch * seq;
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        let scale = c.scale() as f32;
        // CPU kernel profile: GEMM operands (and, where heads align to texels, the fused
        // kernel's projections and output) live in texel rows.
        let texels = ctx.texel_operands();
        let fused_texels = texels
            && self.strategy == Strategy::Fused
            && ops::fused_attention::texels_supported(c.dim_head);

        let x = memory::storage(ctx, "input", &[batch, seq, c.dim], None)?;
        let mask = memory::storage(ctx, "mask", &[batch, seq], None)?;
        let y = memory::storage(ctx, "output", &[batch, seq, c.dim], None)?;
        let staging = memory::staging(ctx, "output readback", y.size());
        let mut held = Held::default();
        let mut dispatches = Vec::new();

        let normed = match &self.params.norm {
            Some((gamma, beta)) => {
                let normed = memory::storage(ctx, "layer norm", &[batch, seq, c.dim], None)?;
                dispatches.push(
                    ops::layer_norm::dispatch(ctx, tokens, c.dim, &x, gamma, beta, &normed).await?,
                );
                Some(normed)
            }
            None => None,
        };
        let input = normed.as_ref().unwrap_or(&x);

        // Projections: [SQ | SK | RQ | RV] (or Q̃ in place of RQ for the fused strategy).
        let projection_weights = match self.strategy {
            Strategy::Fused => &self.params.fused_projection,
            Strategy::Unfused => &self.params.projection,
        };
        let proj_shape = GemmShape {
            m: tokens,
            n: layout.row_stride,
            k: c.dim,
        };
        let proj_texels = if fused_texels {
            Some(TexelRows::new(
                ctx,
                "projections",
                tokens,
                layout.row_stride,
            )?)
        } else {
            None
        };
        let proj = if fused_texels {
            memory::storage(ctx, "projections (unused)", &[4], None)?
        } else {
            memory::storage(ctx, "projections", &[batch, seq, layout.row_stride], None)?
        };
        let proj_rows = match &proj_texels {
            Some(texels) => Rows::Texels(texels),
            None => Rows::Buffer(&proj),
        };
        let input_copy = self
            .texel_copy(input, tokens, c.dim, texels, &mut dispatches)
            .await?;
        dispatches.extend(
            ops::gemm::rows_dispatches(
                ctx,
                proj_shape,
                rows_of(input, input_copy.as_ref()),
                projection_weights.rows(),
                proj_rows,
            )
            .await?,
        );

        // Attention core → concatenated searches [b, n, s·d].
        let concat = memory::storage(
            ctx,
            "concatenated searches",
            &[batch, seq, c.search_width()],
            None,
        )?;
        let concat_texels = if fused_texels {
            Some(TexelRows::new(
                ctx,
                "concatenated searches",
                tokens,
                c.search_width(),
            )?)
        } else {
            None
        };
        match self.strategy {
            Strategy::Fused if fused_texels && ops::blocked_attention::supported(ctx, &layout) => {
                // CPU drivers: the blocked variant and its selection kernel.
                let value_mean =
                    memory::storage(ctx, "value mean", &[batch, c.value_width()], None)?;
                let (Some(proj_t), Some(concat_t)) = (&proj_texels, &concat_texels) else {
                    unreachable!("fused_texels allocates both")
                };
                dispatches
                    .push(ops::value_mean::dispatch(ctx, &layout, proj_rows, &value_mean).await?);
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
                dispatches.extend(core.dispatches);
                held.buffers.push(value_mean);
                held.texels.push(core.retrieved);
            }
            Strategy::Fused => {
                let tiling = FusedTiling::choose(ctx, c.dim_head, c.num_retrievals)?;
                let value_mean =
                    memory::storage(ctx, "value mean", &[batch, c.value_width()], None)?;
                let (acc_len, stats_len) = ops::fused_attention::carry_len(ctx, &layout, tiling)?;
                let carry_acc =
                    memory::storage(ctx, "fused carry (accumulators)", &[acc_len], None)?;
                let carry_stats =
                    memory::storage(ctx, "fused carry (max, sum)", &[stats_len], None)?;
                dispatches
                    .push(ops::value_mean::dispatch(ctx, &layout, proj_rows, &value_mean).await?);
                let buffers = ops::fused_attention::FusedBuffers {
                    proj: proj_rows,
                    mask: &mask,
                    value_mean: &value_mean,
                    carry_acc: &carry_acc,
                    carry_stats: &carry_stats,
                    concat: match &concat_texels {
                        Some(texels) => Rows::Texels(texels),
                        None => Rows::Buffer(&concat),
                    },
                };
                dispatches.extend(
                    ops::fused_attention::dispatches(
                        ctx, &layout, tiling, scale, c.causal, &buffers,
                    )
                    .await?,
                );
                held.buffers.extend([value_mean, carry_acc, carry_stats]);
            }
            Strategy::Unfused => {
                held.buffers.extend(
                    self.unfused_core(&layout, &proj, &mask, &concat, &mut dispatches)
                        .await?,
                );
            }
        }

        // Output projection.
        let output = GemmShape {
            m: tokens,
            n: c.dim,
            k: c.search_width(),
        };
        let concat_copy = match concat_texels {
            Some(texels) => Some(texels),
            None => {
                self.texel_copy(&concat, tokens, c.search_width(), texels, &mut dispatches)
                    .await?
            }
        };
        dispatches.extend(
            ops::gemm::rows_dispatches(
                ctx,
                output,
                rows_of(&concat, concat_copy.as_ref()),
                self.params.out.rows(),
                Rows::Buffer(&y),
            )
            .await?,
        );

        held.buffers.extend(normed);
        held.buffers.extend([proj, concat]);
        held.texels
            .extend(proj_texels.into_iter().chain(input_copy).chain(concat_copy));
        Ok(Workspace {
            batch,
            seq,
            strategy: self.strategy,
            x,
            mask,
            y,
            staging,
            held,
            dispatches,
            timer: None,
        })
    }

    /// With the CPU profile (`texels`), a texel copy of the `[rows, cols]` buffer for the texel
    /// GEMM, made by a `texture_copy` dispatch appended to `dispatches`; `None` otherwise.
    async fn texel_copy(
        &self,
        buffer: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        texels: bool,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<Option<TexelRows>> {
        if !texels {
            return Ok(None);
        }
        let copy = TexelRows::new(&self.ctx, "GEMM operand", rows, cols)?;
        dispatches.push(ops::texture_copy::dispatch(&self.ctx, buffer, &copy).await?);
        Ok(Some(copy))
    }

    /// The unfused attention core: logits, softmax, aggregation, selection. Returns the
    /// intermediate buffers the dispatches are bound to.
    async fn unfused_core(
        &self,
        layout: &ProjectionLayout,
        proj: &wgpu::Buffer,
        mask: &wgpu::Buffer,
        concat: &wgpu::Buffer,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<Vec<wgpu::Buffer>> {
        let ctx = &self.ctx;
        let c = &self.config;
        let (batch, seq) = (layout.batch, layout.seq);
        let scale = c.scale() as f32;
        let scores = [batch, c.num_searches, seq, seq];
        let logits = memory::storage(ctx, "search logits", &scores, Some(N_SQUARED_HINT))?;
        let weights = memory::storage(ctx, "search weights", &scores, Some(N_SQUARED_HINT))?;
        let retrieved = memory::storage(
            ctx,
            "retrieved",
            &[batch, c.num_searches, seq, c.value_width()],
            None,
        )?;
        let g_scratch = memory::storage(
            ctx,
            "retrieval logits",
            &[batch, c.num_searches, seq, c.num_retrievals],
            None,
        )?;
        dispatches.push(ops::search_scores::dispatch(ctx, layout, scale, proj, &logits).await?);
        dispatches.push(
            ops::masked_softmax::dispatch(
                ctx,
                batch,
                c.num_searches,
                seq,
                c.causal,
                &logits,
                mask,
                &weights,
            )
            .await?,
        );
        dispatches
            .extend(ops::search_values::dispatches(ctx, layout, &weights, proj, &retrieved).await?);
        dispatches.push(
            ops::retrieval_select::dispatch(
                ctx,
                layout,
                scale,
                &retrieved,
                proj,
                &self.params.retrieval_keys,
                &g_scratch,
                concat,
            )
            .await?,
        );
        Ok(vec![logits, weights, retrieved, g_scratch])
    }
}
