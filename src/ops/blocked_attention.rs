//! The fused attention core for CPU drivers (`shaders/blocked_attention.wgsl`, then
//! `shaders/retrieval_mix.wgsl`): search softmax and aggregation in 4 × 4 matrix blocks, no
//! `n × n` buffer, followed by the retrieval selection.
//!
//! On lavapipe the general fused kernel is bound by operand fetches: each key and value texel it
//! fetches feeds only a few multiply-adds per lane, and holding more queries per lane needs
//! arrays indexed in loops, which that driver keeps in memory. This variant holds 8 queries × up to
//! 64 value columns per lane in named 4 × 4 matrices, like the texel GEMM, and recomputes the
//! scores for every block of value columns. It writes the normalised retrieved vectors
//! (`b·s·n·r·d`, linear in `n`) for a small selection kernel instead of selecting in-register.
//! It runs where operands are texels, `d % 4 == 0`, and one dispatch covers every key within
//! the driver's loop budget; the general fused kernel covers the rest.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::ops::ProjectionLayout;

static BLOCKED_ATTENTION: Kernel = kernel!("blocked_attention", includes: ["texel_rows"]);
static RETRIEVAL_MIX: Kernel = kernel!("retrieval_mix", includes: ["texel_rows"]);

/// Lanes per workgroup: one 8-wide SIMD vector on lavapipe; each lane owns 8 queries.
const WG: u32 = 8;
const ROWS: usize = 8 * WG as usize;
/// Invocations per workgroup of the selection kernel.
const MIX_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    q_offset: u32,
    k_offset: u32,
    v_offset: u32,
    value_texels: u32,
    scale: f32,
    tiles: u32,
    col_blocks: u32,
    causal: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MixParams {
    rows: u32,
    seq: u32,
    searches: u32,
    qt_offset: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Whether this variant can run the problem: texel operands, heads on texel boundaries, and
/// the whole key range in one dispatch under the driver's loop budget (the key loop has one
/// loop iteration per 16 keys plus the head loop, so this holds below tens of thousands of
/// keys).
pub(crate) fn supported(ctx: &GpuContext, layout: &ProjectionLayout) -> bool {
    let dv = layout.head as u64 / 4;
    ctx.texel_operands()
        && layout.head.is_multiple_of(4)
        && split_for_loop_budget(
            ctx,
            "blocked attention",
            layout.seq,
            1 + dv.div_ceil(16),
            64,
            16,
        )
        .is_ok_and(|chunks| chunks.len() == 1)
}

/// Value texels per workgroup (4 value columns each). Scores are recomputed once per block, so
/// wider blocks do less arithmetic: at `r·d = 128` a block of 16 texels (64 columns) runs the
/// scores twice where 8 texels ran them four times, and measured 1.6× faster on lavapipe
/// despite holding twice the accumulators. Narrow values take the smallest block that covers
/// them.
fn block_texels(layout: &ProjectionLayout) -> usize {
    match layout.retrievals * layout.head {
        64.. => 16,
        32.. => 8,
        _ => 4,
    }
}

pub(crate) fn variants(ctx: &GpuContext, layout: &ProjectionLayout) -> [ShaderVariant; 2] {
    let dv = (layout.head / 4) as u32;
    [
        ShaderVariant::new(&BLOCKED_ATTENTION)
            .u32("WG", WG)
            .u32("DV", dv)
            .u32("COLS", block_texels(layout) as u32)
            .u32("RPL", rows_per_layer(ctx)),
        ShaderVariant::new(&RETRIEVAL_MIX)
            .u32("WG", MIX_WG)
            .u32("DV", dv)
            .u32("R", layout.retrievals as u32)
            .u32("RPL", rows_per_layer(ctx)),
    ]
}

/// The blocked core, bound: its two dispatches and the intermediate they pass through, which
/// the caller holds for as long as it replays them.
pub(crate) struct BlockedCore {
    pub dispatches: Vec<Dispatch>,
    /// `retrieved [b·s·n, r·d]`: the normalised retrieved vectors, linear in `n`.
    pub retrieved: TexelRows,
}

/// Allocates `retrieved [b·s·n, r·d]` and binds both kernels: `retrieved` from `proj` (whose RQ
/// block holds `RQ·W_rk`), then `concat [b·n, s·d]`. Call only where [`supported`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn bind(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    scale: f32,
    causal: bool,
    proj: &TexelRows,
    mask: &wgpu::Buffer,
    value_mean: &wgpu::Buffer,
    concat: &TexelRows,
) -> Result<BlockedCore> {
    debug_assert!(supported(ctx, layout));
    let retrieved = TexelRows::new(
        ctx,
        "retrieved",
        layout.batch * layout.searches * layout.seq,
        layout.retrievals * layout.head,
    )?;
    let [blocked, mix] = variants(ctx, layout);
    let value_texels = layout.retrievals * layout.head / 4;
    let tiles = layout.seq.div_ceil(ROWS);
    let col_blocks = value_texels.div_ceil(block_texels(layout));
    let batch_searches = layout.batch * layout.searches;
    let params = Params {
        batch: layout.batch as u32,
        seq: layout.seq as u32,
        searches: layout.searches as u32,
        q_offset: (layout.search_queries / 4) as u32,
        k_offset: (layout.search_keys / 4) as u32,
        v_offset: (layout.retrieval_values / 4) as u32,
        value_texels: value_texels as u32,
        scale,
        tiles: tiles as u32,
        col_blocks: col_blocks as u32,
        causal: causal as u32,
        _pad: 0,
    };
    let rows = batch_searches * layout.seq;
    let mix_params = MixParams {
        rows: rows as u32,
        seq: layout.seq as u32,
        searches: layout.searches as u32,
        qt_offset: (layout.retrieval_queries / 4) as u32,
        scale,
        _pad: [0; 3],
    };
    let dispatches = vec![
        Dispatch::with_binds(
            ctx,
            &blocked,
            bytemuck::bytes_of(&params),
            &[
                Bind::Texture(proj.view()),
                Bind::Buffer(mask),
                Bind::Buffer(value_mean),
                Bind::Texture(retrieved.view()),
            ],
            (batch_searches * tiles * col_blocks) as u64,
        )
        .await?,
        Dispatch::with_binds(
            ctx,
            &mix,
            bytemuck::bytes_of(&mix_params),
            &[
                Bind::Texture(proj.view()),
                Bind::Texture(retrieved.view()),
                Bind::Texture(concat.view()),
            ],
            rows.div_ceil(MIX_WG as usize) as u64,
        )
        .await?,
    ];
    Ok(BlockedCore {
        dispatches,
        retrieved,
    })
}
