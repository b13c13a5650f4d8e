//! The training forward: the eval forward's data flow, x → LayerNorm → projections → search
//! statistics → retrieval → selection → output, with dropout drawn inline and [`Activations`]
//! kept for the backward.
//!
//! It runs on the parameters in their checkpoint form (one GEMM per projection, `Q̃ = RQ·W_rk`
//! as `s` small GEMMs) rather than the folded forms inference uses, so that the backward's
//! gradients land on the named tensors; with `p = 0` its output equals the eval forward's to
//! f32 rounding (tests/training.rs).

use crate::device_parameters::DeviceParameters;
use crate::dropout::Dropout;
use crate::error::Result;
use crate::gpu::dispatch::{Command, as_commands, record_commands};
use crate::gpu::{GpuContext, memory};
use crate::io;
use crate::layer::CompositionalAttention;
use crate::ops::attention_train::{self, CoreProblem};
use crate::ops::kernel_params::BlockedPlan;
use crate::ops::matmul::{self, Operand, Operands, Stored, Target, TexelPacks};
use crate::ops::{ProjectionLayout, layer_norm};
use crate::ops::{Rows, attention_chunks, blocked_attention, value_mean};
use crate::plan::{OperandStorage, TrainingCore};
use crate::precision::Precision;
use crate::shape;
use crate::weights;

use super::Activations;

/// Training's products: the device, and where their operands are read. That follows the
/// plan's `OperandStorage` as the eval forward's GEMMs do: texel copies (`TexelPacks`) on CPU
/// drivers but GL, the buffers elsewhere.
#[derive(Clone, Copy)]
pub(super) struct Gemms<'a> {
    ctx: &'a GpuContext,
    operands: Operands<'a>,
}

impl<'a> Gemms<'a> {
    pub(super) fn new(ctx: &'a GpuContext, packs: &'a TexelPacks) -> Gemms<'a> {
        let operands = match OperandStorage::of_operands(ctx) {
            OperandStorage::Texels => Operands::Texels(packs),
            OperandStorage::Buffers => Operands::Buffers,
        };
        Gemms { ctx, operands }
    }

    pub(super) fn operands(&self) -> Operands<'a> {
        self.operands
    }
}

/// `c (+)= a·b` as matmul commands (`a`, `b`: buffer, offset, stride, transposed).
pub(super) async fn product(
    gemms: Gemms<'_>,
    (m, n, k): (usize, usize, usize),
    a: (&wgpu::Buffer, usize, usize, bool),
    b: (&wgpu::Buffer, usize, usize, bool),
    c: (&wgpu::Buffer, usize, usize),
    accumulate: bool,
) -> Result<Vec<Command>> {
    let operand = |(buffer, offset, stride, transposed)| Operand {
        buffer,
        offset,
        stride,
        transposed,
    };
    let target = Target {
        buffer: c.0,
        offset: c.1,
        stride: c.2,
    };
    let (ctx, operands) = (gemms.ctx, gemms.operands);
    matmul::product_commands(
        ctx,
        operands,
        m,
        n,
        k,
        operand(a),
        operand(b),
        target,
        accumulate,
    )
    .await
}

/// The projection blocks of the packed `proj` columns, in `[SQ | SK | RQ | RV]` order: the
/// weight's and the bias's names, the column offset and the width.
pub(super) fn projection_blocks(
    layout: &ProjectionLayout,
) -> [(&'static str, &'static str, usize, usize); 4] {
    let sw = layout.searches * layout.head;
    let vw = layout.retrievals * layout.head;
    [
        (
            weights::SEARCH_QUERIES,
            weights::SEARCH_QUERIES_BIAS,
            layout.search_queries,
            sw,
        ),
        (
            weights::SEARCH_KEYS,
            weights::SEARCH_KEYS_BIAS,
            layout.search_keys,
            sw,
        ),
        (
            weights::RETRIEVAL_QUERIES,
            weights::RETRIEVAL_QUERIES_BIAS,
            layout.retrieval_queries,
            sw,
        ),
        (
            weights::RETRIEVAL_VALUES,
            weights::RETRIEVAL_VALUES_BIAS,
            layout.retrieval_values,
            vw,
        ),
    ]
}

