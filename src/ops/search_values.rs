//! Search-value aggregation `Ret = A·RV` for every (search, retrieval) pair
//! (`shaders/search_values.wgsl`): each search's weights multiply all `r` value heads at once,
//! written as `[b, s, n, r·d]`.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;

static SEARCH_VALUES: Kernel = kernel!("search_values");

const WG_X: u32 = 8;
const WG_Y: u32 = 8;
const TILE_I: u32 = 4;
const TILE_C: u32 = 4;

uniform! {
    struct Params {
        batch_searches: u32,
        searches: u32,
        seq: u32,
        value_width: u32,
        row_stride: u32,
        v_offset: u32,
        tiles_i: u32,
        tiles_c: u32,
        key_begin: u32,
        key_end: u32,
        accumulate: u32,
        _pad: u32,
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&SEARCH_VALUES)
        .u32("WG_X", WG_X)
        .u32("WG_Y", WG_Y)
        .u32("TILE_I", TILE_I)
        .u32("TILE_C", TILE_C)
}

/// Binds `retrieved [b, s, n, r·d] = weights [b, s, n, n] · RV` (RV from the packed `proj`):
/// one dispatch, or one per slice of keys where the driver caps loop iterations.
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    weights: &wgpu::Buffer,
    proj: &wgpu::Buffer,
    retrieved: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let n = layout.seq;
    let width = layout.retrievals * layout.head;
    let tiles_i = n.div_ceil((WG_Y * TILE_I) as usize);
    let tiles_c = width.div_ceil((WG_X * TILE_C) as usize);
    let batch_searches = layout.batch * layout.searches;
    let (ti, tc) = (TILE_I as u64, TILE_C as u64);
    let per_key = 1 + tc + ti * (1 + tc);
    let fixed = ti + tc + ti * (1 + tc);
    let slices = split_for_loop_budget(ctx, "search values", n, per_key, fixed, 1)?;
    let mut dispatches = Vec::with_capacity(slices.len());
    for (index, keys) in slices.into_iter().enumerate() {
        let params = Params {
            batch_searches: batch_searches as u32,
            searches: layout.searches as u32,
            seq: n as u32,
            value_width: width as u32,
            row_stride: layout.row_stride as u32,
            v_offset: layout.retrieval_values as u32,
            tiles_i: tiles_i as u32,
            tiles_c: tiles_c as u32,
            key_begin: keys.start as u32,
            key_end: keys.end as u32,
            accumulate: (index > 0) as u32,
            _pad: 0,
        };
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant(),
                bytemuck::bytes_of(&params),
                &[weights.into(), proj.into(), retrieved.into()],
                (batch_searches * tiles_i * tiles_c) as u64,
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
    use crate::reference::{self, Dims};
    use crate::verify::normal;

    fn check(batch: usize, seq: usize, searches: usize, retrievals: usize, head: usize) {
        let (mut rng, what) = rng(&format!(
            "search_values b{batch} n{seq} s{searches} r{retrievals} d{head}"
        ));
        let layout = ProjectionLayout::new(batch, seq, searches, retrievals, head);
        // Softmax-like rows: positive, but not normalised (the kernel must not assume it).
        let weights: Vec<f32> = normal(&mut rng, batch * searches * seq * seq, 1.0)
            .into_iter()
            .map(f32::abs)
            .collect();
        let proj = normal(&mut rng, batch * seq * layout.row_stride, 1.0);
        let width = retrievals * head;
        let retrieved = poisoned(batch * searches * seq * width);
        let d = build_all(dispatches(
            context(),
            &layout,
            &upload(&weights),
            &upload(&proj),
            &retrieved,
        ));
        run(&d.iter().collect::<Vec<_>>());
        let rv = layout.column_block(&proj, layout.retrieval_values, width);
        let dims = Dims {
            batch,
            seq,
            searches,
            retrievals,
            head,
        };
        let expected = reference::retrieve(&to_f64(&weights), &rv, dims);
        assert_close(
            &what,
            &download(&retrieved, expected.len()),
            &expected,
            1e-5,
        );
    }

    #[test]
    fn odd_sizes() {
        check(1, 23, 3, 2, 5);
        check(2, 40, 2, 3, 12);
    }

    #[test]
    fn one_search_one_retrieval() {
        check(2, 9, 1, 1, 6);
        check(1, 1, 1, 1, 1);
    }

    /// Enough keys that a loop-capped driver splits them over several accumulating dispatches.
    #[test]
    fn many_keys() {
        check(1, 2300, 1, 1, 4);
    }

    #[test]
    fn wide_values() {
        check(1, 33, 2, 4, 64);
    }
}
