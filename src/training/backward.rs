//! The backward: the forward's data flow in reverse, output → selection → retrieval → search →
//! projections → LayerNorm → input, adding every parameter's gradient to [`Gradients`] and
//! writing the input's.
//!
//! Per step (SPEC §6.5 writes the math out):
//! 1. `d_concat = dy·W_o`, `dW_o += dyᵀ·concat`, `db_o += Σ dy` (matmuls; a column sum is the
//!    product `ones [1, rows]·X`, small beside the GEMMs that make `X`);
//! 2. the per-row selection pass: `dRet`, `dQ̃` and the row term `D` (attention_train);
//! 3. the dQ pass over keys and the dK/dV pass over queries into `d_proj`'s SQ, SK and RV
//!    columns (attention_train);
//! 4. `dRQ = dQ̃·W_rkᵀ` into `d_proj`'s RQ columns and `dW_rk += Σ_σ RQ_σᵀ·dQ̃_σ`: the fold of
//!    `W_rk` into the selection's queries taken back to the two named tensors;
//! 5. per projection `dW += dPᵀ·h`, `db += Σ dP`, and `dh = Σ dP·W`;
//! 6. with `prenorm`, LayerNorm's backward: `dx`, `dγ += Σ dh ⊙ x̂`, `dβ += Σ dh`.

use crate::device_parameters::DeviceParameters;
use crate::error::{Error, Result};
use crate::gpu::dispatch::{Command, as_commands, record_commands};
use crate::gpu::{GpuContext, memory};
use crate::io;
use crate::layer::CompositionalAttention;
use crate::ops::matmul::TexelPacks;
use crate::ops::{ProjectionLayout, attention_chunks, attention_train, layer_norm_backward};
use crate::plan::TrainingCore;
#[cfg(not(target_arch = "wasm32"))]
use crate::shape;
use crate::weights;

use super::forward::{Gemms, core_problem, product, projection_blocks};
use super::{Activations, Gradients};

/// A backward's scratch buffers and passes.
pub(super) struct BackwardPasses {
    commands: Vec<Command>,
}

impl CompositionalAttention {
    /// Checks that `act` and `grads` belong to this layer.
    fn check_training_objects(&self, act: &Activations, grads: &Gradients) -> Result<()> {
        if act.layer != self.id() {
            return Err(Error::TrainingMismatch(
                "these activations come from another layer's forward_train".into(),
            ));
        }
        grads.check_layer(self)
    }

    pub(super) async fn build_backward(
        &mut self,
        act: &Activations,
        grad_output: &wgpu::Buffer,
        grad_input: &wgpu::Buffer,
        grads: &Gradients,
    ) -> Result<BackwardPasses> {
        self.check_training_objects(act, grads)?;
        let ctx = self.context().clone();
        let parameters = self.device_parameters()?;
        let commands = backward_commands(
            &ctx,
            act,
            parameters,
            grad_output,
            grad_input,
            &grads.buffers,
        )
        .await?;
        Ok(BackwardPasses { commands })
    }

