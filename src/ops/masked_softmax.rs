//! Softmax over keys with the key mask and causal (`shaders/masked_softmax.wgsl`), with the
//! reference's semantics: masked keys get exactly 0, a row with no allowed key is uniform over
//! all `n` keys. Neither case relies on infinities or NaN.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;

static MASKED_SOFTMAX: Kernel = kernel!("masked_softmax");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        searches: u32,
        seq: u32,
        causal: u32,
    }
}

pub(crate) fn variant(ctx: &GpuContext) -> ShaderVariant {
    ShaderVariant::new(&MASKED_SOFTMAX)
        .u32("WG", WG)
        .reduction(ctx.reduction())
}

/// Binds `weights [b, s, n, n] = softmax(logits)` with `mask [b, n]` (u32, 1 = allowed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    batch: usize,
    searches: usize,
    seq: usize,
    causal: bool,
    logits: &wgpu::Buffer,
    mask: impl Into<Buf<'_>>,
    weights: &wgpu::Buffer,
) -> Result<Dispatch> {
    // Three strided passes over the row and three tree reductions.
    let loops = 3 * seq.div_ceil(WG as usize) as u64 + 3 * WG.ilog2() as u64 + 1;
    check_loop_budget(
        ctx,
        "masked softmax",
        loops,
        "the fused strategy (Strategy::Fused)",
    )?;
    let rows = batch * searches * seq;
    let params = Params {
        rows: rows as u32,
        searches: searches as u32,
        seq: seq as u32,
        causal: causal as u32,
    };
    Dispatch::new(
        ctx,
        &variant(ctx),
        bytemuck::bytes_of(&params),
        &[logits.into(), mask.into().into(), weights.into()],
        rows as u64,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;
    use crate::reference::{self, Dims};
    use crate::testing::{length_mask, normal};

    fn check(
        batch: usize,
        searches: usize,
        seq: usize,
        causal: bool,
        mask: Option<Vec<bool>>,
        magnitude: f32,
    ) {
        let (mut rng, what) = rng(&format!(
            "masked_softmax b{batch} s{searches} n{seq} causal {causal} mask {mask:?} x{magnitude}"
        ));
        let logits = normal(&mut rng, batch * searches * seq * seq, magnitude);
        let mask_u32: Vec<u32> = match &mask {
            Some(m) => m.iter().map(|&a| a as u32).collect(),
            None => vec![1; batch * seq],
        };
        let weights = poisoned(logits.len());
        let d = build(dispatch(
            context(),
            batch,
            searches,
            seq,
            causal,
            &upload(&logits),
            &upload(&mask_u32),
            &weights,
        ));
        run(&[&d]);
        let dims = Dims {
            batch,
            seq,
            searches,
            retrievals: 1,
            head: 1,
        };
        let expected = reference::search_weights(&to_f64(&logits), dims, mask.as_deref(), causal);
        assert_close(&what, &download(&weights, logits.len()), &expected, 1e-5);
    }

    #[test]
    fn unmasked_odd_lengths() {
        check(1, 1, 1, false, None, 1.0);
        check(2, 3, 67, false, None, 1.0);
    }

    #[test]
    fn causal() {
        check(2, 2, 45, true, None, 1.0);
    }

    #[test]
    fn padding_mask() {
        check(3, 2, 29, false, Some(length_mask(3, 29, &[29, 11, 1])), 1.0);
    }

    #[test]
    fn fully_masked_rows_are_uniform() {
        check(2, 3, 9, false, Some(length_mask(2, 9, &[0, 4])), 1.0);
        // Causal with the first three keys padded: queries 0..3 see no allowed key and must be
        // uniform over all keys, future ones included; later queries are ordinary.
        let late_start: Vec<bool> = (0..2 * 13).map(|t| t % 13 >= 3).collect();
        check(2, 2, 13, true, Some(late_start), 1.0);
    }

    #[test]
    fn large_magnitude_logits() {
        check(1, 2, 100, true, Some(length_mask(1, 100, &[73])), 1e4);
    }
}
