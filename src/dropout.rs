//! Dropout's mask as a pure function of `(seed, stream, position)`: Philox4x32-10, the
//! counter-based generator PyTorch's CUDA dropout and JAX use (Salmon et al., "Parallel random
//! numbers: as easy as 1, 2, 3", SC 2011; Random123's reference vectors in the tests).
//!
//! A training forward and its backward both call it for the same positions, so the backward
//! regenerates the mask instead of storing one, and every backend draws the same mask: the
//! generator is 32-bit integer arithmetic only (WGSL has no 64-bit integers and no `mulhi`;
//! `shaders/common/philox.wgsl` builds the high word from 16-bit halves), identical here and in
//! WGSL bit for bit.
//!
//! ```text
//! counter = (index mod 2^32, index div 2^32, stream, 0)      key = (seed mod 2^32, seed div 2^32)
//! draw    = Philox4x32-10(counter, key)[0]
//! keep    = draw >= threshold(p),  threshold(p) = round(p · 2^32)  (p < 1)
//! kept values are scaled by 1 / (1 − p)
//! ```
//!
//! `index` is the element's row-major position in the map it drops from, and `stream` names
//! the map ([`DropoutStream`]), so the search attention and the retrieval selection of one
//! layer draw independent masks from one seed. `p = 0` keeps everything (threshold 0).

use crate::error::{Error, Result};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The high and low words of `a · b`.
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let product = a as u64 * b as u64;
    ((product >> 32) as u32, product as u32)
}

/// Philox4x32 with 10 rounds: four 32-bit words of `counter` under the 64-bit `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mul_hi_lo(M0, c[0]);
        let (hi1, lo1) = mul_hi_lo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Which map of the layer a mask drops from: each draws its own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DropoutStream {
    /// The search attention `A [b, s, n, n]` (every implementation that drops).
    SearchAttention = 0,
    /// The retrieval selection `C [b, s, n, r]` (lucidrains, Keras).
    RetrievalSelection = 1,
}

/// A dropout probability `p` in `[0, 1)` and the seed of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f32,
    seed: u64,
}

impl Dropout {
    /// Dropout with probability `p` (`0 ≤ p < 1`; a typed error otherwise) under `seed`.
    pub fn new(p: f32, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidConfig {
                field: "dropout",
                value: p.to_string(),
                reason: "the dropout probability must be at least 0 and below 1",
            });
        }
        Ok(Dropout { p, seed })
    }

    /// The probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The draw below which an element is dropped: `round(p · 2^32)`, so that the drop rate is
    /// `p` to within 2^-32.
    pub fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0)
            .round()
            .min(u32::MAX as f64) as u32
    }

    /// The factor kept elements are scaled by, `1 / (1 − p)`.
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p as f64)) as f32
    }

    /// Whether the element at row-major `index` of `stream`'s map is kept.
    pub fn keeps(&self, stream: DropoutStream, index: u64) -> bool {
        let counter = [index as u32, (index >> 32) as u32, stream as u32, 0];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        philox4x32_10(counter, key)[0] >= self.threshold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for philox4x32 with 10 rounds (`kat_vectors`).
    #[test]
    fn matches_the_reference_vectors() {
        let cases = [
            (
                [0u32; 4],
                [0u32; 2],
                [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
            ),
            (
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0],
                [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
            ),
        ];
        for (counter, key, expected) in cases {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "{counter:x?} {key:x?}"
            );
        }
    }

    #[test]
    fn drops_at_the_rate_asked_for_and_streams_differ() {
        for p in [0.1f32, 0.5, 0.9] {
            let dropout = Dropout::new(p, 0x1234_5678_9abc_def0).unwrap();
            let n = 200_000u64;
            let kept = (0..n)
                .filter(|&i| dropout.keeps(DropoutStream::SearchAttention, i))
                .count() as f64;
            let rate = 1.0 - kept / n as f64;
            // Binomial standard deviation ≤ 0.0012 at n = 2·10^5; 5σ.
            assert!((rate - p as f64).abs() < 0.006, "p {p}: drop rate {rate}");
            let same = (0..10_000u64)
                .filter(|&i| {
                    dropout.keeps(DropoutStream::SearchAttention, i)
                        == dropout.keeps(DropoutStream::RetrievalSelection, i)
                })
                .count();
            let agreement = p * p + (1.0 - p) * (1.0 - p);
            assert!(
                (same as f64 / 1e4 - agreement as f64).abs() < 0.03,
                "p {p}: streams agree on {same} of 10000"
            );
        }
    }

    #[test]
    fn zero_keeps_everything_and_bad_probabilities_are_errors() {
        let dropout = Dropout::new(0.0, 7).unwrap();
        assert_eq!(dropout.threshold(), 0);
        assert!((0..1000).all(|i| dropout.keeps(DropoutStream::SearchAttention, i)));
        assert_eq!(dropout.scale(), 1.0);
        for p in [1.0, -0.1, f32::NAN, 2.0] {
            let err = Dropout::new(p, 7).unwrap_err();
            assert!(err.to_string().contains("dropout"), "{err}");
        }
    }

    #[test]
    fn high_index_words_and_seeds_matter() {
        let dropout = Dropout::new(0.5, 1 << 40).unwrap();
        let low: Vec<bool> = (0..64)
            .map(|i| dropout.keeps(DropoutStream::SearchAttention, i))
            .collect();
        let high: Vec<bool> = (0..64)
            .map(|i| dropout.keeps(DropoutStream::SearchAttention, (1 << 32) + i))
            .collect();
        assert_ne!(low, high);
        let other_seed = Dropout::new(0.5, 1).unwrap();
        let other: Vec<bool> = (0..64)
            .map(|i| other_seed.keeps(DropoutStream::SearchAttention, i))
            .collect();
        assert_ne!(low, other);
    }
}