    /// The backward of the forward that made `act`, for the loss whose gradient with respect
    /// to the output is `dy [batch, seq, dim]`: adds `dL/dθ` to `grads` (`grads += dL/dθ`, so
    /// several backward passes accumulate until [`Gradients::zero`]) and returns
    /// `dL/dx [batch, seq, dim]`. The dropout masks are the forward's, drawn again from its
    /// seed.
    pub async fn backward(
        &mut self,
        act: &Activations,
        dy: &[f32],
        grads: &mut Gradients,
    ) -> Result<Vec<f32>> {
        let len = act.batch * act.seq * act.config.dim;
        if dy.len() != len {
            return Err(Error::shape(
                "grad_output",
                &[act.batch, act.seq, act.config.dim],
                &[dy.len()],
            ));
        }
        io::check_finite("grad_output", dy)?;
        let ctx = self.context().clone();
        let _serial = ctx.serial().await;
        let grad_output = memory::storage_init(&ctx, "grad_output", dy)?;
        let grad_input = memory::storage(&ctx, "grad_input", &[len], None)?;
        let staging = memory::staging(&ctx, "grad_input readback", 4 * len as u64);
        let passes = self
            .build_backward(act, &grad_output, &grad_input, grads)
            .await?;
        ctx.scoped("backward", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("backward"),
                    });
            record_commands(&mut encoder, "backward", &passes.commands);
            encoder.copy_buffer_to_buffer(&grad_input, 0, &staging, 0, 4 * len as u64);
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        Ok(memory::read_f32_all(&ctx, &[(&staging, len)])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// Blocking [`CompositionalAttention::backward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_blocking(
        &mut self,
        act: &Activations,
        dy: &[f32],
        grads: &mut Gradients,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.backward(act, dy, grads))
    }

    /// Records the backward into `encoder` on the caller's buffers: `grad_output` and
    /// `grad_input` are f32 `[batch, seq, dim]` with `STORAGE` usage (`grad_input` is written,
    /// `grad_output` only read; they must differ). Nothing runs until the caller submits,
    /// after the forward that made `act`. Native only: in a browser use
    /// [`backward`](Self::backward).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_backward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        act: &Activations,
        grad_output: &wgpu::Buffer,
        grad_input: &wgpu::Buffer,
        grads: &mut Gradients,
    ) -> Result<()> {
        let config = *self.config();
        self.check_training_objects(act, grads)?;
        shape::check_tensor_buffer(&config, "grad_output", grad_output, act.batch, act.seq)?;
        shape::check_tensor_buffer(&config, "grad_input", grad_input, act.batch, act.seq)?;
        if grad_output == grad_input {
            return Err(Error::IoBuffer {
                name: "grad_input",
                problem: "is also grad_output; the backward reads grad_output after it starts \
                          writing grad_input, so they must be two buffers"
                    .into(),
            });
        }
        let ctx = self.context().clone();
        ctx.check_alive("encode_backward")?;
        let _serial = pollster::block_on(ctx.serial());
        let passes = pollster::block_on(self.build_backward(act, grad_output, grad_input, grads))?;
        ctx.scoped_now("encode_backward", || {
            record_commands(encoder, "backward", &passes.commands);
            Ok(())
        })
    }
}

/// `out [cols] += Σ_r x[offset + r·stride + c]` for `r < rows`: the product `ones [1, rows]·x`.
#[allow(clippy::too_many_arguments)]
async fn column_sums(
    gemms: Gemms<'_>,
    ones: &wgpu::Buffer,
    rows: usize,
    cols: usize,
    x: (&wgpu::Buffer, usize, usize),
    out: &wgpu::Buffer,
    out_offset: usize,
    accumulate: bool,
) -> Result<Vec<Command>> {
    product(
        gemms,
        (1, cols, rows),
        (ones, 0, rows, false),
        (x.0, x.1, x.2, false),
        (out, out_offset, cols),
        accumulate,
    )
    .await
}

