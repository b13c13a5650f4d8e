//! The projection GEMM `y = x·Wᵀ` (`shaders/gemm.wgsl`): the four input projections (packed
//! into one matrix) and the output projection.
//!
//! Weights stay in PyTorch's `[out, in]` layout, so both operands are read along their rows
//! (the reduction axis) and vec4 loads apply whenever `K % 4 == 0`.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};

static GEMM: Kernel = kernel!("gemm");

/// `[m, k] · [n, k]ᵀ → [m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Invocations per workgroup (`wg_x × wg_y`) and outputs per invocation (`tile_m × tile_n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GemmTiling {
    pub wg_x: u32,
    pub wg_y: u32,
    pub tile_m: u32,
    pub tile_n: u32,
}

impl GemmTiling {
    /// 8×8 invocations of 4×4 outputs: a 32×32 tile, 64 invocations (within WebGPU's 256).
    pub(crate) const DEFAULT: GemmTiling = GemmTiling {
        wg_x: 8,
        wg_y: 8,
        tile_m: 4,
        tile_n: 4,
    };

    fn rows_per_group(&self) -> usize {
        (self.wg_y * self.tile_m) as usize
    }

    fn cols_per_group(&self) -> usize {
        (self.wg_x * self.tile_n) as usize
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k_vecs: u32,
    tiles_n: u32,
}

/// The WGSL variant for `shape`: vec4 loads when rows are 16-byte aligned.
pub(crate) fn variant(shape: GemmShape, tiling: GemmTiling) -> ShaderVariant {
    ShaderVariant::new(&GEMM)
        .u32("WG_X", tiling.wg_x)
        .u32("WG_Y", tiling.wg_y)
        .u32("TILE_M", tiling.tile_m)
        .u32("TILE_N", tiling.tile_n)
        .vector(if shape.k % 4 == 0 { 4 } else { 1 })
}

/// Binds `out [m, n] = lhs [m, k] · rhs [n, k]ᵀ`.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    shape: GemmShape,
    lhs: &wgpu::Buffer,
    rhs: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let tiling = GemmTiling::DEFAULT;
    let variant = variant(shape, tiling);
    let vec = if shape.k % 4 == 0 { 4 } else { 1 };
    let tiles_m = shape.m.div_ceil(tiling.rows_per_group());
    let tiles_n = shape.n.div_ceil(tiling.cols_per_group());
    let params = Params {
        m: shape.m as u32,
        n: shape.n as u32,
        k_vecs: (shape.k / vec) as u32,
        tiles_n: tiles_n as u32,
    };
    Dispatch::new(
        ctx,
        &variant,
        bytemuck::bytes_of(&params),
        &[lhs, rhs, out],
        (tiles_m * tiles_n) as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::*;
    use crate::reference;
    use crate::verify::normal;

    fn check(m: usize, n: usize, k: usize) {
        let (mut rng, what) = rng(&format!("gemm {m}x{n}x{k}"));
        let lhs = normal(&mut rng, m * k, 1.0);
        let rhs = normal(&mut rng, n * k, 0.5);
        let out = poisoned(m * n);
        let shape = GemmShape { m, n, k };
        let d = build(dispatch(
            context(),
            shape,
            &upload(&lhs),
            &upload(&rhs),
            &out,
        ));
        run(&[&d]);
        let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
        assert_close(&what, &download(&out, m * n), &expected, 1e-5);
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
}
