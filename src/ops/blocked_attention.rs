//! The fused attention core for CPU drivers (`shaders/blocked_attention.wgsl`, then
//! `shaders/retrieval_mix.wgsl`): search softmax and aggregation in 4 × 4 matrix blocks, no
//! `n × n` buffer, followed by the retrieval selection.
//!
//! On lavapipe the general fused kernel is bound by operand fetches: each key and value texel it
//! fetches feeds only a few multiply-adds per lane, and holding more queries per lane needs
//! arrays indexed in loops, which that driver keeps in memory. This variant holds 16 queries × up to
//! 64 value columns per lane in named 4 × 4 matrices, like the texel GEMM. Wider values are split
//! over slices of lanes, one per 64-column block, that share each key tile's scores through
//! workgroup memory (ARCHITECTURE decision 18), so the scores are computed once for up to
//! 512 value columns. It writes the normalised retrieved vectors
//! (`b·s·n·r·d`, linear in `n`) for a small selection kernel instead of selecting in-register.
//! It runs where operands are texels, `d % 4 == 0`, and one dispatch covers every key within
//! the driver's loop budget (`BlockedPlan::resolve` in `src/plan/mod.rs`); the general fused kernel
//! covers the rest. Training's forward without dropout runs the same kernel with another output
//! piece ([`bind_training`]): `Ret` and each row's softmax statistics in the buffers its
//! backward reads, and no selection kernel (training selects with `selection_forward`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, TexelRead, kernel, piece};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;
use crate::ops::kernel_params::BlockedPlan;
use crate::ops::key_values::{KeyValues, MemoryKeys};
use crate::precision::Precision;

static BLOCKED_ATTENTION: Kernel = kernel!("blocked_attention", includes: ["texel_rows"]);
static OUT_TEXELS: Piece = piece!("blocked_out_texels");
static OUT_TRAINING: Piece = piece!("blocked_out_training");

/// The attention kernel's name, which starts its variants' labels (the tuner times it alone).
pub(crate) const KERNEL_NAME: &str = BLOCKED_ATTENTION.name;
static RETRIEVAL_MIX: Kernel = kernel!("retrieval_mix", includes: ["texel_rows"]);

/// Lanes per slice: one 8-wide SIMD vector on lavapipe; each lane owns 16 queries. A workgroup
/// is `BlockedPlan::slices` slices.
const WG: u32 = 8;
const ROWS: usize = 16 * WG as usize;
/// Invocations per workgroup of the selection kernel.
const MIX_WG: u32 = 64;

uniform! {
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
        slice_groups: u32,
        causal: u32,
        kv_seq: u32,
        k_batch_rows: u32,
        k_head_rows: u32,
        k_head_texels: u32,
        causal_offset: u32,
    }
}

uniform! {
    struct MixParams {
        rows: u32,
        seq: u32,
        searches: u32,
        qt_offset: u32,
        scale: f32,
        _pad: [u32; 3],
    }
}

/// What the blocked kernel writes (its output piece, `shaders/io/blocked_out_*.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockedOutput {
    /// The retrieved vectors as texel rows stored in this precision, for `retrieval_mix`.
    Texels(Precision),
    /// `Ret` and each row's softmax statistics in f32 buffers: training's forward.
    Training,
}

/// How the attention kernel reads its three texel operands ([`GpuContext::texel_read_for`]): the
/// queries' projections, the key rows and the value rows (the projections again, or a
/// memory's rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OperandReads {
    pub proj: TexelRead,
    pub keys: TexelRead,
    pub values: TexelRead,
}

impl OperandReads {
    /// The reads of these texel rows on this device.
    pub(crate) fn of(
        ctx: &GpuContext,
        proj: &TexelRows,
        keys: &TexelRows,
        values: &TexelRows,
    ) -> Self {
        OperandReads {
            proj: ctx.texel_read_for(proj.precision()),
            keys: ctx.texel_read_for(keys.precision()),
            values: ctx.texel_read_for(values.precision()),
        }
    }

    /// Every operand stored in `precision`.
    #[cfg(test)]
    pub(crate) fn all(ctx: &GpuContext, precision: Precision) -> Self {
        let read = ctx.texel_read_for(precision);
        OperandReads {
            proj: read,
            keys: read,
            values: read,
        }
    }
}

/// The attention kernel writing `output`.
pub(crate) fn attention_variant(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: BlockedPlan,
    output: BlockedOutput,
    reads: OperandReads,
) -> ShaderVariant {
    let variant = ShaderVariant::new(&BLOCKED_ATTENTION)
        .piece(match output {
            BlockedOutput::Texels(_) => &OUT_TEXELS,
            BlockedOutput::Training => &OUT_TRAINING,
        })
        .u32("WG", WG)
        .u32("DV", (layout.head / 4) as u32)
        .u32("COLS", plan.block_texels as u32)
        .u32("SLICES", plan.slices as u32)
        .u32("LANES", WG * plan.slices as u32)
        .u32("SHARED", if plan.slices > 1 { 16 * WG } else { 1 })
        .u32("RPL", rows_per_layer(ctx))
        .texel_read("ProjTexels", "proj", reads.proj)
        .texel_read("KeyTexels", "key_rows", reads.keys)
        .texel_read("ValueTexels", "value_rows", reads.values);
    match output {
        BlockedOutput::Texels(precision) => variant.texel_store("RetrievedTexels", precision),
        BlockedOutput::Training => variant,
    }
}

