//! The projection GEMM `y = x·Wᵀ`: the four input projections (packed into one matrix) and the
//! output projection. Weights stay in PyTorch's `[out, in]` layout, so both operands are read
//! along their rows, the reduction axis.
//!
//! Two kernels, chosen per adapter:
//! * `shaders/gemm.wgsl`, register-blocked with lane-uniform weight reads, for CPU drivers
//!   (lavapipe, SwiftShader): invocations there are SIMD lanes, a load that every lane makes at
//!   the same address is done once, and workgroup memory is ordinary memory behind barriers;
//! * `shaders/gemm_tiled.wgsl`, workgroup-memory tiles with coalesced staging, for GPUs, where
//!   that reuse is what keeps the arithmetic units fed.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};

static GEMM: Kernel = kernel!("gemm");
static GEMM_TILED: Kernel = kernel!("gemm_tiled");

/// `[m, k] · [n, k]ᵀ → [m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl GemmShape {
    /// Multiply-adds × 2.
    pub(crate) fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Which kernel and tile sizes: the specialisation of the GEMM pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GemmTiling {
    /// `gemm.wgsl`: `wg` lanes × `tile_m` rows each, `tile_n` shared columns.
    Register { wg: u32, tile_m: u32, tile_n: u32 },
    /// `gemm_tiled.wgsl`: `wg_side²` invocations, `tile²` outputs each, `bk`-deep slices.
    Tiled { wg_side: u32, tile: u32, bk: u32 },
}

impl GemmTiling {
    /// 8 lanes × 4 rows × 16 columns: 64 accumulators per lane, 20 loads per 256 FMAs (vec4).
    pub(crate) const REGISTER: GemmTiling = GemmTiling::Register {
        wg: 8,
        tile_m: 4,
        tile_n: 16,
    };
    /// 16 × 16 invocations of 4 × 4 outputs: a 64 × 64 tile, 8 KiB of workgroup memory at
    /// `bk = 16`, within WebGPU's defaults.
    pub(crate) const TILED: GemmTiling = GemmTiling::Tiled {
        wg_side: 16,
        tile: 4,
        bk: 16,
    };

    /// The register kernel on CPU adapters, the tiled one elsewhere.
    pub(crate) fn choose(ctx: &GpuContext) -> GemmTiling {
        if ctx.cpu_kernels() {
            Self::REGISTER
        } else {
            Self::TILED
        }
    }

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

    pub(crate) fn variant(&self, shape: GemmShape) -> ShaderVariant {
        match *self {
            GemmTiling::Register { wg, tile_m, tile_n } => ShaderVariant::new(&GEMM)
                .u32("WG", wg)
                .u32("TILE_M", tile_m)
                .u32("TILE_N", tile_n)
                .vector(self.vector_width(shape) as u32),
            GemmTiling::Tiled { wg_side, tile, bk } => ShaderVariant::new(&GEMM_TILED)
                .u32("WG_SIDE", wg_side)
                .u32("TILE", tile)
                .u32("BK", bk),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
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

/// Binds `out [m, n] = lhs [m, k] · rhs [n, k]ᵀ` with the adapter's kernel.
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    shape: GemmShape,
    lhs: &wgpu::Buffer,
    rhs: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    dispatches_with(ctx, GemmTiling::choose(ctx), shape, lhs, rhs, out).await
}

/// Binds the GEMM with an explicit tiling (tests cover both kernels on any adapter): one
/// dispatch, or one per slice of K where the driver caps loop iterations, each adding to `out`.
pub(crate) async fn dispatches_with(
    ctx: &GpuContext,
    tiling: GemmTiling,
    shape: GemmShape,
    lhs: &wgpu::Buffer,
    rhs: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
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
    let variant = tiling.variant(shape);
    let mut dispatches = Vec::with_capacity(slices.len());
    for (index, slice) in slices.into_iter().enumerate() {
        let params = Params {
            m: shape.m as u32,
            n: shape.n as u32,
            k_vecs: k_len as u32,
            tiles_n: tiles_n as u32,
            k_begin: slice.start as u32,
            k_end: slice.end as u32,
            accumulate: (index > 0) as u32,
            _pad: 0,
        };
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &[lhs, rhs, out],
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
    use crate::gpu::testing::*;
    use crate::reference;
    use crate::verify::normal;

    fn check(m: usize, n: usize, k: usize) {
        for tiling in [GemmTiling::REGISTER, GemmTiling::TILED] {
            let (mut rng, what) = rng(&format!("gemm {m}x{n}x{k} {tiling:?}"));
            let lhs = normal(&mut rng, m * k, 1.0);
            let rhs = normal(&mut rng, n * k, 0.5);
            let out = poisoned(m * n);
            let shape = GemmShape { m, n, k };
            let d = build_all(dispatches_with(
                context(),
                tiling,
                shape,
                &upload(&lhs),
                &upload(&rhs),
                &out,
            ));
            run(&d.iter().collect::<Vec<_>>());
            let expected = reference::linear(&to_f64(&lhs), k, &rhs, n);
            assert_close(&what, &download(&out, m * n), &expected, 1e-5);
        }
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
