//! The projections' biases (`shaders/bias_add.wgsl`): `out[m, c] += bias[c]` after a GEMM, for
//! layers with `Config::bias` (the official fairseq module, xformers). A pass of its own keeps
//! the GEMM kernels, and the bias-free PyTorch form that most users run, unchanged; it reads and
//! writes the output once, a small cost beside the GEMM that wrote it.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::precision::Precision;

static BIAS_ADD: Kernel = kernel!("bias_add");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        cols: u32,
        _pad: [u32; 2],
    }
}

/// `precision`: of the matrix the bias is added to.
pub(crate) fn variant(precision: Precision) -> ShaderVariant {
    ShaderVariant::new(&BIAS_ADD)
        .u32("WG", WG)
        .stored("Out", precision)
}

/// Binds `out [rows, cols] += bias [cols]` (f32 bias, `out` stored in `precision`).
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    bias: &wgpu::Buffer,
    out: impl Into<Buf<'_>>,
    precision: Precision,
) -> Result<Dispatch> {
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    Dispatch::new(
        ctx,
        &variant(precision),
        bytemuck::bytes_of(&params),
        &[bias.into(), out.into().into()],
        ((rows * cols) as u64).div_ceil(WG as u64),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::verify::normal;

    #[test]
    fn adds_the_bias_to_every_row() {
        for precision in Precision::ALL {
            if precision == Precision::F16 && !has_f16() {
                continue;
            }
            let (rows, cols) = (37, 13);
            let (mut rng, what) = rng(&format!("bias_add {precision}"));
            let matrix = rounded(&normal(&mut rng, rows * cols, 2.0), precision);
            let bias = normal(&mut rng, cols, 1.0);
            let out = upload_stored(&matrix, precision);
            let d = build(dispatch(
                context(),
                rows,
                cols,
                &upload(&bias),
                &out,
                precision,
            ));
            run(&[&d]);
            let expected: Vec<f64> = (0..rows * cols)
                .map(|i| matrix[i] as f64 + bias[i % cols] as f64)
                .collect();
            let tol = match precision {
                Precision::F32 => 1e-6,
                Precision::F16 => 1e-3,
            };
            assert_close(
                &what,
                &download_stored(&out, rows * cols, precision),
                &expected,
                tol,
            );
        }
    }
}
