// common/philox.wgsl: dropout's counter-based generator, Philox4x32-10, in 32-bit integers
// (src/dropout.rs is the same function on the host, checked against Random123's vectors and,
// bit for bit, against this file by ops::dropout_mask's tests).
//
// WGSL has no 64-bit integers and no mulhi: the high word of a 32 × 32 product is built from
// 16-bit halves, every partial product below 2^32.
//
//   counter = (index lo, index hi, stream, 0), key = (seed lo, seed hi)
//   keep    = philox4x32_10(counter, key).x >= threshold,  threshold = round(p · 2^32)

// (high, low) words of a · b.
fn philox_mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round = round + 1u) {
        if (round > 0u) {
            k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let p0 = philox_mul_hi_lo(0xD2511F53u, c.x);
        let p1 = philox_mul_hi_lo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

// Whether the element at 64-bit row-major position `index` (lo, hi) of map `stream` is kept.
fn dropout_keeps(seed: vec2<u32>, stream: u32, index: vec2<u32>, threshold: u32) -> bool {
    return philox4x32_10(vec4<u32>(index.x, index.y, stream, 0u), seed).x >= threshold;
}
