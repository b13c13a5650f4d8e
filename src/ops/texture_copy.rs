//! A storage-buffer matrix into texel rows (`shaders/texture_copy.wgsl`): the bridge from
//! kernels that write buffers to the texel GEMM of the CPU kernel profile.

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
        _pad: u32,
    }
}

/// `precision`: of the source buffer.
pub(crate) fn variant(ctx: &GpuContext, precision: Precision) -> ShaderVariant {
    ShaderVariant::new(&TEXTURE_COPY)
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
        .stored("Src", precision)
}

/// Binds `dst` (f32 texel rows) ← `src` (`[dst.rows, dst.cols]`, stored in `precision`).
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    src: impl Into<Buf<'_>>,
    precision: Precision,
    dst: &TexelRows,
) -> Result<Dispatch> {
    let shape = dst.shape;
    let params = Params {
        rows: shape.rows as u32,
        cols: shape.cols as u32,
        width: shape.width,
        _pad: 0,
    };
    let texels = shape.rows as u64 * shape.width as u64;
    Dispatch::new(
        ctx,
        &variant(ctx, precision),
        bytemuck::bytes_of(&params),
        &[src.into().into(), dst.view().into()],
        texels.div_ceil(WG as u64),
    )
    .await
}