/// The backward's passes in data-flow order (reversed), adding to `grads` and writing
/// `grad_input`.
async fn backward_commands(
    ctx: &GpuContext,
    act: &Activations,
    parameters: &DeviceParameters,
    grad_output: &wgpu::Buffer,
    grad_input: &wgpu::Buffer,
    grads: &DeviceParameters,
) -> Result<Vec<Command>> {
    let config = act.config;
    let (dim, d, s, r) = (
        config.dim,
        config.dim_head,
        config.num_searches,
        config.num_retrievals,
    );
    let (tokens, rows, sw) = (act.batch * act.seq, act.batch * s * act.seq, s * d);
    let layout = ProjectionLayout::new(act.batch, act.seq, s, r, d);
    let hint = Some("a shorter sequence or a smaller batch");
    let storage = |label: &str, dims: &[usize]| memory::storage(ctx, label, dims, hint);
    let d_concat = storage("d_concat", &[tokens, sw])?;
    let d_ret = storage("d_ret", &[rows, r * d])?;
    let d_qt = storage("d_qt", &[tokens, sw])?;
    let d_proj = storage("d_proj", &[tokens, layout.row_stride])?;
    let d_h = match config.prenorm {
        true => Some(storage("d_h", &[tokens, dim])?),
        false => None,
    };
    let ones = memory::storage_filled(ctx, "ones", tokens, 1.0f32)?;
    // The bytes this backward allocates for itself, beside the activations and gradients.
    let mut scratch_bytes = [&d_concat, &d_ret, &d_qt, &d_proj, &ones]
        .iter()
        .map(|b| b.size())
        .sum::<u64>()
        + d_h.as_ref().map_or(0, wgpu::Buffer::size);
    let packs = TexelPacks::new();
    let gemms = Gemms::new(ctx, &packs);
    let mut commands: Vec<Command> = Vec::new();

    // 1. The output projection.
    let w_o = parameters.get(weights::OUT)?;
    commands.extend(
        product(
            gemms,
            (tokens, sw, dim),
            (grad_output, 0, dim, false),
            (w_o, 0, sw, false),
            (&d_concat, 0, sw),
            false,
        )
        .await?,
    );
    commands.extend(
        product(
            gemms,
            (dim, sw, tokens),
            (grad_output, 0, dim, true),
            (&act.concat, 0, sw, false),
            (grads.get(weights::OUT)?, 0, sw),
            true,
        )
        .await?,
    );
    if config.bias {
        let out_bias = grads.get(weights::OUT_BIAS)?;
        commands.extend(
            column_sums(
                gemms,
                &ones,
                tokens,
                dim,
                (grad_output, 0, dim),
                out_bias,
                0,
                true,
            )
            .await?,
        );
    }

    // 2–3. Selection, retrieval and search.
    let problem = core_problem(act, &layout);
    commands.push(
        attention_train::selection_backward(
            ctx,
            &problem,
            &d_concat,
            &act.ret,
            &act.selection,
            &act.qt,
            &d_ret,
            &d_qt,
            &act.stats,
        )
        .await?
        .into(),
    );
    match TrainingCore::of(ctx) {
        TrainingCore::PerRow => commands.extend(as_commands(
            attention_train::search_backward(
                ctx, &problem, &act.proj, &act.mask, &act.stats, &d_ret, &d_proj,
            )
            .await?,
        )),
        TrainingCore::Chunked => {
            let core = attention_chunks::backward(
                ctx,
                gemms.operands(),
                &problem,
                &act.proj,
                &act.mask,
                (&act.stats, &d_ret),
                &d_proj,
                None,
            )
            .await?;
            scratch_bytes += core.scratch_bytes;
            commands.extend(core.commands);
        }
    }

    // 4. Q̃ = RQ·W_rk back to RQ and W_rk, per search.
    let w_rk = parameters.get(weights::RETRIEVAL_KEYS)?;
    let g_rk = grads.get(weights::RETRIEVAL_KEYS)?;
    for sigma in 0..s {
        let rq_columns = layout.retrieval_queries + sigma * d;
        commands.extend(
            product(
                gemms,
                (tokens, d, d),
                (&d_qt, sigma * d, sw, false),
                (w_rk, 0, d, true),
                (&d_proj, rq_columns, layout.row_stride),
                false,
            )
            .await?,
        );
        commands.extend(
            product(
                gemms,
                (d, d, tokens),
                (&act.proj, rq_columns, layout.row_stride, true),
                (&d_qt, sigma * d, sw, false),
                (g_rk, 0, d),
                true,
            )
            .await?,
        );
    }

    // 5. The projections: weights, biases, and the gradient of their input.
    let h = act.normed.as_ref().unwrap_or(&act.input);
    let d_h_target = d_h.as_ref().unwrap_or(grad_input);
    for (index, (weight, bias, offset, width)) in projection_blocks(&layout).into_iter().enumerate()
    {
        commands.extend(
            product(
                gemms,
                (width, dim, tokens),
                (&d_proj, offset, layout.row_stride, true),
                (h, 0, dim, false),
                (grads.get(weight)?, 0, dim),
                true,
            )
            .await?,
        );
        if config.bias {
            commands.extend(
                column_sums(
                    gemms,
                    &ones,
                    tokens,
                    width,
                    (&d_proj, offset, layout.row_stride),
                    grads.get(bias)?,
                    0,
                    true,
                )
                .await?,
            );
        }
        commands.extend(
            product(
                gemms,
                (tokens, dim, width),
                (&d_proj, offset, layout.row_stride, false),
                (parameters.get(weight)?, 0, dim, false),
                (d_h_target, 0, dim),
                index > 0,
            )
            .await?,
        );
    }

    // 6. LayerNorm.
    if let Some(d_h) = &d_h {
        let scaled = storage("d_h ⊙ x̂", &[tokens, dim])?;
        scratch_bytes += scaled.size();
        commands.push(
            layer_norm_backward::dispatch(
                ctx,
                tokens,
                dim,
                config.layer_norm_eps,
                &act.input,
                parameters.get(weights::NORM_WEIGHT)?,
                d_h,
                (grad_input, &scaled),
            )
            .await?
            .into(),
        );
        let (g_gamma, g_beta) = (
            grads.get(weights::NORM_WEIGHT)?,
            grads.get(weights::NORM_BIAS)?,
        );
        commands.extend(
            column_sums(
                gemms,
                &ones,
                tokens,
                dim,
                (&scaled, 0, dim),
                g_gamma,
                0,
                true,
            )
            .await?,
        );
        commands
            .extend(column_sums(gemms, &ones, tokens, dim, (d_h, 0, dim), g_beta, 0, true).await?);
    }
    act.record_scratch(scratch_bytes + packs.bytes());
    Ok(commands)
}
