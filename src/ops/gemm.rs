//! The projection GEMM `y = x·Wᵀ`: the four input projections (packed into one matrix) and the
//! output projection. Weights stay in PyTorch's `[out, in]` layout, so both operands are read
//! along their rows, the reduction axis.
//!
//! Four kernels; `src/plan/mod.rs` (`GemmPlan`) chooses which one runs for each GEMM:
//! * `shaders/gemm.wgsl`, register-blocked with lane-uniform weight reads, for CPU drivers
//!   (lavapipe, SwiftShader): invocations there are SIMD lanes, a load that every lane makes at
//!   the same address is done once, and workgroup memory is ordinary memory behind barriers;
//! * `shaders/gemm_tiled.wgsl`, workgroup-memory tiles with coalesced staging, for GPUs, where
//!   that reuse is what keeps the arithmetic units fed;
//! * `shaders/gemm_texture.wgsl`, the CPU-driver kernel of the layer: both operands read as
//!   texels (vector gathers on lavapipe, where storage-buffer loads go lane by lane; see
//!   `src/gpu/texture.rs`), 16 × 16 outputs per invocation as 4 × 4 matrix products, stored by
//!   an output piece: into a buffer, into texel rows, or through an epilogue that transforms
//!   each product first ([`TexelEpilogue`]: training's search weights and logit gradients);
//! * `shaders/gemv_texture.wgsl`, the same for a few rows (decode steps): one output per lane.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Buf, Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, TexelRead, kernel, piece};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::gpu::uniform::uniform;
use crate::ops::Rows;
use crate::ops::kernel_params::{GemmTiling, TexelGemmKernel};
use crate::precision::Precision;

static GEMM: Kernel = kernel!("gemm");
static GEMM_TILED: Kernel = kernel!("gemm_tiled");
static GEMM_TEXTURE: Kernel = kernel!("gemm_texture", includes: ["texel_rows"]);
static GEMV_TEXTURE: Kernel = kernel!("gemv_texture", includes: ["texel_rows"]);
static OUT_BUFFER: Piece = piece!("gemm_out_buffer", includes: ["gemm_no_state"]);
static OUT_TEXELS: Piece = piece!("gemm_out_texels", includes: ["gemm_no_state"]);

/// `[m, k] · [n, k]ᵀ → [m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl GemmShape {
    /// Multiply-adds × 2.
    #[cfg(feature = "bench")]
    pub(crate) fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// The stored element types of a buffer GEMM's operands: the input is the caller's f32 (or the
/// f16 concatenation), the weights are the layer's precision, the output the projections'
/// precision or the caller's f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmPrecision {
    pub lhs: Precision,
    pub rhs: Precision,
    pub out: Precision,
}

#[cfg(any(test, feature = "bench"))]
impl GemmPrecision {
    /// Everything f32 (the kernel benchmarks and tests).
    pub const F32: GemmPrecision = GemmPrecision {
        lhs: Precision::F32,
        rhs: Precision::F32,
        out: Precision::F32,
    };
}

/// The operands of one GEMM, in the storage the plan chose (`plan::GemmPlan`).
pub(crate) enum GemmOperands<'a> {
    /// `gemm.wgsl` or `gemm_tiled.wgsl`: `lhs [m, k]`, `rhs [n, k]`, `out [m, n]` buffers.
    Buffers {
        tiling: GemmTiling,
        shape: GemmShape,
        precision: GemmPrecision,
        lhs: Buf<'a>,
        rhs: &'a wgpu::Buffer,
        out: Buf<'a>,
    },
    /// `gemm_texture.wgsl`: texel-row operands (the shape is theirs; `rgba16float` weights of
    /// an f16 layer read the same); the output is a buffer stored in `out_precision` or, for a
    /// consumer that reads texels, texel rows in their own format.
    Texels {
        /// The texel kernel the plan chose for this GEMM's rows (`plan::GemmPlan::Texels`).
        kernel: TexelGemmKernel,
        lhs: &'a TexelRows,
        rhs: &'a TexelRows,
        out: Rows<'a>,
        out_precision: Precision,
    },
}

