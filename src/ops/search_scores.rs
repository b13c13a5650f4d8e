//! Search logits `L = scale · SQ·SKᵀ` per (batch, search) (`shaders/search_scores.wgsl`), the
//! first step of the unfused path. Materialises `b·s·n²` logits: the reason the fused kernel
//! exists, and the reason this step is kept: it can be checked on its own.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;

static SEARCH_SCORES: Kernel = kernel!("search_scores");

const WG_X: u32 = 8;
const WG_Y: u32 = 8;
const TILE_I: u32 = 4;
const TILE_J: u32 = 4;

uniform! {
    struct Params {
        batch_searches: u32,
        seq: u32,
        searches: u32,
        head: u32,
        row_stride: u32,
        q_offset: u32,
        k_offset: u32,
        scale: f32,
        tiles_i: u32,
        tiles_j: u32,
        _pad: [u32; 2],
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&SEARCH_SCORES)
        .u32("WG_X", WG_X)
        .u32("WG_Y", WG_Y)
        .u32("TILE_I", TILE_I)
        .u32("TILE_J", TILE_J)
}

/// Binds `logits [b, s, n, n]` from the SQ and SK blocks of the packed projection `proj`.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    scale: f32,
    proj: &wgpu::Buffer,
    logits: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (ti, tj) = (TILE_I as u64, TILE_J as u64);
    let loops = layout.head as u64 * (1 + ti + tj * (1 + ti)) + 2 * (ti + tj) + ti * tj;
    check_loop_budget(
        ctx,
        "search scores",
        loops,
        "the fused strategy (Strategy::Fused)",
    )?;
    let n = layout.seq;
    let tiles_i = n.div_ceil((WG_Y * TILE_I) as usize);
    let tiles_j = n.div_ceil((WG_X * TILE_J) as usize);
    let batch_searches = layout.batch * layout.searches;
    let params = Params {
        batch_searches: batch_searches as u32,
        seq: n as u32,
        searches: layout.searches as u32,
        head: layout.head as u32,
        row_stride: layout.row_stride as u32,
        q_offset: layout.search_queries as u32,
        k_offset: layout.search_keys as u32,
        scale,
        tiles_i: tiles_i as u32,
        tiles_j: tiles_j as u32,
        _pad: [0; 2],
    };
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[proj.into(), logits.into()],
        (batch_searches * tiles_i * tiles_j) as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::ops::ProjectionLayout;
    use crate::reference::{self, Dims};
    use crate::verify::normal;

    /// Random packed projections; compares the logits with the reference on the SQ/SK blocks.
    fn check(batch: usize, seq: usize, searches: usize, head: usize, magnitude: f32) {
        let (mut rng, what) = rng(&format!(
            "search_scores b{batch} n{seq} s{searches} d{head} x{magnitude}"
        ));
        let layout = ProjectionLayout::new(batch, seq, searches, 2, head);
        let proj = normal(&mut rng, batch * seq * layout.row_stride, magnitude);
        let logits = poisoned(batch * searches * seq * seq);
        let scale = (head as f32).powf(-0.5);
        let d = build(dispatch(context(), &layout, scale, &upload(&proj), &logits));
        run(&[&d]);
        let (sq, sk) = (
            layout.column_block(&proj, layout.search_queries, searches * head),
            layout.column_block(&proj, layout.search_keys, searches * head),
        );
        let dims = Dims {
            batch,
            seq,
            searches,
            retrievals: 2,
            head,
        };
        let expected = reference::search_logits(&sq, &sk, dims, scale as f64);
        assert_close(&what, &download(&logits, expected.len()), &expected, 1e-5);
    }

    #[test]
    fn odd_sizes() {
        check(1, 37, 3, 10, 1.0);
        check(2, 5, 1, 7, 1.0);
    }

    #[test]
    fn single_token_and_search() {
        check(1, 1, 1, 1, 1.0);
    }

    #[test]
    fn batches_and_tile_edges() {
        check(3, 33, 2, 16, 1.0);
        check(2, 70, 4, 64, 1.0);
    }

    #[test]
    fn large_magnitude() {
        check(2, 19, 2, 12, 100.0);
    }
}
