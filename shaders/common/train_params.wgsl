// common/train_params.wgsl: the parameter block every training kernel of the attention core
// reads (one Rust definition: ops::attention_train::Params), the linear invocation index, and
// dropout's inline mask (common/philox.wgsl must come first).
//
// Dropout keeps A's element ((b·s + σ)·n + i)·n + j of stream 0 and C's ((b·s + σ)·n + i)·r + ρ
// of stream 1 (SPEC §6.4), scaled by keep_scale = 1/(1 − p).

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    retrievals: u32,
    head: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    v_offset: u32,
    causal: u32,
    // The keys (or, for the key/value backward, the queries) this dispatch covers; `first`
    // when it is the first of the range's dispatches (it starts the accumulators).
    begin: u32,
    end: u32,
    first: u32,
    dropout: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    keep_scale: f32,
    // The (batch, search) pair and, in begin..end, the query rows a chunked kernel covers.
    batch_index: u32,
    search_index: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

const SEARCH_STREAM: u32 = 0u;
const SELECTION_STREAM: u32 = 1u;

// The linear index of this invocation (workgroups numbered over x and y).
fn linear_index(group: vec3<u32>, groups: vec3<u32>, lane: u32) -> u32 {
    return (group.x + group.y * groups.x) * WG + lane;
}

// The dropout factor of element `row·width + col` of `stream`: keep_scale or 0 (1 without dropout).
fn dropout_factor(stream: u32, row: u32, width: u32, col: u32) -> f32 {
    if (params.dropout == 0u) {
        return 1.0;
    }
    let base = philox_mul_hi_lo(row, width);
    let lo = base.y + col;
    let hi = base.x + select(0u, 1u, lo < base.y);
    let keep = dropout_keeps(vec2<u32>(params.seed_lo, params.seed_hi), stream, vec2<u32>(lo, hi), params.threshold);
    return select(0.0, params.keep_scale, keep);
}
