//! Training's chunked attention core with its `[rows, n]` matrices as texel rows
//! (`shaders/search_chunk_softmax_texels.wgsl` between texel GEMMs in the forward; the backward's
//! texel GEMMs with epilogues, `shaders/io/gemm_out_search_weights.wgsl` and
//! `shaders/io/gemm_out_logit_grads.wgsl`): the route `ops::attention_chunks` takes where texel
//! loads work.
//!
//! Why: the buffer route's elementwise kernels read and write the chunk's scores in storage
//! buffers, and its GEMMs then copied them into texels, the large ones transposed. On lavapipe
//! that traffic cost as much as the GEMMs (BENCHMARKS.md). Here the score GEMMs write texel
//! rows, and only the `[rows, d]`, `[rows, r·d]`, `[n, d]` and `[n, r·d]` operands are copied
//! from the projections and `dRet`: `SK_b` once per (batch, search) and `RV_b` once per batch.
//! Where a product needs the transpose of a matrix (`Ã·RV_b`, `dLᵀ·SQ_C`, `Ãᵀ·dRet_C`,
//! `dL·SK_b`), the texel GEMM reads the stored matrix transposed ([`TexelOperand::Transposed`]):
//! writing `dLᵀ` and `Ãᵀ` was once half of the backward's elementwise time on lavapipe, with
//! transposing copies of `SK_b`, `SQ_C` and `dRet_C` beside them. In the backward, the score
//! product stores the weights `A` and the `dA` product the logit gradients `dL` through their
//! epilogues, so neither `S` nor `dA` is ever stored and no elementwise kernel reads them back
//! (ARCHITECTURE decision 17).
//!
//! Per (batch b, search σ, chunk of query rows C); the texel GEMM computes `lhs·rhsᵀ`, `[X]ᵀ`
//! marks an operand it reads from the stored `X`, and `weights(·)`, `grads(·)` the backward's two
//! epilogues:
//! ```text
//! forward   S = SQ_C·SK_bᵀ;  softmax → stats, Ã;  Ret_C = Ã·[RV_b]ᵀᵀ
//! backward  A = weights(SQ_C·SK_bᵀ);  dL, Ã = grads(dRet_C·RV_bᵀ, A)   (Ã = A without dropout);
//!           dSQ_C = dL·[SK_b]ᵀᵀ;  dSK_b += [dL]ᵀ·[SQ_C]ᵀᵀ;  dRV_b += [Ã]ᵀ·[dRet_C]ᵀᵀ
//! ```
//!
//! Measured (BENCHMARKS.md, "The backward's epilogues"): the two epilogues against the two
//! plain GEMMs and the elementwise kernel they replace, 2–14 % less time in the core on lavapipe:
//! an epilogue's arithmetic costs there about what the elementwise kernel's did, and what it
//! saves is the `[c, n]` round trips of `S` and `dA`. Measured and not kept: one kernel
//! computing `S` and `dA` and the elementwise step as their epilogue ran 1.5× slower than the
//! two GEMMs and the elementwise kernel on lavapipe.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Command, Dispatch, as_commands};
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, kernel, piece};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::ops::Rows;
use crate::ops::attention_train::CoreProblem;
use crate::ops::gemm::{self, OutBlock, TexelEpilogue, TexelOperand};
use crate::ops::matmul::{self, Stored, TexelPacks};

static SOFTMAX_TEXELS: Kernel = kernel!(
    "search_chunk_softmax_texels",
    includes: ["philox", "train_params", "train_dropout", "search_weights", "texel_rows"]
);
static SEARCH_WEIGHTS_OUT: Piece = piece!("gemm_out_search_weights", includes: ["search_weights"]);
static LOGIT_GRADS_OUT: Piece =
    piece!("gemm_out_logit_grads", includes: ["philox", "train_dropout"]);
static DROPPED_TEXELS: Piece = piece!("gemm_out_dropped_texels");
static DROPPED_NONE: Piece = piece!("gemm_out_dropped_none");

const WG: u32 = 64;

pub(crate) fn softmax_variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&SOFTMAX_TEXELS)
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
        .reduction(ctx.reduction())
}

/// The pieces of the backward's two epilogue products: the score product's (search weights) and
/// the `dA` product's (logit gradients, storing the dropped weights where `drops`).
fn epilogue_pieces(drops: bool) -> [&'static [&'static Piece]; 2] {
    static WEIGHTS: [&Piece; 1] = [&SEARCH_WEIGHTS_OUT];
    static GRADS_DROPPING: [&Piece; 2] = [&LOGIT_GRADS_OUT, &DROPPED_TEXELS];
    static GRADS: [&Piece; 2] = [&LOGIT_GRADS_OUT, &DROPPED_NONE];
    [&WEIGHTS, if drops { &GRADS_DROPPING } else { &GRADS }]
}

