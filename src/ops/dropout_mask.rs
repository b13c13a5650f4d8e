//! Dropout's keep mask written out (`shaders/dropout_mask.wgsl`, with `common/philox.wgsl`):
//! the WGSL Philox4x32-10 checked bit for bit against [`crate::dropout`], on every backend. The
//! training kernels draw the same bits inline; this kernel is their test (built in tests only).

use crate::dropout::{Dropout, DropoutStream};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;

static DROPOUT_MASK: Kernel = kernel!("dropout_mask", includes: ["philox"]);

const WG: u32 = 64;

uniform! {
    struct Params {
        seed_lo: u32,
        seed_hi: u32,
        first_lo: u32,
        first_hi: u32,
        stream: u32,
        threshold: u32,
        count: u32,
        _pad: u32,
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&DROPOUT_MASK).u32("WG", WG)
}

/// Binds `keep [count] u32` (1 = kept) for positions `first ..< first + count` of `stream`'s
/// map under `dropout`.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    dropout: Dropout,
    stream: DropoutStream,
    first: u64,
    count: u32,
    keep: &wgpu::Buffer,
) -> Result<Dispatch> {
    let params = Params {
        seed_lo: dropout.seed() as u32,
        seed_hi: (dropout.seed() >> 32) as u32,
        first_lo: first as u32,
        first_hi: (first >> 32) as u32,
        stream: stream as u32,
        threshold: dropout.threshold(),
        count,
        _pad: 0,
    };
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[keep.into()],
        (count as u64).div_ceil(WG as u64),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::*;

    /// The device's bits equal the host's, for seeds with both words set, both streams, and a
    /// range that crosses 2^32 (the high counter word and the carry into it).
    #[test]
    fn matches_the_host_generator_bit_for_bit() {
        let (mut rng, what) = rng("dropout_mask");
        let count = 1000u32;
        for (p, first) in [
            (0.1f32, 0u64),
            (0.5, (1u64 << 32) - 400),
            (0.9, 123_456_789),
        ] {
            let dropout = Dropout::new(p, rng.next_u64() | (1 << 63) | 1).unwrap();
            for stream in [
                DropoutStream::SearchAttention,
                DropoutStream::RetrievalSelection,
            ] {
                // Poisoned: a word the kernel did not write reads as neither 0 nor 1.
                let keep = upload(&vec![0xdead_beefu32; count as usize]);
                let d = build(dispatch(context(), dropout, stream, first, count, &keep));
                run(&[&d]);
                let device: Vec<u32> = download(&keep, count as usize)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let host: Vec<u32> = (0..count as u64)
                    .map(|e| dropout.keeps(stream, first + e) as u32)
                    .collect();
                let differ = device.iter().zip(&host).filter(|(a, b)| a != b).count();
                assert_eq!(
                    differ, 0,
                    "{what}: p {p}, first {first}, {stream:?}: {differ} of {count} positions differ"
                );
            }
        }
    }
}