/// Binds one GEMM, whichever kernel its operands call for.
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    operands: GemmOperands<'_>,
) -> Result<Vec<Dispatch>> {
    match operands {
        GemmOperands::Buffers {
            tiling,
            shape,
            precision,
            lhs,
            rhs,
            out,
        } => buffer_dispatches(ctx, tiling, shape, precision, lhs, rhs, out).await,
        GemmOperands::Texels {
            kernel,
            lhs,
            rhs,
            out,
            out_precision,
        } => texel_dispatches(ctx, kernel, lhs, rhs, out, out_precision).await,
    }
}

impl GemmTiling {
    fn tile_shape(&self) -> (usize, usize) {
        match *self {
            GemmTiling::Register { wg, tile_m, tile_n } => {
                ((wg * tile_m) as usize, tile_n as usize)
            }
            GemmTiling::Tiled { wg_side, tile, .. } => {
                let side = (wg_side * tile) as usize;
                (side, side)
            }
        }
    }

    fn vector_width(&self, shape: GemmShape) -> usize {
        match self {
            GemmTiling::Register { .. } if shape.k.is_multiple_of(4) => 4,
            _ => 1,
        }
    }

    pub(crate) fn variant(&self, shape: GemmShape, precision: GemmPrecision) -> ShaderVariant {
        let variant = match *self {
            GemmTiling::Register { wg, tile_m, tile_n } => ShaderVariant::new(&GEMM)
                .u32("WG", wg)
                .u32("TILE_M", tile_m)
                .u32("TILE_N", tile_n)
                .vector(self.vector_width(shape) as u32),
            GemmTiling::Tiled { wg_side, tile, bk } => ShaderVariant::new(&GEMM_TILED)
                .u32("WG_SIDE", wg_side)
                .u32("TILE", tile)
                .u32("BK", bk),
        };
        variant
            .stored("Lhs", precision.lhs)
            .stored("Rhs", precision.rhs)
            .stored("Out", precision.out)
    }
}

uniform! {
    struct Params {
        m: u32,
        n: u32,
        k_vecs: u32,
        tiles_n: u32,
        k_begin: u32,
        k_end: u32,
        accumulate: u32,
        _pad: u32,
    }
}

uniform! {
    struct TexelParams {
        m: u32,
        n: u32,
        tiles_n: u32,
        k_begin: u32,
        k_end: u32,
        accumulate: u32,
        out_offset: u32,
        out_stride: u32,
        k: u32,
        // An epilogue's (`EpilogueFields`; zero for a plain product).
        seq: u32,
        searches: u32,
        causal: u32,
        begin: u32,
        batch_index: u32,
        search_index: u32,
        dropout: u32,
        seed_lo: u32,
        seed_hi: u32,
        threshold: u32,
        scale: f32,
        keep_scale: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// What an epilogue piece of the texel GEMM reads besides the product: the training core's
/// parameters of the same names (`ops::attention_train::Params`, whose WGSL functions in
/// `shaders/common/` read them as `params.<name>`), for one chunk of query rows.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EpilogueFields {
    pub seq: u32,
    pub searches: u32,
    pub causal: u32,
    pub begin: u32,
    pub batch_index: u32,
    pub search_index: u32,
    pub dropout: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub threshold: u32,
    pub scale: f32,
    pub keep_scale: f32,
}

/// An output of the texel GEMM that transforms each product before storing it as `rgba32float`
/// texel rows: the io pieces that declare `out`, `store` and what `store` reads once per row and
/// once per four columns (`RowState`, `ColumnState` and their functions: `gemm_texture.wgsl`'s
/// header says why), and whatever they call; the fields they read, and the resources they bind
/// from `@binding(4)` on, in binding order.
pub(crate) struct TexelEpilogue<'a> {
    pub pieces: &'a [&'static Piece],
    pub fields: EpilogueFields,
    pub binds: Vec<Bind<'a>>,
}

uniform! {
    struct GemvParams {
        m: u32,
        n: u32,
        k_texels: u32,
        _pad: u32,
    }
}

/// Lanes per workgroup of the texel GEMV: consecutive output columns.
const GEMV_WG: u32 = 64;

/// `precision`: of the output buffer.
pub(crate) fn gemv_variant(ctx: &GpuContext, precision: Precision) -> ShaderVariant {
    ShaderVariant::new(&GEMV_TEXTURE)
        .u32("WG", GEMV_WG)
        .u32("RPL", rows_per_layer(ctx))
        .stored("Out", precision)
}

/// Workgroup size of the texel GEMM: one 8-lane SIMD vector of rows on lavapipe.
const TEXEL_WG: u32 = 8;

