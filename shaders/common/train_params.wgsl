// common/train_params.wgsl: the parameter block every training kernel of the attention core
// reads (one Rust definition: ops::attention_train::Params) and the linear invocation index.
// Dropout's inline mask is common/train_dropout.wgsl.

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

// The linear index of this invocation (workgroups numbered over x and y).
fn linear_index(group: vec3<u32>, groups: vec3<u32>, lane: u32) -> u32 {
    return (group.x + group.y * groups.x) * WG + lane;
}