/// `c[:, offset .. offset + width] += bias` for `rows` rows: the rank-one product
/// `ones [rows, 1] · bias [1, width]`.
pub(super) async fn add_bias(
    gemms: Gemms<'_>,
    ones: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    rows: usize,
    (c, offset, stride, width): (&wgpu::Buffer, usize, usize, usize),
) -> Result<Vec<Command>> {
    product(
        gemms,
        (rows, width, 1),
        (ones, 0, 1, false),
        (bias, 0, width, false),
        (c, offset, stride),
        true,
    )
    .await
}

/// A forward recorded into an encoder: its kept tensors and the passes that compute them.
pub(super) struct ForwardTrain {
    pub activations: Activations,
    commands: Vec<Command>,
}

impl ForwardTrain {
    /// Records the copies of the caller's input (and mask) into the activations, then every
    /// pass, into `encoder`.
    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        mask: Option<&wgpu::Buffer>,
    ) {
        let act = &self.activations;
        encoder.copy_buffer_to_buffer(input, 0, &act.input, 0, act.input.size());
        if let Some(mask) = mask {
            encoder.copy_buffer_to_buffer(mask, 0, &act.mask, 0, act.mask.size());
        }
        record_commands(encoder, "forward_train", &self.commands);
    }
}

impl CompositionalAttention {
    /// Builds the buffers and passes of a training forward from the caller's `output` (the
    /// input and mask are copied into the activations when it is recorded).
    pub(super) async fn build_forward_train(
        &mut self,
        output: &wgpu::Buffer,
        batch: usize,
        seq: usize,
        dropout_seed: u64,
    ) -> Result<ForwardTrain> {
        let config = *self.config();
        super::check_trainable(&config, self.precision())?;
        shape::check_tokens(&config, batch, seq)?;
        let dropout = Dropout::new(config.dropout, dropout_seed)?;
        let ctx = self.context().clone();
        let id = self.id();
        let parameters = self.device_parameters()?;
        let (dim, d, s, r) = (
            config.dim,
            config.dim_head,
            config.num_searches,
            config.num_retrievals,
        );
        let (tokens, rows) = (batch * seq, batch * s * seq);
        let (sw, vw) = (s * d, r * d);
        let layout = ProjectionLayout::new(batch, seq, s, r, d);
        let hint = Some("a shorter sequence or a smaller batch");
        let storage = |label: &str, dims: &[usize]| memory::storage(&ctx, label, dims, hint);
        let activations = Activations {
            layer: id,
            config,
            batch,
            seq,
            dropout,
            input: storage("training input", &[tokens, dim])?,
            normed: match config.prenorm {
                true => Some(storage("training normed", &[tokens, dim])?),
                false => None,
            },
            mask: memory::storage_filled(&ctx, "training mask", batch * seq, 1u32)?,
            proj: storage("training projections", &[tokens, layout.row_stride])?,
            qt: storage("training q̃", &[tokens, sw])?,
            stats: storage("training statistics", &[rows, 4])?,
            ret: storage("training retrieved", &[rows, vw])?,
            selection: storage("training selection", &[rows, r])?,
            concat: storage("training concat", &[tokens, sw])?,
            scratch_bytes: Default::default(),
        };
        let commands = forward_commands(&ctx, &activations, parameters, &layout, output).await?;
        Ok(ForwardTrain {
            activations,
            commands,
        })
    }