/// How a texel GEMM operand is stored: as the rows of `[outer, K]` (the kernel's own layout:
/// lhs `[M, K]`, rhs `[N, K]`), or as its transpose `[K, outer]`, which `gemm_texture.wgsl`
/// reads transposed (`LHS_T`, `RHS_T`) so that nobody writes or copies the transpose.
#[derive(Clone, Copy)]
pub(crate) enum TexelOperand<'a> {
    Rows(&'a TexelRows),
    Transposed(&'a TexelRows),
}

impl<'a> From<&'a TexelRows> for TexelOperand<'a> {
    fn from(rows: &'a TexelRows) -> Self {
        TexelOperand::Rows(rows)
    }
}

impl<'a> TexelOperand<'a> {
    fn texels(self) -> &'a TexelRows {
        match self {
            TexelOperand::Rows(t) | TexelOperand::Transposed(t) => t,
        }
    }

    fn transposed(self) -> bool {
        matches!(self, TexelOperand::Transposed(_))
    }

    /// `M` of a left operand, `N` of a right one.
    fn outer(self) -> usize {
        match self {
            TexelOperand::Rows(t) => t.shape.rows,
            TexelOperand::Transposed(t) => t.shape.cols,
        }
    }

    /// The reduction's length `K`.
    fn reduction(self) -> usize {
        match self {
            TexelOperand::Rows(t) => t.shape.cols,
            TexelOperand::Transposed(t) => t.shape.rows,
        }
    }
}

/// How the texel GEMM reads each operand on this device ([`GpuContext::texel_read_for`]):
/// `(lhs, rhs)`.
pub(crate) fn operand_reads(
    ctx: &GpuContext,
    lhs: &TexelRows,
    rhs: &TexelRows,
) -> (TexelRead, TexelRead) {
    (
        ctx.texel_read_for(lhs.precision()),
        ctx.texel_read_for(rhs.precision()),
    )
}

/// `precision`: of the output, a buffer or texel rows (`rgba16float` for f16);
/// `(lhs_t, rhs_t)`: which operands are stored transposed ([`TexelOperand::Transposed`]);
/// `reads`: how each operand is read ([`operand_reads`]).
pub(crate) fn texel_variant(
    ctx: &GpuContext,
    out_texels: bool,
    precision: Precision,
    transposed: (bool, bool),
    reads: (TexelRead, TexelRead),
) -> ShaderVariant {
    let variant = tile_and_operands(
        ctx,
        ShaderVariant::new(&GEMM_TEXTURE).piece(if out_texels { &OUT_TEXELS } else { &OUT_BUFFER }),
        transposed,
        reads,
    );
    if out_texels {
        variant.texel_store("OutTexels", precision)
    } else {
        variant.stored("Out", precision)
    }
}

