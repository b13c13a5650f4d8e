//! Training's chunked attention core with its `[rows, n]` matrices as texel rows
//! (`shaders/search_chunk_softmax_texels.wgsl`, `shaders/search_chunk_backward_texels.wgsl`,
//! between texel GEMMs): the route `ops::attention_chunks` takes where texel loads work.
//!
//! Why: the buffer route's elementwise kernels read and write the chunk's scores in storage
//! buffers, and its GEMMs then copied them into texels, the large ones transposed. On lavapipe
//! that traffic cost as much as the GEMMs (BENCHMARKS.md). Here the score GEMMs write texel
//! rows, the elementwise kernels read texels and write the texel rows the next GEMMs read, the
//! backward's kernel writes the two transposes itself (as 4 × 4 blocks), and only the small
//! `[rows, d]` and `[n, d]` operands are copied from the projections.
//!
//! Per (batch b, search σ, chunk of query rows C), with `ᵀ` where a texel matrix is stored
//! transposed (the texel GEMM computes `lhs·rhsᵀ`):
//! ```text
//! forward   S = SQ_C·SK_bᵀ;  softmax → stats, Ã;  Ret_C = Ã·(RV_bᵀ)ᵀ
//! backward  S = SQ_C·SK_bᵀ;  dA = dRet_C·RV_bᵀ;  → dL, Ãᵀ, dLᵀ;
//!           dSQ_C = dL·(SK_bᵀ)ᵀ;  dSK_b += dLᵀ·(SQ_Cᵀ)ᵀ;  dRV_b += Ãᵀ·(dRet_Cᵀ)ᵀ
//! ```

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::ops::Rows;
use crate::ops::attention_train::CoreProblem;
use crate::ops::gemm::OutBlock;
use crate::ops::matmul::{self, Operand, TexelPacks};

static SOFTMAX_TEXELS: Kernel = kernel!(
    "search_chunk_softmax_texels",
    includes: ["philox", "train_params", "search_weights", "workgroup_reduce", "texel_rows"]
);
static BACKWARD_TEXELS: Kernel = kernel!(
    "search_chunk_backward_texels",
    includes: ["philox", "train_params", "search_weights", "texel_rows"]
);

const WG: u32 = 64;

pub(crate) fn softmax_variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&SOFTMAX_TEXELS)
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
}

pub(crate) fn backward_variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&BACKWARD_TEXELS)
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
}

/// Whether chunks of `step` rows over `n` keys fit texel rows on this device, both ways round.
pub(crate) fn fits(ctx: &GpuContext, step: usize, n: usize) -> bool {
    matmul::fits(ctx, step, n) && matmul::fits(ctx, n, step)
}

fn plain(buffer: &wgpu::Buffer, offset: usize, stride: usize) -> Operand<'_> {
    Operand {
        buffer,
        offset,
        stride,
        transposed: false,
    }
}

fn transposed(buffer: &wgpu::Buffer, offset: usize, stride: usize) -> Operand<'_> {
    Operand {
        transposed: true,
        ..plain(buffer, offset, stride)
    }
}

/// A whole texel output, or a buffer block `[.., stride]` from `offset`.
fn block(offset: usize, stride: usize, accumulate: bool) -> OutBlock {
    OutBlock {
        offset,
        stride,
        accumulate,
    }
}

/// `S = SQ_C·SK_bᵀ` into the `scores` texels of `[c, n]`.
async fn scores(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    (b, sigma, rows): (usize, usize, &std::ops::Range<usize>),
) -> Result<(TexelRows, Vec<Dispatch>)> {
    let l = &problem.layout;
    let (n, d, rs, c) = (l.seq, l.head, l.row_stride, rows.len());
    let (q, k, _) = problem.chunk_offsets(b, sigma, rows.start);
    let (sq, copy_q) = packs
        .pack(ctx, "chunk SQ", (c, d), plain(proj, q, rs))
        .await?;
    let (sk, copy_k) = packs
        .pack(ctx, "chunk SK", (n, d), plain(proj, k, rs))
        .await?;
    let scores = packs.texels(ctx, "chunk scores", c, n)?;
    let mut dispatches = vec![copy_q, copy_k];
    let whole = block(0, n, false);
    dispatches.extend(matmul::texel_product(ctx, &sq, &sk, Rows::Texels(&scores), whole).await?);
    Ok((scores, dispatches))
}