/// Every variant of the backward's epilogue products (`ops` checks their parameter blocks).
#[cfg(test)]
pub(crate) fn epilogue_variants(ctx: &GpuContext) -> Vec<ShaderVariant> {
    // Training's texel rows are f32.
    let read = ctx.texel_read_for(crate::precision::Precision::F32);
    [false, true]
        .into_iter()
        .flat_map(epilogue_pieces)
        .map(|pieces| gemm::texel_epilogue_variant(ctx, pieces, (false, false), (read, read)))
        .collect()
}

/// Whether chunks of `step` rows over `n` keys fit texel rows on this device. The `[n, step]`
/// check is conservative since no `[n, step]` matrix is made any more (the GEMM reads
/// transposes in place): it stands in for the `[n, d]` and `[n, r·d]` copies, which need `n`
/// rows.
pub(crate) fn fits(ctx: &GpuContext, step: usize, n: usize) -> bool {
    matmul::fits(ctx, step, n) && matmul::fits(ctx, n, step)
}

fn plain(buffer: &wgpu::Buffer, offset: usize, stride: usize) -> Stored<'_> {
    Stored {
        buffer,
        offset,
        stride,
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

/// The texel copies of a chunk's queries `SQ_C [c, d]` and its keys `SK_b [n, d]`.
struct ChunkSearch {
    sq: TexelRows,
    sk: TexelRows,
}

/// A chunk: batch `b`, search `σ`, its query rows.
type Chunk<'r> = (usize, usize, &'r std::ops::Range<usize>);

/// The texel rows of `slot` `[rows, cols]`, copied from `source` by the chunk for which `first`
/// holds (the copy goes onto `commands`); the later chunks find them in their texture, which
/// no other product writes.
async fn copied_once(
    ctx: &GpuContext,
    packs: &TexelPacks,
    slot: &'static str,
    (rows, cols): (usize, usize),
    source: Stored<'_>,
    first: bool,
    commands: &mut Vec<Command>,
) -> Result<TexelRows> {
    if !first {
        return packs.texels(ctx, slot, rows, cols);
    }
    let (texels, copy) = packs.pack(ctx, slot, (rows, cols), source).await?;
    commands.push(copy);
    Ok(texels)
}

/// `RV_b [n, r·d]` as texel rows, copied by the first chunk of batch `b`.
async fn batch_values(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    (b, sigma, rows): Chunk<'_>,
    commands: &mut Vec<Command>,
) -> Result<TexelRows> {
    let l = &problem.layout;
    let (_, _, v) = problem.chunk_offsets(b, sigma, rows.start);
    let source = plain(proj, v, l.row_stride);
    let first = sigma == 0 && rows.start == 0;
    let shape = (l.seq, problem.value_width());
    copied_once(ctx, packs, "chunk RV", shape, source, first, commands).await
}

/// The texel copies of `SQ_C` and, by the first chunk of (b, σ), `SK_b` (onto `commands`).
async fn chunk_search(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    (b, sigma, rows): Chunk<'_>,
    commands: &mut Vec<Command>,
) -> Result<ChunkSearch> {
    let l = &problem.layout;
    let (n, d, rs, c) = (l.seq, l.head, l.row_stride, rows.len());
    let (q, k, _) = problem.chunk_offsets(b, sigma, rows.start);
    let (sq, copy_q) = packs
        .pack(ctx, "chunk SQ", (c, d), plain(proj, q, rs))
        .await?;
    commands.push(copy_q);
    let first = rows.start == 0;
    let sk_source = plain(proj, k, rs);
    let sk = copied_once(ctx, packs, "chunk SK", (n, d), sk_source, first, commands).await?;
    Ok(ChunkSearch { sq, sk })
}