/// The texel GEMM with an epilogue's pieces in place of the plain output: f32 texel rows.
pub(crate) fn texel_epilogue_variant(
    ctx: &GpuContext,
    pieces: &[&'static Piece],
    transposed: (bool, bool),
    reads: (TexelRead, TexelRead),
) -> ShaderVariant {
    let variant = pieces
        .iter()
        .fold(ShaderVariant::new(&GEMM_TEXTURE), |v, piece| v.piece(piece));
    tile_and_operands(ctx, variant, transposed, reads).texel_store("OutTexels", Precision::F32)
}

/// The constants every texel GEMM variant has: its tile, texel addressing, and how its
/// operands are stored and read.
fn tile_and_operands(
    ctx: &GpuContext,
    variant: ShaderVariant,
    (lhs_t, rhs_t): (bool, bool),
    (lhs_read, rhs_read): (TexelRead, TexelRead),
) -> ShaderVariant {
    variant
        .u32("WG", TEXEL_WG)
        .u32("RPL", rows_per_layer(ctx))
        .bool("LHS_T", lhs_t)
        .bool("RHS_T", rhs_t)
        .texel_read("LhsTexels", "lhs", lhs_read)
        .texel_read("RhsTexels", "rhs", rhs_read)
}

/// Binds `out [m, n] = epilogue(lhs [m, k] · rhs [n, k]ᵀ)` with both operands as texel rows, in
/// one dispatch (an epilogue needs the whole reduction).
pub(crate) async fn texel_epilogue_dispatch(
    ctx: &GpuContext,
    lhs: TexelOperand<'_>,
    rhs: TexelOperand<'_>,
    out: &TexelRows,
    epilogue: TexelEpilogue<'_>,
) -> Result<Dispatch> {
    let (m, n, k) = (lhs.outer(), rhs.outer(), lhs.reduction());
    if rhs.reduction() != k {
        return Err(Error::shape("GEMM weight", &[n, k], &[n, rhs.reduction()]));
    }
    if (out.shape.rows, out.shape.cols) != (m, n) {
        return Err(Error::shape(
            "GEMM epilogue output",
            &[m, n],
            &[out.shape.rows, out.shape.cols],
        ));
    }
    let slices = split_for_loop_budget(ctx, "texel GEMM", k.div_ceil(4), 1, 64, 1)?;
    if slices.len() > 1 {
        return Err(Error::LimitExceeded {
            what: format!("texel GEMM epilogue {m} × {n} × {k}"),
            required: slices.len() as u64,
            limit: 1,
            limit_name: "an epilogue needs one reduction slice",
            hint: None,
        });
    }
    let tiles = TexelTiles::new(m, n);
    let block = OutBlock {
        offset: 0,
        stride: n,
        accumulate: false,
    };
    let params = tiles.params(k, 0..k.div_ceil(4), block, epilogue.fields);
    let variant = texel_epilogue_variant(
        ctx,
        epilogue.pieces,
        (lhs.transposed(), rhs.transposed()),
        operand_reads(ctx, lhs.texels(), rhs.texels()),
    );
    let mut binds: Vec<Bind<'_>> = vec![
        lhs.texels().view().into(),
        rhs.texels().view().into(),
        out.view().into(),
    ];
    binds.extend(epilogue.binds);
    Dispatch::new(
        ctx,
        &variant,
        bytemuck::bytes_of(&params),
        &binds,
        tiles.groups(),
    )
    .await
}

/// The texel GEMM's grid: workgroups of (TEXEL_WG · 16) rows × 16 columns.
struct TexelTiles {
    m: usize,
    n: usize,
    tiles_m: usize,
    tiles_n: usize,
}

impl TexelTiles {
    fn new(m: usize, n: usize) -> Self {
        TexelTiles {
            m,
            n,
            tiles_m: m.div_ceil((TEXEL_WG * 16) as usize),
            tiles_n: n.div_ceil(16),
        }
    }

    fn groups(&self) -> u64 {
        (self.tiles_m * self.tiles_n) as u64
    }

