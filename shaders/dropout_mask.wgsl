// dropout_mask.wgsl: dropout's keep mask of `count` consecutive positions of one map, as 0/1
// words (a training forward and its backward draw the same bits inline from common/philox.wgsl;
// this kernel writes them out, to test that generator against the host's bit for bit).
//
// Computes   keep[e] = philox4x32_10((first + e) lo, hi, stream, 0; seed).x >= threshold,
//            e < count, with the 64-bit position first + e carried across the low word
// Bindings   @binding(0) params (uniform)  seed (lo, hi), first (lo, hi), stream, threshold, count
//            @binding(1) keep  [count] u32, 1 = kept
// Dispatch   one invocation per position, WG per workgroup, numbered linearly over x and y.
// Host constants  WG.

struct Params {
    seed_lo: u32,
    seed_hi: u32,
    first_lo: u32,
    first_hi: u32,
    stream: u32,
    threshold: u32,
    count: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> keep: array<u32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let e = (group.x + group.y * groups.x) * WG + lane;
    if (e >= params.count) {
        return;
    }
    let lo = params.first_lo + e;
    let carry = select(0u, 1u, lo < e);
    let index = vec2<u32>(lo, params.first_hi + carry);
    let seed = vec2<u32>(params.seed_lo, params.seed_hi);
    keep[e] = select(0u, 1u, dropout_keeps(seed, params.stream, index, params.threshold));
}