/// `S = SQ_C·SK_bᵀ` into the `scores` texels of `[c, n]` (onto `commands`, after the copies of
/// [`chunk_search`]).
async fn scores(
    ctx: &GpuContext,
    packs: &TexelPacks,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    chunk: Chunk<'_>,
    commands: &mut Vec<Command>,
) -> Result<TexelRows> {
    let (n, c) = (problem.layout.seq, chunk.2.len());
    let search = chunk_search(ctx, packs, problem, proj, chunk, commands).await?;
    let scores = packs.texels(ctx, "chunk scores", c, n)?;
    let out = Rows::Texels(&scores);
    let (lhs, rhs) = ((&search.sq).into(), (&search.sk).into());
    let product = matmul::texel_product(ctx, lhs, rhs, out, block(0, n, false)).await?;
    commands.extend(as_commands(product));
    Ok(scores)
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
) -> Result<Vec<Command>> {
    let l = problem.layout;
    let (n, vw) = (l.seq, problem.value_width());
    let mut commands = Vec::new();
    for (b, sigma, rows) in problem.chunks(step) {
        let c = rows.len();
        let row0 = (b * l.searches + sigma) * n + rows.start;
        let chunk = (b, sigma, &rows);
        let scores = scores(ctx, packs, problem, proj, chunk, &mut commands).await?;
        let weights = packs.texels(ctx, "chunk weights", c, n)?;
        let params = problem.chunk_params((b, sigma), rows.clone());
        commands.push(
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
            .await?
            .into(),
        );
        // Ret_C = Ã·RV_b: the GEMM reads RV_b [n, vw] transposed as its right operand's rows.
        let rv = batch_values(ctx, packs, problem, proj, chunk, &mut commands).await?;
        let out = Rows::Buffer(ret.into());
        let ret_block = block(row0 * vw, vw, false);
        let (lhs, rhs) = ((&weights).into(), TexelOperand::Transposed(&rv));
        commands.extend(as_commands(
            matmul::texel_product(ctx, lhs, rhs, out, ret_block).await?,
        ));
    }
    Ok(commands)
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
) -> Result<Vec<Command>> {
    let l = problem.layout;
    let (n, vw, rs) = (l.seq, problem.value_width(), l.row_stride);
    let mut commands = Vec::new();
    let [weights_pieces, grads_pieces] = epilogue_pieces(problem.drops());
    for (b, sigma, rows) in problem.chunks(step) {
        let c = rows.len();
        let (q, k, v) = problem.chunk_offsets(b, sigma, rows.start);
        let row0 = (b * l.searches + sigma) * n + rows.start;
        let fields = problem.epilogue_fields((b, sigma), rows.clone());
        // A = weights(SQ_C·SK_bᵀ): the score product's epilogue. The first chunk of (b, σ)
        // copies SK_b, the first of b RV_b; later chunks find the copies in their textures.
        let chunk = (b, sigma, &rows);
        let search = chunk_search(ctx, packs, problem, proj, chunk, &mut commands).await?;
        let weights = packs.texels(ctx, "chunk weights", c, n)?;
        let epilogue = TexelEpilogue {
            pieces: weights_pieces,
            fields,
            binds: vec![stats.into(), mask.into()],
        };
        let (lhs, rhs) = ((&search.sq).into(), (&search.sk).into());
        commands.push(
            gemm::texel_epilogue_dispatch(ctx, lhs, rhs, &weights, epilogue)
                .await?
                .into(),
        );
        // dL = grads(dRet_C·RV_bᵀ) and, with dropout, Ã: the dA product's epilogue.
        let d_ret_rows = plain(d_ret, row0 * vw, vw);
        let (d_ret_c, copy_dr) = packs.pack(ctx, "chunk dRet", (c, vw), d_ret_rows).await?;
        commands.push(copy_dr);
        let rv = batch_values(ctx, packs, problem, proj, chunk, &mut commands).await?;
        let d_logits = packs.texels(ctx, "chunk dL", c, n)?;
        let dropped = match problem.drops() {
            true => Some(packs.texels(ctx, "chunk dropped weights", c, n)?),
            false => None,
        };
        let mut binds: Vec<Bind<'_>> = vec![stats.into(), weights.view().into()];
        binds.extend(dropped.iter().map(|t| Bind::from(t.view())));
        let epilogue = TexelEpilogue {
            pieces: grads_pieces,
            fields,
            binds,
        };
        let (lhs, rhs) = ((&d_ret_c).into(), (&rv).into());
        commands.push(
            gemm::texel_epilogue_dispatch(ctx, lhs, rhs, &d_logits, epilogue)
                .await?
                .into(),
        );
        // Ã: the dropped weights, or A itself without dropout.
        let dropped = dropped.as_ref().unwrap_or(&weights);
        let out = || Rows::Buffer(d_proj.into());
        let stored_t = TexelOperand::Transposed;
        // dSQ_C = dL·SK_b (each query row's once): the right operand's rows are SK_bᵀ's.
        let (lhs, rhs) = ((&d_logits).into(), stored_t(&search.sk));
        let dsq = block(q, rs, false);
        commands.extend(as_commands(
            matmul::texel_product(ctx, lhs, rhs, out(), dsq).await?,
        ));
        // dSK_b += dLᵀ·SQ_C (the first chunk of (b, σ) writes).
        let (lhs, rhs) = (stored_t(&d_logits), stored_t(&search.sq));
        let dsk = block(k, rs, rows.start > 0);
        commands.extend(as_commands(
            matmul::texel_product(ctx, lhs, rhs, out(), dsk).await?,
        ));
        // dRV_b += Ãᵀ·dRet_C, summed over every search and chunk (the first of b writes).
        let (lhs, rhs) = (stored_t(dropped), stored_t(&d_ret_c));
        let drv = block(v, rs, sigma > 0 || rows.start > 0);
        commands.extend(as_commands(
            matmul::texel_product(ctx, lhs, rhs, out(), drv).await?,
        ));
    }
    Ok(commands)
}
