//! The backward of prenorm's LayerNorm (`shaders/layer_norm_backward.wgsl`): the input's
//! gradient per row, and `dh ⊙ x̂` whose column sums are γ's gradient (a `column_sum` pass).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;

static LAYER_NORM_BACKWARD: Kernel = kernel!("layer_norm_backward");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        _pad: u32,
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&LAYER_NORM_BACKWARD).u32("WG", WG)
}

/// Binds `d_x [rows, dim]` and `scaled = d_h ⊙ x̂ [rows, dim]` from the LayerNorm's input `x`,
/// `gamma` and the gradient of its output `d_h`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    rows: usize,
    dim: usize,
    eps: f32,
    x: &wgpu::Buffer,
    gamma: &wgpu::Buffer,
    d_h: &wgpu::Buffer,
    (d_x, scaled): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<Dispatch> {
    check_loop_budget(
        ctx,
        "layer norm backward",
        4 * dim as u64 + 4,
        "a smaller model width",
    )?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _pad: 0,
    };
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[
            x.into(),
            gamma.into(),
            d_h.into(),
            d_x.into(),
            scaled.into(),
        ],
        (rows as u64).div_ceil(WG as u64),
    )
    .await
}
