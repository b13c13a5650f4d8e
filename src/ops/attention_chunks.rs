//! The attention core of training for CPU drivers (`shaders/search_chunk_softmax.wgsl`,
//! `shaders/search_chunk_backward.wgsl`, between `matmul`s): the search scores of a chunk of
//! query rows of one (batch, search) as a GEMM, the softmax or its gradient elementwise, and the
//! products with the values, keys and queries as GEMMs again.
//!
//! Why: on lavapipe a kernel's speed comes from register-blocked loops over lane-uniform reads,
//! which a GEMM has and the per-row kernels of `attention_train` (one row per invocation, every
//! step a dot product of private arrays) do not: the per-row dQ and dK/dV kernels ran at about
//! 1 GFLOP/s there, the GEMM at ~20. The chunk's `[rows, n]` scores live in a scratch of at
//! most [`SCRATCH_BYTES`] per buffer, reused chunk after chunk, so a step's memory stays linear in
//! `n` (the kept activations are the same as the per-row kernels': statistics and `Ret`), and
//! dropout's masks are drawn in the elementwise kernels from the same positions.
//!
//! Per (batch b, search σ, chunk of query rows C):
//! ```text
//! forward   S = SQ_C·SK_bᵀ;  softmax → stats, Ã;  Ret_C = Ã·RV_b
//! backward  S = SQ_C·SK_bᵀ;  dA = dRet_C·RV_bᵀ;  → Ã, dL (scaled);
//!           dSQ_C = dL·SK_b;  dSK_b += dLᵀ·SQ_C;  dRV_b += Ãᵀ·dRet_C
//! ```

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Command, Dispatch};
use crate::gpu::memory;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::ops::attention_chunk_texels;
use crate::ops::attention_train::CoreProblem;
use crate::ops::matmul::{self, Operand, Operands, Target, TexelPacks};

static SEARCH_CHUNK_SOFTMAX: Kernel = kernel!(
    "search_chunk_softmax",
    includes: ["philox", "train_params", "train_dropout", "search_weights"]
);
static SEARCH_CHUNK_BACKWARD: Kernel = kernel!(
    "search_chunk_backward",
    includes: ["philox", "train_params", "train_dropout", "search_weights"]
);

const WG: u32 = 64;

/// The most bytes one chunk's scores take (and its gradient again): 16 MiB.
const SCRATCH_BYTES: u64 = 16 << 20;

pub(crate) fn softmax_variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&SEARCH_CHUNK_SOFTMAX)
        .u32("WG", WG)
        .reduction(ctx.reduction())
}

pub(crate) fn backward_variant() -> ShaderVariant {
    ShaderVariant::new(&SEARCH_CHUNK_BACKWARD).u32("WG", WG)
}

/// The most bytes one `[rows, n]` texel matrix of the texel route takes: 8 MiB (its backward
/// keeps two, the weights and the logit gradients, and a third for the dropped weights with
/// dropout; its forward two, the scores and the weights).
const TEXEL_SCRATCH_BYTES: u64 = 8 << 20;

/// Query rows per chunk at sequence length `n` in the buffer route: as many as fit
/// [`SCRATCH_BYTES`] and the device's storage binding size, at least one.
fn chunk_rows(ctx: &GpuContext, n: usize) -> usize {
    let limit = SCRATCH_BYTES.min(ctx.limits().max_storage_buffer_binding_size);
    ((limit / (4 * n.max(1) as u64)) as usize).clamp(1, n.max(1))
}

/// How the chunks run: through texel rows (`ops::attention_chunk_texels`) where the products'
/// operands are texels and a chunk's matrices fit a texture (`attention_chunk_texels::fits`), else through
/// storage buffers; with the query rows per chunk.
fn route<'p>(
    ctx: &GpuContext,
    operands: Operands<'p>,
    n: usize,
    step: Option<usize>,
) -> (Option<&'p TexelPacks>, usize) {
    if let Operands::Texels(packs) = operands {
        let rows = (TEXEL_SCRATCH_BYTES / (4 * n.max(1) as u64)) as usize;
        let rows = step.unwrap_or(rows.clamp(1, n.max(1)));
        if attention_chunk_texels::fits(ctx, rows, n) {
            return (Some(packs), rows);
        }
    }
    (None, step.unwrap_or_else(|| chunk_rows(ctx, n)))
}

/// A chunked core's passes and the bytes of its own scratch buffers (the texel route's live in
/// the caller's `TexelPacks`).
pub(crate) struct ChunkPasses {
    pub commands: Vec<Command>,
    pub scratch_bytes: u64,
}

/// The chunks' scratch for chunks of `rows` query rows: two `[rows, n]` f32 buffers.
fn scratch(ctx: &GpuContext, rows: usize, n: usize) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
    let hint = Some("a shorter sequence");
    Ok((
        memory::storage(ctx, "chunk scores", &[rows, n], hint)?,
        memory::storage(ctx, "chunk score gradients", &[rows, n], hint)?,
    ))
}

