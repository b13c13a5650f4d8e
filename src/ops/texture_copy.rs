//! A storage-buffer matrix into texel rows (`shaders/texture_copy.wgsl`): the bridge from
//! kernels that write buffers to the texel GEMM of the CPU kernel profile. Training's GEMMs
//! (`ops::matmul`) copy column blocks as they are stored (the texel GEMM reads a stored
//! transpose itself, which costs less than a copy that transposes): by the copy engine where
//! the layout allows (`TexelRows::upload`, 3–5× faster on lavapipe), through this kernel
//! otherwise (odd widths, unaligned row pitches, f16 sources, buffers without `COPY_SRC`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::gpu::uniform::uniform;
use crate::precision::Precision;

static TEXTURE_COPY: Kernel = kernel!("texture_copy", includes: ["texel_rows"]);

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        cols: u32,
        width: u32,
        offset: u32,
        stride: u32,
        _pad: [u32; 3],
    }
}

/// `precision`: of the source buffer; `dst`: the format of the texel rows written
/// (`rgba16float` for f16).
pub(crate) fn variant(ctx: &GpuContext, precision: Precision, dst: Precision) -> ShaderVariant {
    ShaderVariant::new(&TEXTURE_COPY)
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
        .stored("Src", precision)
        .texel_store("DstTexels", dst)
}

/// Where a source matrix lies in its buffer: from element `offset`, `stride` elements between
/// its rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceBlock {
    pub offset: usize,
    pub stride: usize,
}

/// Binds `dst` (texel rows, in their own format) ← `src` (`[dst.rows, dst.cols]`, stored in
/// `precision`).
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    src: impl Into<Buf<'_>>,
    precision: Precision,
    dst: &TexelRows,
) -> Result<Dispatch> {
    let block = SourceBlock {
        offset: 0,
        stride: dst.shape.cols,
    };
    dispatch_block(ctx, src, precision, block, dst).await
}

/// Binds `dst` (texel rows `[rows, cols]`, in their own format) ← the `block` of `src` (stored
/// in `precision`). The host checked that every index fits 32 bits (`ops::matmul`).
pub(crate) async fn dispatch_block(
    ctx: &GpuContext,
    src: impl Into<Buf<'_>>,
    precision: Precision,
    block: SourceBlock,
    dst: &TexelRows,
) -> Result<Dispatch> {
    let shape = dst.shape;
    let params = Params {
        rows: shape.rows as u32,
        cols: shape.cols as u32,
        width: shape.width,
        offset: block.offset as u32,
        stride: block.stride as u32,
        _pad: [0; 3],
    };
    let texels = shape.rows as u64 * shape.width as u64;
    Dispatch::new(
        ctx,
        &variant(ctx, precision, dst.precision()),
        bytemuck::bytes_of(&params),
        &[src.into().into(), dst.view().into()],
        texels.div_ceil(WG as u64),
    )
    .await
}
