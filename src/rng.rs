//! A small deterministic random generator for seeded weights and test inputs.
//!
//! xoshiro256** (Blackman and Vigna), seeded through SplitMix64 as its authors recommend. The
//! same seed gives the same stream on every platform, wasm32 included. Not for cryptography.
//! It is here so that the library needs no random-number crate: the numbers only have to be
//! reproducible and well spread, not follow any other library's stream.

/// xoshiro256**: 256 bits of state, period `2^256 - 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

/// One step of SplitMix64 (used to expand a 64-bit seed into the generator's state).
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator for `seed`. Every seed (0 included) gives a valid, distinct state.
    pub fn seed_from_u64(seed: u64) -> Rng {
        let mut x = seed;
        Rng {
            state: std::array::from_fn(|_| splitmix64(&mut x)),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        Source::next_f64(self)
    }

    /// Uniform in `[low, high)` (`low` if the range is empty).
    pub fn uniform_f32(&mut self, low: f32, high: f32) -> f32 {
        let x = (low as f64 + (high as f64 - low as f64) * self.next_f64()) as f32;
        // Rounding to f32 can reach `high`; keep the interval half-open.
        if x < high { x } else { low }
    }
}

/// Where `verify::normal` (feature `testing`) draws its bits: [`Rng`], or another generator.
pub trait Source {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// Uniform in `[0, 1)`, with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl Source for Rng {
    fn next_u64(&mut self) -> u64 {
        Rng::next_u64(self)
    }
}

/// `len` draws from a normal distribution `N(0, std²)` (Box–Muller), for test inputs and the
/// browser package's `randomNormal`.
pub fn normal<R: Source + ?Sized>(rng: &mut R, len: usize, std: f32) -> Vec<f32> {
    (0..len).map(|_| normal_draw(rng, std)).collect()
}

/// [`normal`] for a length that comes from a user's numbers: the vector is reserved fallibly
/// first, so a size the machine cannot hold is [`Error::HostMemory`](crate::Error::HostMemory)
/// naming `what` instead of an abort.
pub fn try_normal<R: Source + ?Sized>(
    rng: &mut R,
    what: &str,
    len: usize,
    std: f32,
) -> crate::error::Result<Vec<f32>> {
    let mut v = crate::host_memory::try_with_capacity(what, len)?;
    v.extend((0..len).map(|_| normal_draw(rng, std)));
    Ok(v)
}

fn normal_draw<R: Source + ?Sized>(rng: &mut R, std: f32) -> f32 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln(u1) is finite
    let u2 = rng.next_f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (z * std as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_implementation() {
        // xoshiro256** from state {1, 2, 3, 4}: the first outputs of the authors' C code.
        let mut rng = Rng {
            state: [1, 2, 3, 4],
        };
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1509978240]);
    }

    #[test]
    fn seeds_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seed_from_u64(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seed_from_u64(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut c = Rng::seed_from_u64(8);
        assert_eq!(a, b);
        assert_ne!(a[0], c.next_u64());
        assert_ne!(Rng::seed_from_u64(0).next_u64(), 0);
    }

    #[test]
    fn uniform_stays_in_range_and_spreads() {
        let mut rng = Rng::seed_from_u64(1);
        let n = 100_000;
        let mut sum = 0.0f64;
        for _ in 0..n {
            let x = rng.uniform_f32(-0.5, 0.25);
            assert!((-0.5..0.25).contains(&x), "{x}");
            sum += x as f64;
        }
        let mean = sum / n as f64;
        assert!((mean - -0.125).abs() < 0.005, "mean {mean}");
        for _ in 0..n {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
