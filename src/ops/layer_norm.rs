//! LayerNorm for `prenorm` (`shaders/layer_norm.wgsl`): one workgroup per token row, a two-pass
//! mean and biased variance, epsilon `Config::layer_norm_eps` (1e-5 as PyTorch's
//! `nn.LayerNorm`, 1e-3 as Keras' `LayerNormalization`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;

static LAYER_NORM: Kernel = kernel!("layer_norm");

/// Invocations per row: enough to stride a typical width (256–4096) in a few steps.
const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        dim: u32,
        eps: f32,
        _pad: u32,
    }
}

pub(crate) fn variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&LAYER_NORM)
        .u32("WG", WG)
        .reduction(ctx.reduction())
}

/// Binds `out [rows, dim] = LayerNorm(x)` with affine `gamma`, `beta`.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    rows: usize,
    dim: usize,
    eps: f32,
    x: impl Into<Buf<'_>>,
    (gamma, beta): (&wgpu::Buffer, &wgpu::Buffer),
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let loops = 3 * dim.div_ceil(WG as usize) as u64 + 2 * WG.ilog2() as u64;
    check_loop_budget(ctx, "layer norm", loops, "a smaller model width")?;
    let params = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _pad: 0,
    };
    Dispatch::new(
        ctx,
        &variant(ctx),
        bytemuck::bytes_of(&params),
        &[x.into().into(), gamma.into(), beta.into(), out.into()],
        rows as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LAYER_NORM_EPS;
    use crate::gpu::test_device::*;
    use crate::reference;
    use crate::testing::normal;

    fn check(rows: usize, dim: usize, offset: f32, scale: f32, tol: f64) {
        check_eps(rows, dim, offset, scale, LAYER_NORM_EPS, tol);
    }

    fn check_eps(rows: usize, dim: usize, offset: f32, scale: f32, eps: f32, tol: f64) {
        let (mut rng, what) = rng(&format!(
            "layer_norm {rows}x{dim} offset {offset} eps {eps}"
        ));
        let x: Vec<f32> = normal(&mut rng, rows * dim, scale)
            .into_iter()
            .map(|v| v + offset)
            .collect();
        let gamma = normal(&mut rng, dim, 1.0);
        let beta = normal(&mut rng, dim, 1.0);
        let out = poisoned(rows * dim);
        let d = build(dispatch(
            context(),
            rows,
            dim,
            eps,
            &upload(&x),
            (&upload(&gamma), &upload(&beta)),
            &out,
        ));
        run(&[&d]);
        let expected = reference::layer_norm_eps(&to_f64(&x), dim, &gamma, &beta, eps);
        assert_close(&what, &download(&out, rows * dim), &expected, tol);
    }

    /// The Keras package's epsilon (1e-3) on rows whose variance is of its order, where 1e-5
    /// instead would move the output by a tenth.
    #[test]
    fn keras_epsilon() {
        check_eps(9, 24, 0.5, 0.05, 1e-3, 1e-5);
    }

    #[test]
    fn odd_widths() {
        check(7, 33, 0.0, 1.0, 1e-5);
        check(3, 1, 0.0, 1.0, 1e-5);
        check(130, 200, 0.0, 2.0, 1e-5);
    }

    #[test]
    fn large_offset_and_magnitude() {
        // A mean far from zero is where E[x²] − E[x]² would cancel; the two-pass form does not.
        // The f32 rounding of the mean itself (ulp(1000) ≈ 6e-5, against a spread of 1) bounds
        // any f32 implementation to about 1e-4 here; E[x²] − E[x]² would be off by far more.
        check(5, 48, 1000.0, 1.0, 1e-4);
        check(4, 64, 0.0, 1e4, 1e-5);
    }
}
