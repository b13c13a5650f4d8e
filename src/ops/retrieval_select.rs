//! Retrieval selection (`shaders/retrieval_select.wgsl`): `RK = Ret·W_rkᵀ`, logits `RQ·RK`,
//! softmax over the `r` retrievals, weighted sum, written into the concatenated `[b, n, s·d]`
//! layout that the output projection reads. Computed as SPEC writes it, so that the fused
//! kernel's reassociated form `(RQ·W_rk)·Ret` is checked against an independent path.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;

static RETRIEVAL_SELECT: Kernel = kernel!("retrieval_select");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        searches: u32,
        retrievals: u32,
        seq: u32,
        head: u32,
        row_stride: u32,
        rq_offset: u32,
        scale: f32,
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&RETRIEVAL_SELECT).u32("WG", WG)
}

/// Binds `concat [b, n, s·d]` from `retrieved [b, s, n, r·d]`, the RQ block of `proj` and
/// `w_rk [d, d]`; `g_scratch [b, s, n, r]` holds the retrieval logits between passes.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    scale: f32,
    retrieved: &wgpu::Buffer,
    proj: &wgpu::Buffer,
    w_rk: &wgpu::Buffer,
    g_scratch: &wgpu::Buffer,
    concat: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (d, r) = (layout.head as u64, layout.retrievals as u64);
    let loops = r * (1 + d * (1 + d)) + 2 * r + d * (1 + r);
    check_loop_budget(
        ctx,
        "retrieval selection",
        loops,
        "the fused strategy (Strategy::Fused)",
    )?;
    let rows = layout.batch * layout.searches * layout.seq;
    let params = Params {
        rows: rows as u32,
        searches: layout.searches as u32,
        retrievals: layout.retrievals as u32,
        seq: layout.seq as u32,
        head: layout.head as u32,
        row_stride: layout.row_stride as u32,
        rq_offset: layout.retrieval_queries as u32,
        scale,
    };
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[
            retrieved.into(),
            proj.into(),
            w_rk.into(),
            g_scratch.into(),
            concat.into(),
        ],
        rows.div_ceil(WG as usize) as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::*;
    use crate::reference::{self, Dims};
    use crate::verify::normal;

    fn check(
        batch: usize,
        seq: usize,
        searches: usize,
        retrievals: usize,
        head: usize,
        magnitude: f32,
    ) {
        let (mut rng, what) = rng(&format!(
            "retrieval_select b{batch} n{seq} s{searches} r{retrievals} d{head} x{magnitude}"
        ));
        let layout = ProjectionLayout::new(batch, seq, searches, retrievals, head);
        let retrieved = normal(
            &mut rng,
            batch * searches * seq * retrievals * head,
            magnitude,
        );
        let proj = normal(&mut rng, batch * seq * layout.row_stride, 1.0);
        let w_rk = normal(&mut rng, head * head, (head as f32).powf(-0.5));
        let concat = poisoned(batch * seq * searches * head);
        let g_scratch = poisoned(batch * searches * seq * retrievals);
        let scale = (head as f32).powf(-0.5);
        let d = build(dispatch(
            context(),
            &layout,
            scale,
            &upload(&retrieved),
            &upload(&proj),
            &upload(&w_rk),
            &g_scratch,
            &concat,
        ));
        run(&[&d]);
        let rq = layout.column_block(&proj, layout.retrieval_queries, searches * head);
        let dims = Dims {
            batch,
            seq,
            searches,
            retrievals,
            head,
        };
        let expected =
            reference::retrieval_select(&to_f64(&retrieved), &rq, &w_rk, dims, scale as f64);
        assert_close(&what, &download(&concat, expected.len()), &expected, 1e-5);
    }

    #[test]
    fn odd_sizes() {
        check(2, 29, 3, 4, 10, 1.0);
        check(1, 70, 5, 3, 7, 1.0);
    }

    #[test]
    fn one_retrieval_is_identity_weighting() {
        check(2, 9, 1, 1, 6, 1.0);
    }

    #[test]
    fn large_magnitude_retrievals() {
        // Retrieval logits in the hundreds: the max-subtraction must keep exp finite.
        check(1, 17, 2, 3, 8, 30.0);
    }
}