    /// A training forward: `x [batch, seq, dim]`, `mask [batch, seq]` (`true` = the key may be
    /// attended) → `(y [batch, seq, dim], the activations its backward needs)`.
    ///
    /// Dropout, with the layer's `Config::dropout` probability, is drawn from `dropout_seed`
    /// (SPEC §6.4): the same seed gives the same output on every backend, and the backward
    /// draws the same masks again. With `p = 0` the output is the eval forward's, to f32
    /// rounding. An f16-storage layer and the MLP score network cannot train
    /// ([`Error::TrainingUnsupported`](crate::Error::TrainingUnsupported)).
    pub async fn forward_train(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        dropout_seed: u64,
    ) -> Result<(Vec<f32>, Activations)> {
        let config = *self.config();
        super::check_trainable(&config, self.precision())?;
        shape::check_input(&config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        let ctx = self.context().clone();
        let _serial = ctx.serial().await;
        let len = batch * seq * config.dim;
        let input = memory::storage_init(&ctx, "input", x)?;
        let output = memory::storage(&ctx, "output", &[len], None)?;
        let staging = memory::staging(&ctx, "output readback", 4 * len as u64);
        let mask_words: Option<Vec<u32>> =
            mask.map(|m| m.iter().map(|&allowed| allowed as u32).collect());
        let mask = match &mask_words {
            Some(words) => Some(memory::storage_init(&ctx, "mask", words)?),
            None => None,
        };
        let forward = self
            .build_forward_train(&output, batch, seq, dropout_seed)
            .await?;
        ctx.scoped("forward_train", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("forward_train"),
                    });
            forward.record(&mut encoder, &input, mask.as_ref());
            encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, 4 * len as u64);
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        let y = memory::read_f32_all(&ctx, &[(&staging, len)])
            .await?
            .pop()
            .unwrap_or_default();
        Ok((y, forward.activations))
    }

    /// Blocking [`CompositionalAttention::forward_train`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_train_blocking(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        dropout_seed: u64,
    ) -> Result<(Vec<f32>, Activations)> {
        pollster::block_on(self.forward_train(x, batch, seq, mask, dropout_seed))
    }

    /// Records a training forward into `encoder` on the caller's buffers (the conventions of
    /// [`encode`](Self::encode): f32 `[batch, seq, dim]` input and output, u32 `[batch, seq]`
    /// mask, `STORAGE` usage; `input` and `mask` also need `COPY_SRC`, as they are copied into
    /// the activations). Nothing runs until the caller submits; the activations are valid for
    /// [`encode_backward`](Self::encode_backward) recorded after it. Native only: in a browser
    /// use [`forward_train`](Self::forward_train).
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn encode_forward_train(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        mask: Option<&wgpu::Buffer>,
        output: &wgpu::Buffer,
        batch: usize,
        seq: usize,
        dropout_seed: u64,
    ) -> Result<Activations> {
        let config = *self.config();
        super::check_trainable(&config, self.precision())?;
        shape::check_io_buffers(&config, input, mask, output, batch, seq)?;
        shape::check_copy_source("input", input)?;
        if let Some(mask) = mask {
            shape::check_copy_source("mask", mask)?;
        }
        let ctx = self.context().clone();
        ctx.check_alive("encode_forward_train")?;
        let _serial = pollster::block_on(ctx.serial());
        let forward =
            pollster::block_on(self.build_forward_train(output, batch, seq, dropout_seed))?;
        ctx.scoped_now("encode_forward_train", || {
            forward.record(encoder, input, mask);
            Ok(())
        })?;
        Ok(forward.activations)
    }
}