    /// The parameters of the dispatch that adds the texels `slice` of the reduction.
    fn params(
        &self,
        k: usize,
        slice: std::ops::Range<usize>,
        block: OutBlock,
        fields: EpilogueFields,
    ) -> TexelParams {
        TexelParams {
            m: self.m as u32,
            n: self.n as u32,
            tiles_n: self.tiles_n as u32,
            k_begin: slice.start as u32,
            k_end: slice.end as u32,
            accumulate: block.accumulate as u32,
            out_offset: block.offset as u32,
            out_stride: block.stride as u32,
            k: k as u32,
            seq: fields.seq,
            searches: fields.searches,
            causal: fields.causal,
            begin: fields.begin,
            batch_index: fields.batch_index,
            search_index: fields.search_index,
            dropout: fields.dropout,
            seed_lo: fields.seed_lo,
            seed_hi: fields.seed_hi,
            threshold: fields.threshold,
            scale: fields.scale,
            keep_scale: fields.keep_scale,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// Binds `out [m, n] = lhs [m, k] · rhs [n, k]ᵀ` with both operands as texel rows (the CPU
/// profile's GEMM). Texel output needs a reduction that fits one dispatch.
pub(crate) async fn texel_dispatches(
    ctx: &GpuContext,
    kernel: TexelGemmKernel,
    lhs: &TexelRows,
    rhs: &TexelRows,
    out: Rows<'_>,
    out_precision: Precision,
) -> Result<Vec<Dispatch>> {
    let block = OutBlock {
        offset: 0,
        stride: rhs.shape.rows,
        accumulate: false,
    };
    texel_dispatches_into(
        ctx,
        kernel,
        lhs.into(),
        rhs.into(),
        out,
        out_precision,
        block,
    )
    .await
}

/// Where a texel GEMM's buffer output lies: row `r` from element `offset + r·stride`; with
/// `accumulate` the product is added to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutBlock {
    pub offset: usize,
    pub stride: usize,
    pub accumulate: bool,
}

/// [`texel_dispatches`] into the `block` of a buffer output (ignored for a texel output), with
/// either operand stored transposed. The caller checked that its indices fit 32 bits
/// (`ops::matmul`).
pub(crate) async fn texel_dispatches_into(
    ctx: &GpuContext,
    kernel: TexelGemmKernel,
    lhs: TexelOperand<'_>,
    rhs: TexelOperand<'_>,
    out: Rows<'_>,
    out_precision: Precision,
    block: OutBlock,
) -> Result<Vec<Dispatch>> {
    let (m, n, k) = (lhs.outer(), rhs.outer(), lhs.reduction());
    let k_texels = k.div_ceil(4);
    if rhs.reduction() != k {
        return Err(Error::shape("GEMM weight", &[n, k], &[n, rhs.reduction()]));
    }
    let transposed = (lhs.transposed(), rhs.transposed());
    let (lhs, rhs) = (lhs.texels(), rhs.texels());
    // `Vector` writes a whole buffer; the plan chooses it only for a buffer output. A block of
    // a wider output goes to the blocked kernel, which reads `block`.
    let whole = block.offset == 0 && block.stride == n && !block.accumulate;
    let plain = transposed == (false, false);
    if let (Rows::Buffer(out), TexelGemmKernel::Vector, true, true) = (out, kernel, whole, plain) {
        let params = GemvParams {
            m: m as u32,
            n: n as u32,
            k_texels: k_texels as u32,
            _pad: 0,
        };
        return Ok(vec![
            Dispatch::new(
                ctx,
                &gemv_variant(ctx, out_precision),
                bytemuck::bytes_of(&params),
                &[lhs.view().into(), rhs.view().into(), out.into()],
                ((m * n) as u64).div_ceil(GEMV_WG as u64),
            )
            .await?,
        ]);
    }
    let tiles = TexelTiles::new(m, n);
    // The block products are straight-line code: one loop iteration per texel of K.
    let slices = split_for_loop_budget(ctx, "texel GEMM", k_texels, 1, 64, 1)?;
    let out_texels = matches!(out, Rows::Texels(_));
    if out_texels && slices.len() > 1 {
        return Err(Error::LimitExceeded {
            what: format!("texel GEMM output {m} × {n}"),
            required: slices.len() as u64,
            limit: 1,
            limit_name: "a texel output needs one reduction slice",
            hint: None,
        });
    }
    // Texel rows carry their own format; `out_precision` is a buffer's.
    let (out, out_precision): (Bind<'_>, _) = match out {
        Rows::Buffer(buffer) => (buffer.into(), out_precision),
        Rows::Texels(texels) => (texels.view().into(), texels.precision()),
    };
    let variant = texel_variant(
        ctx,
        out_texels,
        out_precision,
        transposed,
        operand_reads(ctx, lhs, rhs),
    );
    let mut dispatches = Vec::with_capacity(slices.len());
    for (index, slice) in slices.into_iter().enumerate() {
        let block = OutBlock {
            accumulate: block.accumulate || index > 0,
            ..block
        };
        let params = tiles.params(k, slice, block, EpilogueFields::default());
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &[lhs.view().into(), rhs.view().into(), out],
                tiles.groups(),
            )
            .await?,
        );
    }
    Ok(dispatches)
}

/// Binds the buffer GEMM with `tiling`: one dispatch, or one per slice of K where the driver
/// caps loop iterations, each adding to `out`.
pub(crate) async fn buffer_dispatches(
    ctx: &GpuContext,
    tiling: GemmTiling,
    shape: GemmShape,
    precision: GemmPrecision,
    lhs: impl Into<Buf<'_>>,
    rhs: &wgpu::Buffer,
    out: impl Into<Buf<'_>>,
) -> Result<Vec<Dispatch>> {
    buffer_dispatches_onto(ctx, tiling, shape, precision, lhs, rhs, out, false).await
}