fn operand(buffer: &wgpu::Buffer, offset: usize, stride: usize, transposed: bool) -> Operand<'_> {
    Operand {
        buffer,
        offset,
        stride,
        transposed,
    }
}

/// `S = SQ_C·SK_bᵀ` into `scores`.
async fn scores(
    ctx: &GpuContext,
    operands: Operands<'_>,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    (b, sigma, rows): (usize, usize, &std::ops::Range<usize>),
    scores: &wgpu::Buffer,
) -> Result<Vec<Command>> {
    let l = &problem.layout;
    let (q, k, _) = problem.chunk_offsets(b, sigma, rows.start);
    let target = Target {
        buffer: scores,
        offset: 0,
        stride: l.seq,
    };
    matmul::product_commands(
        ctx,
        operands,
        rows.len(),
        l.seq,
        l.head,
        operand(proj, q, l.row_stride, false),
        operand(proj, k, l.row_stride, true),
        target,
        false,
    )
    .await
}

/// The forward: `stats` and `ret` of every row, in chunks of `step` query rows (`None`: as
/// many as the scratch holds).
pub(crate) async fn forward(
    ctx: &GpuContext,
    operands: Operands<'_>,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (stats, ret): (&wgpu::Buffer, &wgpu::Buffer),
    step: Option<usize>,
) -> Result<ChunkPasses> {
    let (texels, step) = route(ctx, operands, problem.layout.seq, step);
    if let Some(packs) = texels {
        let commands =
            attention_chunk_texels::forward(ctx, packs, problem, proj, mask, (stats, ret), step)
                .await?;
        return Ok(ChunkPasses {
            commands,
            scratch_bytes: 0,
        });
    }
    let buffers = scratch(ctx, step, problem.layout.seq)?;
    let scratch = &buffers.0;
    let l = problem.layout;
    let vw = problem.value_width();
    let mut commands = Vec::new();
    for (b, sigma, rows) in problem.chunks(step) {
        commands.extend(scores(ctx, operands, problem, proj, (b, sigma, &rows), scratch).await?);
        let params = problem.chunk_params((b, sigma), rows.clone());
        commands.push(
            Dispatch::new(
                ctx,
                &softmax_variant(ctx),
                bytemuck::bytes_of(&params),
                &[mask.into(), stats.into(), scratch.into()],
                rows.len() as u64,
            )
            .await?
            .into(),
        );
        let (_, _, v) = problem.chunk_offsets(b, sigma, 0);
        let row0 = (b * l.searches + sigma) * l.seq + rows.start;
        commands.extend(
            matmul::product_commands(
                ctx,
                operands,
                rows.len(),
                vw,
                l.seq,
                operand(scratch, 0, l.seq, false),
                operand(proj, v, l.row_stride, false),
                Target {
                    buffer: ret,
                    offset: row0 * vw,
                    stride: vw,
                },
                false,
            )
            .await?,
        );
    }
    Ok(ChunkPasses {
        commands,
        scratch_bytes: buffers.0.size() + buffers.1.size(),
    })
}