/// The forward: `stats` and `ret` of every row, in chunks of `step` query rows.
pub(crate) async fn forward(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (stats, ret): (&wgpu::Buffer, &wgpu::Buffer),
    step: usize,
) -> Result<Vec<Dispatch>> {
    let l = problem.layout;
    let (n, vw, rs) = (l.seq, problem.value_width(), l.row_stride);
    let mut dispatches = Vec::new();
    for (b, sigma, rows) in problem.chunks(step) {
        let c = rows.len();
        let (_, _, v) = problem.chunk_offsets(b, sigma, rows.start);
        let row0 = (b * l.searches + sigma) * n + rows.start;
        let (scores, score_dispatches) =
            scores(ctx, packs, problem, proj, (b, sigma, &rows)).await?;
        dispatches.extend(score_dispatches);
        let weights = packs.texels(ctx, "chunk weights", c, n)?;
        let params = problem.chunk_params((b, sigma), rows.clone());
        dispatches.push(
            Dispatch::new(
                ctx,
                &softmax_variant(ctx),
                bytemuck::bytes_of(&params),
                &[
                    mask.into(),
                    stats.into(),
                    scores.view().into(),
                    weights.view().into(),
                ],
                c as u64,
            )
            .await?,
        );
        // Ret_C = Ã·RV_b, with RV_bᵀ [vw, n] as the right operand's rows.
        let (rv_t, copy_v) = packs
            .pack(ctx, "chunk RVᵀ", (vw, n), transposed(proj, v, rs))
            .await?;
        dispatches.push(copy_v);
        let out = Rows::Buffer(ret.into());
        let ret_block = block(row0 * vw, vw, false);
        dispatches.extend(matmul::texel_product(ctx, &weights, &rv_t, out, ret_block).await?);
    }
    Ok(dispatches)
}

/// The backward: dSQ, dSK and dRV into `d_proj`'s columns from `d_ret` and the statistics
/// (with `D` in `stats.z`), in chunks of `step` query rows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn backward(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (stats, d_ret): (&wgpu::Buffer, &wgpu::Buffer),
    d_proj: &wgpu::Buffer,
    step: usize,
) -> Result<Vec<Dispatch>> {
    let l = problem.layout;
    let (n, d, vw, rs) = (l.seq, l.head, problem.value_width(), l.row_stride);
    let mut dispatches = Vec::new();
    for (b, sigma, rows) in problem.chunks(step) {
        let c = rows.len();
        let (q, k, v) = problem.chunk_offsets(b, sigma, rows.start);
        let row0 = (b * l.searches + sigma) * n + rows.start;
        let (scores, score_dispatches) =
            scores(ctx, packs, problem, proj, (b, sigma, &rows)).await?;
        dispatches.extend(score_dispatches);
        // dA = dRet_C·RV_bᵀ.
        let d_ret_rows = plain(d_ret, row0 * vw, vw);
        let (d_ret_c, copy_dr) = packs.pack(ctx, "chunk dRet", (c, vw), d_ret_rows).await?;
        let (rv, copy_v) = packs
            .pack(ctx, "chunk RV", (n, vw), plain(proj, v, rs))
            .await?;
        let d_weights = packs.texels(ctx, "chunk dA", c, n)?;
        dispatches.extend([copy_dr, copy_v]);
        let whole = block(0, n, false);
        dispatches.extend(
            matmul::texel_product(ctx, &d_ret_c, &rv, Rows::Texels(&d_weights), whole).await?,
        );
        // dL, Ãᵀ and dLᵀ.
        let d_logits = packs.texels(ctx, "chunk dL", c, n)?;
        let weights_t = packs.texels(ctx, "chunk Ãᵀ", n, c)?;
        let d_logits_t = packs.texels(ctx, "chunk dLᵀ", n, c)?;
        let params = problem.chunk_params((b, sigma), rows.clone());
        let blocks = (c.div_ceil(4) * n.div_ceil(4)) as u64;
        dispatches.push(
            Dispatch::new(
                ctx,
                &backward_variant(ctx),
                bytemuck::bytes_of(&params),
                &[
                    mask.into(),
                    stats.into(),
                    scores.view().into(),
                    d_weights.view().into(),
                    d_logits.view().into(),
                    weights_t.view().into(),
                    d_logits_t.view().into(),
                ],
                blocks.div_ceil(WG as u64),
            )
            .await?,
        );
        let out = || Rows::Buffer(d_proj.into());
        // dSQ_C = dL·SK_b (each query row's once), SK_bᵀ [d, n] as the right operand's rows.
        let (sk_t, copy_k) = packs
            .pack(ctx, "chunk SKᵀ", (d, n), transposed(proj, k, rs))
            .await?;
        dispatches.push(copy_k);
        dispatches.extend(
            matmul::texel_product(ctx, &d_logits, &sk_t, out(), block(q, rs, false)).await?,
        );
        // dSK_b += dLᵀ·SQ_C (the first chunk of (b, σ) writes), SQ_Cᵀ [d, c].
        let (sq_t, copy_q) = packs
            .pack(ctx, "chunk SQᵀ", (d, c), transposed(proj, q, rs))
            .await?;
        dispatches.push(copy_q);
        let dsk = block(k, rs, rows.start > 0);
        dispatches.extend(matmul::texel_product(ctx, &d_logits_t, &sq_t, out(), dsk).await?);
        // dRV_b += Ãᵀ·dRet_C, summed over every search and chunk (the first of b writes),
        // dRet_Cᵀ [vw, c].
        let d_ret_t = transposed(d_ret, row0 * vw, vw);
        let (d_ret_ct, copy_drt) = packs.pack(ctx, "chunk dRetᵀ", (vw, c), d_ret_t).await?;
        dispatches.push(copy_drt);
        let drv = block(v, rs, sigma > 0 || rows.start > 0);
        dispatches.extend(matmul::texel_product(ctx, &weights_t, &d_ret_ct, out(), drv).await?);
    }
    Ok(dispatches)
}