/// [`buffer_dispatches`] that adds `lhs·rhsᵀ` to what `out` holds where `add` (a second GEMM
/// into the same output: a memory's value projection after its key projection).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn buffer_dispatches_onto(
    ctx: &GpuContext,
    tiling: GemmTiling,
    shape: GemmShape,
    precision: GemmPrecision,
    lhs: impl Into<Buf<'_>>,
    rhs: &wgpu::Buffer,
    out: impl Into<Buf<'_>>,
    add: bool,
) -> Result<Vec<Dispatch>> {
    let (lhs, out) = (lhs.into(), out.into());
    let (rows, cols) = tiling.tile_shape();
    let tiles_m = shape.m.div_ceil(rows);
    let tiles_n = shape.n.div_ceil(cols);
    let vec = tiling.vector_width(shape);
    let k_len = shape.k / vec;
    // Loop iterations per step of the reduction, counting no loop as unrolled.
    let (per_step, fixed, align) = match tiling {
        GemmTiling::Register { tile_m, tile_n, .. } => {
            let (tm, tn) = (tile_m as u64, tile_n as u64);
            (1 + tm + tn * (1 + tm), 2 * (tm + tn) + tm * tn, 1)
        }
        GemmTiling::Tiled { wg_side, tile, bk } => {
            let (side, t, bk) = (wg_side as u64, tile as u64, bk as u64);
            let staging = (bk * side * t).div_ceil(side * side);
            let per_slice = 1 + staging + bk * (1 + t + t * (1 + t));
            (per_slice.div_ceil(bk), 2 * t * (1 + t), bk as usize)
        }
    };
    let slices = split_for_loop_budget(ctx, "GEMM", k_len, per_step, fixed, align)?;
    let variant = tiling.variant(shape, precision);
    let mut dispatches = Vec::with_capacity(slices.len());
    for (index, slice) in slices.into_iter().enumerate() {
        let params = Params {
            m: shape.m as u32,
            n: shape.n as u32,
            k_vecs: k_len as u32,
            tiles_n: tiles_n as u32,
            k_begin: slice.start as u32,
            k_end: slice.end as u32,
            accumulate: (add || index > 0) as u32,
            _pad: 0,
        };
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &[lhs.into(), rhs.into(), out.into()],
                (tiles_m * tiles_n) as u64,
            )
            .await?,
        );
    }
    Ok(dispatches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::reference;
    use crate::testing::normal;

    fn check(m: usize, n: usize, k: usize) {
        for tiling in [GemmTiling::REGISTER, GemmTiling::TILED] {
            let (mut rng, what) = rng(&format!("gemm {m}x{n}x{k} {tiling:?}"));
            let lhs = normal(&mut rng, m * k, 1.0);
            let rhs = normal(&mut rng, n * k, 0.5);
            let out = poisoned(m * n);
            let shape = GemmShape { m, n, k };
            let d = build_all(buffer_dispatches(
                context(),
                tiling,
                shape,
                GemmPrecision::F32,
                &upload(&lhs),
                &upload(&rhs),
                &out,
            ));
            run(&d.iter().collect::<Vec<_>>());
            let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
            assert_close(&what, &download(&out, m * n), &expected, 1e-5);
        }
    }

    /// f16 storage: weights f16 with an f32 input and an f16 output (the input projection),
    /// and f16 input and weights with an f32 output (the output projection). Operands are
    /// drawn f16-exact, so the only rounding left is the output's (2⁻¹¹ of each value).
    fn check_f16(m: usize, n: usize, k: usize) {
        if !has_f16() {
            return;
        }
        let (f32_, f16_) = (Precision::F32, Precision::F16);
        let cases = [
            GemmPrecision {
                lhs: f32_,
                rhs: f16_,
                out: f16_,
            },
            GemmPrecision {
                lhs: f16_,
                rhs: f16_,
                out: f32_,
            },
        ];
        for tiling in [GemmTiling::REGISTER, GemmTiling::TILED] {
            for precision in cases {
                let (mut rng, what) = rng(&format!("gemm {m}x{n}x{k} {tiling:?} {precision:?}"));
                let lhs = rounded(&normal(&mut rng, m * k, 3.0), f16_);
                let rhs = rounded(&normal(&mut rng, n * k, 0.5), f16_);
                let out = poisoned_stored(m * n, precision.out);
                let d = build_all(buffer_dispatches(
                    context(),
                    tiling,
                    GemmShape { m, n, k },
                    precision,
                    &upload_stored(&lhs, precision.lhs),
                    &upload_stored(&rhs, precision.rhs),
                    &out,
                ));
                run(&d.iter().collect::<Vec<_>>());
                let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
                let tol = match precision.out {
                    Precision::F16 => 1e-3,
                    Precision::F32 => 1e-5,
                };
                let actual = download_stored(&out, m * n, precision.out);
                assert_close(&what, &actual, &expected, tol);
            }
        }
    }

    #[test]
    fn f16_storage() {
        check_f16(37, 45, 29);
        check_f16(5, 66, 64);
        check_f16(1, 1, 1);
        check_f16(20, 33, 4100);
    }

    /// The texel GEMM (CPU profile): buffer and texel outputs, padded K, ragged M and N.
    fn check_texels(m: usize, n: usize, k: usize) {
        let ctx = context();
        if ctx.info().backend == wgpu::Backend::Gl {
            eprintln!("texel GEMM not run: the GL backend uses buffer operands");
            return;
        }
        let (mut rng, what) = rng(&format!("texel gemm {m}x{n}x{k}"));
        let lhs = normal(&mut rng, m * k, 1.0);
        let rhs = normal(&mut rng, n * k, 0.5);
        let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
        let (lhs_t, rhs_t, out_t) = {
            let _serial = pollster::block_on(ctx.serial());
            (
                TexelRows::with_data(ctx, "lhs", m, k, &lhs).unwrap(),
                TexelRows::with_data(ctx, "rhs", n, k, &rhs).unwrap(),
                TexelRows::new(ctx, "out", m, n).unwrap(),
            )
        };
        for kernel in [TexelGemmKernel::Blocked, TexelGemmKernel::Vector] {
            let out = poisoned(m * n);
            let d = build_all(texel_dispatches(
                ctx,
                kernel,
                &lhs_t,
                &rhs_t,
                Rows::Buffer((&out).into()),
                Precision::F32,
            ));
            run(&d.iter().collect::<Vec<_>>());
            assert_close(
                &format!("{what} ({kernel:?})"),
                &download(&out, m * n),
                &expected,
                1e-5,
            );
        }
        // Texel output (columns past n unspecified), read back through a texel → buffer round
        // trip of the next GEMM: multiplying by the identity returns the matrix.
        let d = build_all(texel_dispatches(
            ctx,
            TexelGemmKernel::Blocked,
            &lhs_t,
            &rhs_t,
            Rows::Texels(&out_t),
            Precision::F32,
        ));
        let eye: Vec<f32> = (0..n * n).map(|i| (i / n == i % n) as u8 as f32).collect();
        let eye_t = {
            let _serial = pollster::block_on(ctx.serial());
            TexelRows::with_data(ctx, "eye", n, n, &eye).unwrap()
        };
        let back = poisoned(m * n);
        let e = build_all(texel_dispatches(
            ctx,
            TexelGemmKernel::Blocked,
            &out_t,
            &eye_t,
            Rows::Buffer((&back).into()),
            Precision::F32,
        ));
        run(&d.iter().chain(e.iter()).collect::<Vec<_>>());
        assert_close(
            &format!("{what} (texel output)"),
            &download(&back, m * n),
            &expected,
            1e-5,
        );
        check_stored_transposes(m, n, k, &lhs, &rhs, &expected, &what);
    }

    /// Either operand stored as its transpose (`[K, M]`, `[K, N]`) and read transposed, into a
    /// column block of a wider buffer whose other entries keep their poison: written, then
    /// accumulated onto.
    fn check_stored_transposes(
        m: usize,
        n: usize,
        k: usize,
        lhs: &[f32],
        rhs: &[f32],
        expected: &[f64],
        what: &str,
    ) {
        let ctx = context();
        let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            (0..rows * cols)
                .map(|i| x[(i % rows) * cols + i / rows])
                .collect()
        };
        let (lhs_rows, rhs_rows, lhs_stored_t, rhs_stored_t) = {
            let _serial = pollster::block_on(ctx.serial());
            (
                TexelRows::with_data(ctx, "lhs", m, k, lhs).unwrap(),
                TexelRows::with_data(ctx, "rhs", n, k, rhs).unwrap(),
                TexelRows::with_data(ctx, "lhsᵀ", k, m, &transpose(lhs, m, k)).unwrap(),
                TexelRows::with_data(ctx, "rhsᵀ", k, n, &transpose(rhs, n, k)).unwrap(),
            )
        };
        let (offset, stride) = (2, n + 3);
        for (lhs_t, rhs_t) in [(true, false), (false, true), (true, true)] {
            let lhs_operand = match lhs_t {
                true => TexelOperand::Transposed(&lhs_stored_t),
                false => TexelOperand::Rows(&lhs_rows),
            };
            let rhs_operand = match rhs_t {
                true => TexelOperand::Transposed(&rhs_stored_t),
                false => TexelOperand::Rows(&rhs_rows),
            };
            let out = poisoned(offset + m * stride);
            for accumulate in [false, true] {
                let block = OutBlock {
                    offset,
                    stride,
                    accumulate,
                };
                let d = build_all(texel_dispatches_into(
                    ctx,
                    TexelGemmKernel::Blocked,
                    lhs_operand,
                    rhs_operand,
                    Rows::Buffer((&out).into()),
                    Precision::F32,
                    block,
                ));
                run(&d.iter().collect::<Vec<_>>());
            }
            let all = download(&out, offset + m * stride);
            let label = format!("{what} (stored transposes: lhs {lhs_t}, rhs {rhs_t})");
            let block: Vec<f32> = (0..m * n)
                .map(|i| all[offset + (i / n) * stride + i % n])
                .collect();
            let twice: Vec<f64> = expected.iter().map(|e| 2.0 * e).collect();
            assert_close(&label, &block, &twice, 1e-5);
            let outside = (0..offset + m * stride)
                .filter(|&i| i < offset || (i - offset) % stride >= n)
                .filter(|&i| !all[i].is_nan())
                .count();
            assert_eq!(outside, 0, "{label}: wrote outside its block");
        }
    }

    /// An f16 layer's texel GEMM: `rgba16float` weights (f16-exact data), an f32 texel input,
    /// and an f16 or f32 output buffer; the GEMV (few rows) and the blocked kernel.
    #[test]
    fn texel_kernel_with_f16_weights() {
        let ctx = context();
        if ctx.info().backend == wgpu::Backend::Gl || !has_f16() {
            return;
        }
        for (m, n, k) in [(3, 45, 29), (37, 20, 64)] {
            for out_precision in Precision::ALL {
                let (mut rng, what) = rng(&format!(
                    "texel gemm f16 weights {m}x{n}x{k} {out_precision}"
                ));
                let lhs = normal(&mut rng, m * k, 1.0);
                let rhs = rounded(&normal(&mut rng, n * k, 0.5), Precision::F16);
                let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
                let (lhs_t, rhs_t) = {
                    let _serial = pollster::block_on(ctx.serial());
                    (
                        TexelRows::with_data(ctx, "lhs", m, k, &lhs).unwrap(),
                        TexelRows::with_data_in(ctx, "rhs", n, k, &rhs, Precision::F16).unwrap(),
                    )
                };
                let out = poisoned_stored(m * n, out_precision);
                let kernel = match m <= 8 {
                    true => TexelGemmKernel::Vector,
                    false => TexelGemmKernel::Blocked,
                };
                let d = build_all(texel_dispatches(
                    ctx,
                    kernel,
                    &lhs_t,
                    &rhs_t,
                    Rows::Buffer((&out).into()),
                    out_precision,
                ));
                run(&d.iter().collect::<Vec<_>>());
                let tol = match out_precision {
                    Precision::F32 => 1e-5,
                    Precision::F16 => 1e-3,
                };
                let actual = download_stored(&out, m * n, out_precision);
                assert_close(&what, &actual, &expected, tol);
            }
        }
    }

    #[test]
    fn texel_kernel() {
        check_texels(37, 45, 29);
        check_texels(1, 1, 1);
        // A few rows (where the plan picks the texel GEMV), ragged N and K.
        check_texels(5, 45, 131);
        check_texels(1, 70, 64);
        check_texels(130, 68, 64);
        check_texels(9, 16, 1030);
    }

    #[test]
    fn odd_sizes_scalar_path() {
        check(37, 45, 29);
        check(1, 1, 1);
        check(3, 70, 7);
    }

    #[test]
    fn vec4_path_with_ragged_edges() {
        check(33, 31, 64);
        check(130, 66, 4);
        check(5, 200, 132);
    }

    #[test]
    fn exact_tiles() {
        check(64, 96, 128);
    }

    /// A reduction long enough that a loop-capped driver splits K over several dispatches.
    #[test]
    fn long_reduction() {
        check(20, 33, 4100);
        check(9, 17, 3001);
    }
}
