//! Retrieval selection (`shaders/retrieval_select.wgsl`), the unfused strategy's: the logits of
//! the `r` retrieved vectors, softmax over them, weighted sum, written into the concatenated
//! `[b, n, s·d]` layout that the output projection reads. The logits come from a selection
//! piece (`shaders/io/`):
//! * `select_dot`: `RK = Ret·W_rkᵀ`, `G = RQ·RK`, as SPEC writes it, so that the fused
//!   kernel's reassociated form `(RQ·W_rk)·Ret` is checked against an independent path;
//! * `select_mlp`: the MLP score network of a layer with `Config::selection_mlp` (fairseq's and
//!   xformers' `nonlinear=True`), which only this strategy runs: its logits are not linear in
//!   the retrieved vectors, so no other core can fold them.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, kernel, piece};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;

static RETRIEVAL_SELECT: Kernel = kernel!("retrieval_select");
static SELECT_DOT: Piece = piece!("select_dot");
static SELECT_MLP: Piece = piece!("select_mlp");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        searches: u32,
        retrievals: u32,
        seq: u32,
        head: u32,
        row_stride: u32,
        q_offset: u32,
        scale: f32,
        hidden: u32,
        _pad: [u32; 3],
    }
}

/// The MLP score network's weights on the device: `hidden [units, d]`, `score [units]`.
#[derive(Clone, Copy)]
pub(crate) struct MlpWeights<'a> {
    pub units: usize,
    pub hidden: &'a wgpu::Buffer,
    pub score: &'a wgpu::Buffer,
}

/// How the logits are computed, with the weights it reads.
#[derive(Clone, Copy)]
pub(crate) enum Selection<'a> {
    /// `scale·RQ·(Ret·W_rkᵀ)` with `W_rk [d, d]`.
    DotProduct { scale: f32, w_rk: &'a wgpu::Buffer },
    /// The MLP score network.
    Mlp(MlpWeights<'a>),
}

pub(crate) fn variant(mlp: bool) -> ShaderVariant {
    ShaderVariant::new(&RETRIEVAL_SELECT)
        .piece(if mlp { &SELECT_MLP } else { &SELECT_DOT })
        .u32("WG", WG)
}

/// Binds `concat [b, n, s·d]` from `retrieved [b, s, n, r·d]`, the RQ block of `proj` and the
/// selection's weights; `g_scratch [b, s, n, r]` holds the retrieval logits between passes.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    selection: Selection<'_>,
    retrieved: &wgpu::Buffer,
    proj: &wgpu::Buffer,
    g_scratch: &wgpu::Buffer,
    concat: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (d, r) = (layout.head as u64, layout.retrievals as u64);
    let per_logit = match &selection {
        Selection::DotProduct { .. } => d * (1 + d),
        Selection::Mlp(mlp) => mlp.units as u64 * (1 + d),
    };
    let loops = r * (1 + per_logit) + 2 * r + d * (1 + r);
    check_loop_budget(
        ctx,
        "retrieval selection",
        loops,
        "the fused strategy (Strategy::Fused)",
    )?;
    let rows = layout.batch * layout.searches * layout.seq;
    let (scale, hidden, weights): (f32, usize, Vec<Bind<'_>>) = match &selection {
        Selection::DotProduct { scale, w_rk } => (*scale, 0, vec![(*w_rk).into()]),
        Selection::Mlp(mlp) => (0.0, mlp.units, vec![mlp.hidden.into(), mlp.score.into()]),
    };
    let params = Params {
        rows: rows as u32,
        searches: layout.searches as u32,
        retrievals: layout.retrievals as u32,
        seq: layout.seq as u32,
        head: layout.head as u32,
        row_stride: layout.row_stride as u32,
        q_offset: layout.retrieval_queries as u32,
        scale,
        hidden: hidden as u32,
        _pad: [0; 3],
    };
    // The piece's weights bind last (5, 6), after the kernel's own.
    let mut binds: Vec<Bind<'_>> = vec![
        retrieved.into(),
        proj.into(),
        g_scratch.into(),
        concat.into(),
    ];
    binds.extend(weights);
    Dispatch::new(
        ctx,
        &variant(matches!(selection, Selection::Mlp(_))),
        bytemuck::bytes_of(&params),
        &binds,
        rows.div_ceil(WG as usize) as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::reference::{self, Dims};
    use crate::testing::normal;

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
        let w_rk_buffer = upload(&w_rk);
        let d = build(dispatch(
            context(),
            &layout,
            Selection::DotProduct {
                scale,
                w_rk: &w_rk_buffer,
            },
            &upload(&retrieved),
            &upload(&proj),
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

    /// The MLP score network piece against the formula in f64, odd sizes, a hidden width
    /// below the head width (the rest of the query block is ignored).
    #[test]
    fn mlp_score_network() {
        let (batch, seq, searches, retrievals, head, units) = (2, 7, 3, 4, 6, 5);
        let (mut rng, what) = rng("retrieval_select mlp");
        let layout = ProjectionLayout::new(batch, seq, searches, retrievals, head);
        let retrieved = normal(&mut rng, batch * searches * seq * retrievals * head, 1.0);
        let proj = normal(&mut rng, batch * seq * layout.row_stride, 1.0);
        let hidden = normal(&mut rng, units * head, 0.7);
        let score = normal(&mut rng, units, 2.0);
        let concat = poisoned(batch * seq * searches * head);
        let g_scratch = poisoned(batch * searches * seq * retrievals);
        let (hidden_buffer, score_buffer) = (upload(&hidden), upload(&score));
        let d = build(dispatch(
            context(),
            &layout,
            Selection::Mlp(MlpWeights {
                units,
                hidden: &hidden_buffer,
                score: &score_buffer,
            }),
            &upload(&retrieved),
            &upload(&proj),
            &g_scratch,
            &concat,
        ));
        run(&[&d]);
        let rq = layout.column_block(&proj, layout.retrieval_queries, searches * head);
        let mut expected = vec![0.0f64; batch * seq * searches * head];
        for b in 0..batch {
            for sigma in 0..searches {
                for i in 0..seq {
                    let row = (b * searches + sigma) * seq + i;
                    let ret = |rho: usize, k: usize| {
                        retrieved[(row * retrievals + rho) * head + k] as f64
                    };
                    let u = &rq[(b * seq + i) * searches * head + sigma * head..];
                    let g: Vec<f64> = (0..retrievals)
                        .map(|rho| {
                            (0..units)
                                .map(|t| {
                                    let pre = u[t]
                                        + (0..head)
                                            .map(|k| hidden[t * head + k] as f64 * ret(rho, k))
                                            .sum::<f64>();
                                    score[t] as f64 * pre.max(0.0)
                                })
                                .sum()
                        })
                        .collect();
                    let max = g.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = g.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for k in 0..head {
                        expected[(b * seq + i) * searches * head + sigma * head + k] =
                            (0..retrievals).map(|rho| e[rho] / sum * ret(rho, k)).sum();
                    }
                }
            }
        }
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
