// decode_attention.wgsl: split-KV attention of new queries over the KV cache ("flash decoding"):
// each invocation runs the online softmax over one split of the cached keys and writes a partial
// result; decode_reduce.wgsl combines the splits and selects the retrieval.
//
// Computes   for query i < seq of batch b at position p = state.len + i, search σ, split t over
//            keys j in [t·KPS, (t + 1)·KPS) ∩ [0, p]  (causal):
//              uniform = first_allowed[b] > p           (no allowed key up to p: the row attends
//                                                         uniformly to keys 0..p, SPEC §6 on the
//                                                         prefix ending at p)
//              allowed(j) = uniform || mask[b, j] != 0
//              s_j = select(scale · SQ[i] · keys[b, σ, j], 0, uniform)
//              m = max_j s_j,  l = Σ_j exp(s_j − m),  acc[ρ] = Σ_j exp(s_j − m) · values[b, j, ρ·d ..]
//            over allowed j, and stores (m, l) and acc (r·d) for the split. A split with no
//            allowed key stores (-FLT_MAX, 0) and zeros.
// Bindings   @binding(0) params (uniform)  batch, seq, searches, capacity, row_stride and
//                        q_offset (KVec units), scale, splits, keys_per_split (KPS)
//            @binding(1) proj           [b·seq, row_stride] packed projections of the new tokens,
//                                       ProjVec
//            @binding(2) state          [1] u32: tokens cached before this step (len)
//            @binding(3) keys           [b, s, capacity, d] CacheVec
//            @binding(4) values         [b, capacity, r·d] CacheVec
//            @binding(5) mask           [b, capacity] u32
//            @binding(6) first_allowed  [b] u32
//            @binding(7) partial_stats  [b·s·seq·splits] (m, l) f32
//            @binding(8) partial_acc    [b·s·seq·splits, r·d] f32
//            Loads of stored (f32 or f16) operands widen to KVec; the arithmetic is f32.
// Dispatch   one invocation per (b, σ, split, i), WG per workgroup, numbered linearly over x and
//            y: index = ((b·splits + split)·s + σ)·seq + i (neighbouring lanes: neighbouring
//            queries, then searches); the partials are stored at ((b·s + σ)·seq + i)·splits +
//            split.
// Bounds     compiled without runtime bounds checks on native back ends (BoundsChecks::Proven,
//            measured faster on lavapipe: BENCHMARKS.md); src/ops/decode.rs checks every
//            buffer's size against the plan before binding. With index < b·s·seq·splits (the
//            guard), so i < seq, σ < s, split < splits, b < batch, in KVec/CacheVec units:
//              proj      token·row_stride + q_offset + σ·DV + k < b·seq·row_stride, as
//                        q_offset + s·DV ≤ row_stride and token < b·seq;
//              keys      (bs·capacity + j)·DV + k < b·s·capacity·DV, as j < end ≤ capacity;
//              values    (b·capacity + j)·VWV + c < b·capacity·VWV; mask b·capacity + j likewise;
//              partials  slot = row·splits + split < b·s·seq·splits, their allocated rows;
//              state[0], first_allowed[b < batch]; query[k < DV], acc[c < VWV].
//            state[0], the length the GPU writes, moves only `position`: every key index is
//            capped by capacity whatever it holds. The module also runs without integer-division
//            guards and forced loop bounds: every divisor (seq, searches, splits) is at least 1
//            because index < their product, and every loop ends (constant bounds DV and VWV, keys
//            below end ≤ capacity).
// Host constants  WG, D (= d), R (= r), KVec/VEC/kdot (vec4 when d % 4 == 0), the stored
//            types Proj/ProjVec and Cache/CacheVec (f32 or f16).

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    capacity: u32,
    row_stride: u32,
    q_offset: u32,
    scale: f32,
    splits: u32,
    keys_per_split: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> proj: array<ProjVec>;
@group(0) @binding(2) var<storage, read> state: array<u32>;
@group(0) @binding(3) var<storage, read> keys: array<CacheVec>;
@group(0) @binding(4) var<storage, read> values: array<CacheVec>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;
@group(0) @binding(6) var<storage, read> first_allowed: array<u32>;
@group(0) @binding(7) var<storage, read_write> partial_stats: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read_write> partial_acc: array<KVec>;

const DV: u32 = D / VEC;
const VWV: u32 = R * DV;
// -FLT_MAX, spelled so that every WGSL front end accepts it as exactly representable.
const LOWEST: f32 = -3.4028234663852886e38;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * groups.x) * WG + lane;
    if (index >= params.batch * params.searches * params.seq * params.splits) {
        return;
    }
    // Neighbouring invocations take neighbouring queries, then neighbouring searches, of one
    // (b, split): at each step the lanes of a workgroup read the same value row, and for one
    // search the same key (a decode step's single query included, whose lanes are its
    // searches), one cache line for all of them.
    let i = index % params.seq;
    let sigma = (index / params.seq) % params.searches;
    let split = (index / (params.seq * params.searches)) % params.splits;
    let b = index / (params.seq * params.searches * params.splits);
    let bs = b * params.searches + sigma;
    let row = bs * params.seq + i;             // (b·s + σ)·seq + i
    let slot = row * params.splits + split;    // where decode_reduce reads this split
    let position = state[0] + i;
    let uniform_row = first_allowed[b] > position;

    // Every array is written before it is read: some implementations skip WGSL's zero fill.
    var query: array<KVec, DV>;
    var acc: array<KVec, VWV>;
    let token = b * params.seq + i;
    for (var k = 0u; k < DV; k++) {
        query[k] = params.scale * KVec(proj[token * params.row_stride + params.q_offset + sigma * DV + k]);
    }
    for (var c = 0u; c < VWV; c++) {
        acc[c] = KVec();
    }
    var running_max = LOWEST;
    var running_sum = 0.0;
    let begin = split * params.keys_per_split;
    let end = min(begin + params.keys_per_split, min(position + 1u, params.capacity));
    let key_base = bs * params.capacity;
    for (var j = begin; j < end; j++) {
        let allowed = uniform_row || mask[b * params.capacity + j] != 0u;
        if (!allowed) {
            continue;
        }
        var score = 0.0;
        if (!uniform_row) {
            for (var k = 0u; k < DV; k++) {
                score += kdot(query[k], KVec(keys[(key_base + j) * DV + k]));
            }
        }
        let new_max = max(running_max, score);
        let rescale = exp(running_max - new_max);
        let weight = exp(score - new_max);
        running_sum = running_sum * rescale + weight;
        running_max = new_max;
        let value_base = (b * params.capacity + j) * VWV;
        for (var c = 0u; c < VWV; c++) {
            acc[c] = acc[c] * rescale + weight * KVec(values[value_base + c]);
        }
    }
    partial_stats[slot] = vec2<f32>(running_max, running_sum);
    for (var c = 0u; c < VWV; c++) {
        partial_acc[slot * VWV + c] = acc[c];
    }
}
