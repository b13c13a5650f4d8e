//! The mean retrieval value per batch (`shaders/value_mean.wgsl`): what a fully masked query row
//! retrieves under the reference's semantics (uniform weights over all `n` keys). The fused
//! kernel substitutes it for such rows instead of dividing by a zero softmax sum.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, kernel, piece};
use crate::gpu::texture::rows_per_layer;
use crate::gpu::uniform::uniform;
use crate::ops::{ProjectionLayout, Rows};
use crate::precision::Precision;

static VALUE_MEAN: Kernel = kernel!("value_mean", includes: ["texel_rows"]);
static PROJ_BUFFERS: Piece = piece!("value_mean_buffers");
static PROJ_TEXELS: Piece = piece!("value_mean_texels");

/// Invocations per (batch, column): each strides over `n / 64` keys, far below any loop cap.
const WG: u32 = 64;

uniform! {
    struct Params {
        batch: u32,
        seq: u32,
        value_width: u32,
        row_stride: u32,
        v_offset: u32,
        _pad: [u32; 3],
    }
}

/// `precision`: of a buffer `proj` (texel rows widen to f32 whatever their format).
pub(crate) fn variant(ctx: &GpuContext, texels: bool, precision: Precision) -> ShaderVariant {
    let variant = ShaderVariant::new(&VALUE_MEAN)
        .piece(if texels { &PROJ_TEXELS } else { &PROJ_BUFFERS })
        .u32("WG", WG)
        .u32("RPL", rows_per_layer(ctx))
        .reduction(ctx.reduction());
    if texels {
        variant
    } else {
        variant.stored("Proj", precision)
    }
}

/// Binds `value_mean [b, r·d]` (f32) = mean over tokens of the RV block of `proj`, a buffer
/// stored in `precision` or texel rows.
/// Fails where the mean over `seq` keys needs more loop iterations than the driver allows.
pub(crate) fn check_fits(ctx: &GpuContext, seq: usize) -> Result<()> {
    let loops = seq.div_ceil(WG as usize) as u64 + WG.ilog2() as u64;
    check_loop_budget(ctx, "value mean", loops, "a shorter sequence")
}

pub(crate) async fn dispatch(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    proj: Rows<'_>,
    precision: Precision,
    value_mean: &wgpu::Buffer,
) -> Result<Dispatch> {
    check_fits(ctx, layout.seq)?;
    let width = layout.retrievals * layout.head;
    let params = Params {
        batch: layout.batch as u32,
        seq: layout.seq as u32,
        value_width: width as u32,
        row_stride: layout.row_stride as u32,
        v_offset: layout.retrieval_values as u32,
        _pad: [0; 3],
    };
    let proj_bind: Bind<'_> = match proj {
        Rows::Buffer(buffer) => buffer.into(),
        Rows::Texels(texels) => texels.view().into(),
    };
    Dispatch::new(
        ctx,
        &variant(ctx, matches!(proj, Rows::Texels(_)), precision),
        bytemuck::bytes_of(&params),
        &[proj_bind, value_mean.into()],
        (layout.batch * width) as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::testing::normal;

    #[test]
    fn mean_over_all_keys() {
        let (mut rng, what) = rng("value_mean");
        let layout = ProjectionLayout::new(3, 29, 2, 3, 5);
        let proj = normal(&mut rng, 3 * 29 * layout.row_stride, 1.0);
        let out = poisoned(3 * 15);
        let proj_buffer = upload(&proj);
        let d = build(dispatch(
            context(),
            &layout,
            Rows::Buffer((&proj_buffer).into()),
            Precision::F32,
            &out,
        ));
        run(&[&d]);
        let rv = layout.column_block(&proj, layout.retrieval_values, 15);
        let expected: Vec<f64> = (0..3)
            .flat_map(|b| {
                let rv = &rv;
                (0..15).map(move |c| (0..29).map(|j| rv[(b * 29 + j) * 15 + c]).sum::<f64>() / 29.0)
            })
            .collect();
        assert_close(&what, &download(&out, 45), &expected, 1e-5);
    }
}
