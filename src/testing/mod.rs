//! Comparing results with the CPU reference, and random problems to compare on.
//!
//! Shared by the test suite, `compattn verify` and `compattn demo`, so that the numbers a user
//! sees and the numbers the tests assert on are computed the same way. Compiled with the
//! `testing` feature (and in the crate's own tests).

#[cfg(not(target_arch = "wasm32"))]
pub mod soak;

use crate::config::Config;
use crate::error::Result;
use crate::host_memory;
use crate::io::Input;
use crate::rng::Rng;
use crate::weights::Weights;

/// How far a result is from the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorStats {
    /// `max |actual - expected|`.
    pub max_abs: f64,
    /// `‖actual - expected‖₂ / ‖expected‖₂` (0 when both are zero).
    pub rel_l2: f64,
    /// `max |expected|`, the scale `max_abs` is judged against.
    pub max_expected: f64,
    /// Elements of `actual` that are NaN or infinite (a poisoned or unwritten output).
    pub non_finite: usize,
    /// Number of elements compared.
    pub len: usize,
}

impl ErrorStats {
    /// Compares `actual` with `expected` element by element. A length mismatch counts every
    /// missing element as non-finite.
    pub fn compare(actual: &[f32], expected: &[f64]) -> ErrorStats {
        let mut stats = ErrorStats {
            max_abs: 0.0,
            rel_l2: 0.0,
            max_expected: 0.0,
            non_finite: actual.len().abs_diff(expected.len()),
            len: expected.len(),
        };
        let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
        for (&a, &e) in actual.iter().zip(expected) {
            stats.max_expected = stats.max_expected.max(e.abs());
            ref2 += e * e;
            if !a.is_finite() {
                stats.non_finite += 1;
                continue;
            }
            let d = (a as f64 - e).abs();
            stats.max_abs = stats.max_abs.max(d);
            diff2 += d * d;
        }
        stats.rel_l2 = if ref2 > 0.0 {
            (diff2 / ref2).sqrt()
        } else {
            diff2.sqrt()
        };
        stats
    }

    /// `max_abs / max |expected|`: the error relative to the output's scale.
    pub fn max_abs_relative(&self) -> f64 {
        if self.max_expected > 0.0 {
            self.max_abs / self.max_expected
        } else {
            self.max_abs
        }
    }

    /// Every element finite, `rel_l2 <= tol` and `max_abs <= tol · max |expected|`.
    pub fn within(&self, tol: f64) -> bool {
        self.non_finite == 0 && self.rel_l2 <= tol && self.max_abs_relative() <= tol
    }
}

impl std::fmt::Display for ErrorStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max-abs {:.3e} ({:.3e} of max|ref| {:.3e}), relative L2 {:.3e}, non-finite {}/{}",
            self.max_abs,
            self.max_abs_relative(),
            self.max_expected,
            self.rel_l2,
            self.non_finite,
            self.len
        )
    }
}

pub use crate::rng::{normal, try_normal};

/// A key mask `[batch, seq]` where batch row `b` allows its first `lengths[b]` keys (lengths
/// beyond `seq` are clamped; missing entries mean "all keys").
pub fn length_mask(batch: usize, seq: usize, lengths: &[usize]) -> Vec<bool> {
    length_mask_iter(batch, seq, lengths).collect()
}

fn length_mask_iter(
    batch: usize,
    seq: usize,
    lengths: &[usize],
) -> impl Iterator<Item = bool> + '_ {
    (0..batch).flat_map(move |b| {
        let len = lengths.get(b).copied().unwrap_or(seq).min(seq);
        (0..seq).map(move |j| j < len)
    })
}

/// Random weights (PyTorch init) and a standard-normal input scaled by `input_scale`, all from
/// `seed`; with `mask_lengths`, a key mask from [`length_mask`].
pub fn random_problem(
    config: Config,
    batch: usize,
    seq: usize,
    mask_lengths: Option<&[usize]>,
    input_scale: f32,
    seed: u64,
) -> Result<(Weights, Input)> {
    // Checked before anything is drawn: the input's and the mask's element counts, then the
    // whole problem's host bytes, so that an extra zero in a size is an error, not an abort.
    let tokens = host_memory::element_count("input", &[batch, seq, config.dim], 4)?;
    let keys = host_memory::element_count("mask", &[batch, seq], 1)?;
    let parameters = config.checked_parameter_count().unwrap_or(usize::MAX);
    let total = host_memory::bytes_of(&[tokens], 4)
        .saturating_add(host_memory::bytes_of(&[parameters], 4))
        .saturating_add(if mask_lengths.is_some() {
            keys as u64
        } else {
            0
        });
    host_memory::check_available("random problem (weights, input, mask)", total, None)?;
    let weights = Weights::random(config, seed)?;
    let mut rng = Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let x = try_normal(&mut rng, "input", tokens, input_scale)?;
    let mask = match mask_lengths {
        Some(lengths) => {
            let mut mask = host_memory::try_with_capacity("mask", keys)?;
            mask.extend(length_mask_iter(batch, seq, lengths));
            Some(mask)
        }
        None => None,
    };
    Ok((
        weights,
        Input {
            batch,
            seq,
            dim: config.dim,
            x,
            mask,
        },
    ))
}

/// A seed for a test run: `COMPATTN_SEED` if set (to reproduce a failure), else fresh from the
/// clock, so every run draws new inputs.
pub fn test_seed() -> u64 {
    if let Some(seed) = std::env::var("COMPATTN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    }
    // std has no clock on wasm32-unknown-unknown; the browser suite passes its seeds explicitly.
    #[cfg(target_arch = "wasm32")]
    {
        0x5eed
    }
}