/// The two kernels of inference; `precision`: of the texel rows they write (`retrieved`,
/// `concat`), the layer's intermediates (`ExecutionPlan::intermediates`); `reads`: how the
/// attention kernel reads its operands.
pub(crate) fn variants(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: BlockedPlan,
    precision: Precision,
    reads: OperandReads,
) -> [ShaderVariant; 2] {
    let dv = (layout.head / 4) as u32;
    [
        attention_variant(ctx, layout, plan, BlockedOutput::Texels(precision), reads),
        ShaderVariant::new(&RETRIEVAL_MIX)
            .u32("WG", MIX_WG)
            .u32("DV", dv)
            .u32("R", layout.retrievals as u32)
            .u32("RPL", rows_per_layer(ctx))
            .texel_store("ConcatTexels", precision),
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
/// block holds `RQ·W_rk`) and `keys_values`, then `concat [b·n, s·d]`, as `plan`
/// (`BlockedPlan::resolve`) says. `retrieved` is stored as `concat` is: `rgba16float` texels for
/// an f16 layer, whose projections and concatenation are f16 on every fused core.
pub(crate) async fn bind(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: BlockedPlan,
    scale: f32,
    proj: &TexelRows,
    keys_values: KeyValues<'_>,
    concat: &TexelRows,
) -> Result<BlockedCore> {
    let precision = concat.precision();
    let retrieved = TexelRows::new_in(
        ctx,
        "retrieved",
        layout.batch * layout.searches * layout.seq,
        layout.retrievals * layout.head,
        precision,
    )?;
    let (params, groups) = attention_params(layout, plan, scale, &keys_values);
    let (keys, values) = match &keys_values {
        KeyValues::Own { .. } => (proj, proj),
        KeyValues::Memory(MemoryKeys {
            rows: Some(rows), ..
        }) => (&rows.keys, &rows.values),
        KeyValues::Memory(_) => {
            return Err(crate::Error::InvalidConfig {
                field: "execution plan",
                value: String::new(),
                reason: "the blocked core reads a memory's texel rows, which it does not hold",
            });
        }
    };
    let reads = OperandReads::of(ctx, proj, keys, values);
    let [blocked, mix] = variants(ctx, layout, plan, precision, reads);
    let rows = layout.batch * layout.searches * layout.seq;
    let mix_params = MixParams {
        rows: rows as u32,
        seq: layout.seq as u32,
        searches: layout.searches as u32,
        qt_offset: (layout.retrieval_queries / 4) as u32,
        scale,
        _pad: [0; 3],
    };
    let dispatches = vec![
        Dispatch::new(
            ctx,
            &blocked,
            bytemuck::bytes_of(&params),
            &[
                proj.view().into(),
                keys_values.mask().into(),
                keys_values.value_mean().into(),
                retrieved.view().into(),
                keys.view().into(),
                values.view().into(),
            ],
            groups,
        )
        .await?,
        Dispatch::new(
            ctx,
            &mix,
            bytemuck::bytes_of(&mix_params),
            &[
                proj.view().into(),
                retrieved.view().into(),
                concat.view().into(),
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

/// The attention kernel's parameters and workgroups for `layout`'s queries over `keys_values`.
fn attention_params(
    layout: &ProjectionLayout,
    plan: BlockedPlan,
    scale: f32,
    keys_values: &KeyValues<'_>,
) -> (Params, u64) {
    let value_texels = layout.retrievals * layout.head / 4;
    let tiles = layout.seq.div_ceil(ROWS);
    let slice_groups = value_texels
        .div_ceil(plan.block_texels)
        .div_ceil(plan.slices);
    let at = keys_values.addressing(layout, 4);
    let params = Params {
        batch: layout.batch as u32,
        seq: layout.seq as u32,
        searches: layout.searches as u32,
        q_offset: (layout.search_queries / 4) as u32,
        k_offset: at.k_offset as u32,
        v_offset: at.v_offset as u32,
        value_texels: value_texels as u32,
        scale,
        tiles: tiles as u32,
        slice_groups: slice_groups as u32,
        causal: at.causal as u32,
        kv_seq: at.kv_seq as u32,
        k_batch_rows: at.k_batch_rows as u32,
        k_head_rows: at.k_head_rows as u32,
        k_head_texels: at.k_head_cols as u32,
        causal_offset: at.causal_offset as u32,
    };
    let groups = layout.batch * layout.searches * tiles * slice_groups;
    (params, groups as u64)
}

/// Training's forward core without dropout (`src/training/forward.rs`): binds the attention
/// kernel over `proj`'s texel rows (packed `[SQ | SK | RQ | RV]`, its own keys and values) to
/// write `ret [b·s·n, r·d]` and `stats [b·s·n]` (`(m, l, 0, 0)`), the buffers the backward reads.
/// A row with no allowed key retrieves `value_mean [b, r·d]` and gets `l = 0`.
pub(crate) async fn bind_training(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: BlockedPlan,
    (scale, causal): (f32, bool),
    proj: &TexelRows,
    (mask, value_mean): (&wgpu::Buffer, &wgpu::Buffer),
    (stats, ret): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<Dispatch> {
    let keys_values = KeyValues::Own {
        causal,
        mask: mask.into(),
        value_mean,
    };
    let (params, groups) = attention_params(layout, plan, scale, &keys_values);
    let reads = OperandReads::of(ctx, proj, proj, proj);
    let variant = attention_variant(ctx, layout, plan, BlockedOutput::Training, reads);
    Dispatch::new(
        ctx,
        &variant,
        bytemuck::bytes_of(&params),
        &[
            proj.view().into(),
            mask.into(),
            value_mean.into(),
            ret.into(),
            proj.view().into(),
            proj.view().into(),
            stats.into(),
        ],
        groups,
    )
    .await
}