/// The backward: dSQ, dSK and dRV into `d_proj`'s columns from `d_ret` and the statistics
/// (with `D` in `stats.z`), in chunks of `step` query rows (`None`: as many as the scratch
/// holds).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn backward(
    ctx: &GpuContext,
    operands: Operands<'_>,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (stats, d_ret): (&wgpu::Buffer, &wgpu::Buffer),
    d_proj: &wgpu::Buffer,
    step: Option<usize>,
) -> Result<ChunkPasses> {
    let (texels, step) = route(ctx, operands, problem.layout.seq, step);
    if let Some(packs) = texels {
        let commands = attention_chunk_texels::backward(
            ctx,
            packs,
            problem,
            proj,
            mask,
            (stats, d_ret),
            d_proj,
            step,
        )
        .await?;
        return Ok(ChunkPasses {
            commands,
            scratch_bytes: 0,
        });
    }
    let buffers = scratch(ctx, step, problem.layout.seq)?;
    let (scratch, d_scratch) = (&buffers.0, &buffers.1);
    let l = problem.layout;
    let (n, d, vw, rs) = (l.seq, l.head, problem.value_width(), l.row_stride);
    let mut commands = Vec::new();
    for (b, sigma, rows) in problem.chunks(step) {
        let (q, k, v) = problem.chunk_offsets(b, sigma, rows.start);
        let row0 = (b * l.searches + sigma) * n + rows.start;
        let c = rows.len();
        commands.extend(scores(ctx, operands, problem, proj, (b, sigma, &rows), scratch).await?);
        // dA = dRet_C·RV_bᵀ.
        commands.extend(
            matmul::product_commands(
                ctx,
                operands,
                c,
                n,
                vw,
                operand(d_ret, row0 * vw, vw, false),
                operand(proj, v, rs, true),
                Target {
                    buffer: d_scratch,
                    offset: 0,
                    stride: n,
                },
                false,
            )
            .await?,
        );
        let params = problem.chunk_params((b, sigma), rows.clone());
        commands.push(
            Dispatch::new(
                ctx,
                &backward_variant(),
                bytemuck::bytes_of(&params),
                &[mask.into(), stats.into(), scratch.into(), d_scratch.into()],
                ((c * n) as u64).div_ceil(WG as u64),
            )
            .await?
            .into(),
        );
        let target = |offset| Target {
            buffer: d_proj,
            offset,
            stride: rs,
        };
        // dSQ_C = dL·SK_b (each query row's once).
        commands.extend(
            matmul::product_commands(
                ctx,
                operands,
                c,
                d,
                n,
                operand(d_scratch, 0, n, false),
                operand(proj, k, rs, false),
                target(q),
                false,
            )
            .await?,
        );
        // dSK_b += dLᵀ·SQ_C (the first chunk of (b, σ) writes).
        commands.extend(
            matmul::product_commands(
                ctx,
                operands,
                n,
                d,
                c,
                operand(d_scratch, 0, n, true),
                operand(proj, q, rs, false),
                target(k),
                rows.start > 0,
            )
            .await?,
        );
        // dRV_b += Ãᵀ·dRet_C, summed over every search and chunk (the first of b writes).
        commands.extend(
            matmul::product_commands(
                ctx,
                operands,
                n,
                vw,
                c,
                operand(scratch, 0, n, true),
                operand(d_ret, row0 * vw, vw, false),
                target(v),
                sigma > 0 || rows.start > 0,
            )
            .await?,
        );
    }
    Ok(ChunkPasses {
        commands,
        scratch_bytes: buffers.0.size() + buffers.1.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::Dropout;
    use crate::gpu::test_device::*;
    use crate::ops::ProjectionLayout;
    use crate::testing::normal;

    /// Chunks of 5 query rows give what one chunk of every row gives (forward and backward, with
    /// dropout, causal and a padded batch): the chunk offsets, and the accumulation of dSK and
    /// dRV over chunks and searches. One chunk is checked against the f64 reference through
    /// the whole layer (tests/training.rs).
    #[test]
    fn chunks_of_a_few_rows_equal_one_chunk() {
        let (mut rng, what) = rng("attention_chunks");
        let layout = ProjectionLayout::new(2, 13, 3, 2, 4);
        let problem = CoreProblem {
            layout,
            causal: true,
            scale: 0.5,
            dropout: Some(Dropout::new(0.25, 99).unwrap()),
        };
        let tokens = layout.batch * layout.seq;
        let rows = tokens * layout.searches;
        let vw = problem.value_width();
        let proj = upload(&normal(&mut rng, tokens * layout.row_stride, 1.0));
        let mask: Vec<u32> = (0..tokens)
            .map(|t| u32::from(t % 13 < 9 || t < 13))
            .collect();
        let mask = upload(&mask);
        let d_ret = upload(&normal(&mut rng, rows * vw, 1.0));
        let run_with = |step: usize, operands: Operands<'_>| {
            let (stats, ret) = (poisoned(rows * 4), poisoned(rows * vw));
            let d_proj = poisoned(tokens * layout.row_stride);
            let forward = build(forward(
                context(),
                operands,
                &problem,
                &proj,
                &mask,
                (&stats, &ret),
                Some(step),
            ))
            .commands;
            run_commands(&forward);
            // A row term D of its own, as the selection's backward would write it.
            let mut row_stats = download(&stats, rows * 4);
            for (index, row) in row_stats.chunks_exact_mut(4).enumerate() {
                row[2] = 0.1 * (index % 7) as f32 - 0.3;
            }
            let stats = upload(&row_stats);
            let backward = build(backward(
                context(),
                operands,
                &problem,
                &proj,
                &mask,
                (&stats, &d_ret),
                &d_proj,
                Some(step),
            ))
            .commands;
            run_commands(&backward);
            (
                download(&ret, rows * vw),
                row_stats,
                download(&d_proj, tokens * layout.row_stride),
            )
        };
        let (ret, stats, d_proj) = run_with(layout.seq, Operands::Buffers);
        // Chunks of 5 through the buffers, and through texel copies where texel loads work.
        let packs = matmul::TexelPacks::new();
        let mut routes = vec![("buffers", Operands::Buffers)];
        if context().texel_loads_work() {
            routes.push(("texels", Operands::Texels(&packs)));
        }
        for (route, operands) in routes {
            let what = format!("{what}, {route}");
            let (ret5, stats5, d_proj5) = run_with(5, operands);
            let widen = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
            assert_close(&format!("{what}: ret"), &ret5, &widen(&ret), 1e-6);
            assert_close(&format!("{what}: stats"), &stats5, &widen(&stats), 1e-6);
            // d_proj's RQ columns are the selection backward's, not written here.
            let written = |v: &[f32]| -> Vec<f32> {
                v.chunks_exact(layout.row_stride)
                    .flat_map(|row| {
                        row[..layout.retrieval_queries]
                            .iter()
                            .chain(&row[layout.retrieval_values..])
                            .copied()
                    })
                    .collect()
            };
            assert_close(
                &format!("{what}: d_proj"),
                &written(&d_proj5),
                &widen(&written(&d_proj)),
                1e-5,
            );
        }
    }
}