/// The forward's passes, in data-flow order, writing `output`.
async fn forward_commands(
    ctx: &GpuContext,
    act: &Activations,
    parameters: &DeviceParameters,
    layout: &ProjectionLayout,
    output: &wgpu::Buffer,
) -> Result<Vec<Command>> {
    let config = act.config;
    let (dim, d, s) = (config.dim, config.dim_head, config.num_searches);
    let (tokens, sw) = (act.batch * act.seq, s * d);
    let packs = TexelPacks::new();
    let gemms = Gemms::new(ctx, &packs);
    let mut commands: Vec<Command> = Vec::new();
    // LayerNorm.
    let h = match &act.normed {
        Some(normed) => {
            let gamma = parameters.get(weights::NORM_WEIGHT)?;
            let beta = parameters.get(weights::NORM_BIAS)?;
            commands.push(
                layer_norm::dispatch(
                    ctx,
                    tokens,
                    dim,
                    config.layer_norm_eps,
                    &act.input,
                    (gamma, beta),
                    normed,
                )
                .await?
                .into(),
            );
            normed
        }
        None => &act.input,
    };
    // Projections, each into its columns of `proj`, then its bias.
    let ones = config
        .bias
        .then(|| memory::storage_filled(ctx, "ones", tokens, 1.0f32))
        .transpose()?;
    for (weight, bias, offset, width) in projection_blocks(layout) {
        commands.extend(
            product(
                gemms,
                (tokens, width, dim),
                (h, 0, dim, false),
                (parameters.get(weight)?, 0, dim, true),
                (&act.proj, offset, layout.row_stride),
                false,
            )
            .await?,
        );
        if let Some(ones) = &ones {
            let target = (&act.proj, offset, layout.row_stride, width);
            commands.extend(add_bias(gemms, ones, parameters.get(bias)?, tokens, target).await?);
        }
    }
    let ones_bytes = ones.as_ref().map_or(0, wgpu::Buffer::size);
    // Q̃ = RQ·W_rk, per search.
    let w_rk = parameters.get(weights::RETRIEVAL_KEYS)?;
    for sigma in 0..s {
        commands.extend(
            product(
                gemms,
                (tokens, d, d),
                (
                    &act.proj,
                    layout.retrieval_queries + sigma * d,
                    layout.row_stride,
                    false,
                ),
                (w_rk, 0, d, false),
                (&act.qt, sigma * d, sw),
                false,
            )
            .await?,
        );
    }
    // The attention core.
    let problem = core_problem(act, layout);
    let mut core_scratch = 0;
    match TrainingCore::of(ctx) {
        TrainingCore::PerRow => commands.extend(as_commands(
            attention_train::forward_core(
                ctx, &problem, &act.proj, &act.mask, &act.stats, &act.ret,
            )
            .await?,
        )),
        TrainingCore::Chunked => {
            if let Some(plan) = TrainingCore::blocked_forward(ctx, layout, problem.dropout) {
                commands.extend(blocked_core(ctx, &packs, act, layout, plan).await?);
            } else {
                let core = attention_chunks::forward(
                    ctx,
                    gemms.operands(),
                    &problem,
                    &act.proj,
                    &act.mask,
                    (&act.stats, &act.ret),
                    None,
                )
                .await?;
                core_scratch = core.scratch_bytes;
                commands.extend(core.commands);
            }
        }
    }
    commands.push(
        attention_train::selection_forward(
            ctx,
            &problem,
            &act.ret,
            &act.qt,
            &act.selection,
            &act.concat,
        )
        .await?
        .into(),
    );
    // The output projection.
    commands.extend(
        product(
            gemms,
            (tokens, dim, sw),
            (&act.concat, 0, sw, false),
            (parameters.get(weights::OUT)?, 0, sw, true),
            (output, 0, dim),
            false,
        )
        .await?,
    );
    if let Some(ones) = &ones {
        let bias = parameters.get(weights::OUT_BIAS)?;
        commands.extend(add_bias(gemms, ones, bias, tokens, (output, 0, dim, dim)).await?);
    }
    // The texel copies are scratch too, alive with the attention core's.
    act.record_scratch(ones_bytes + core_scratch + packs.bytes());
    Ok(commands)
}

/// The blocked core of the eval forward writing `act`'s statistics and retrieved values: a
/// texel copy of the projections (the kernel reads texel rows; the backward reads the buffer),
/// the value mean a row with no allowed key retrieves, and the kernel. The copy is scratch
/// (`packs`), the value mean too small to count.
async fn blocked_core(
    ctx: &GpuContext,
    packs: &TexelPacks,
    act: &Activations,
    layout: &ProjectionLayout,
    plan: BlockedPlan,
) -> Result<Vec<Command>> {
    let tokens = act.batch * act.seq;
    let whole = Stored {
        buffer: &act.proj,
        offset: 0,
        stride: layout.row_stride,
    };
    let (proj, copy) = packs
        .pack(ctx, "training proj", (tokens, layout.row_stride), whole)
        .await?;
    let width = layout.retrievals * layout.head;
    let value_mean = memory::storage(ctx, "training value mean", &[act.batch, width], None)?;
    let mean = value_mean::dispatch(
        ctx,
        layout,
        Rows::Texels(&proj),
        Precision::F32,
        &value_mean,
    )
    .await?;
    let config = act.config;
    let attention = blocked_attention::bind_training(
        ctx,
        layout,
        plan,
        (config.scale() as f32, config.causal),
        &proj,
        (&act.mask, &value_mean),
        (&act.stats, &act.ret),
    )
    .await?;
    Ok(vec![copy, mean.into(), attention.into()])
}

/// The attention core's problem for the activations' forward.
pub(super) fn core_problem(act: &Activations, layout: &ProjectionLayout) -> CoreProblem {
    CoreProblem {
        layout: *layout,
        causal: act.config.causal,
        scale: act.config.scale() as f32,
        dropout: Some(act.dropout),
    }
}
