// search_chunk_backward.wgsl: the CPU family's backward, between its GEMMs: for a chunk of query
// rows of one (batch, search), the search weights recomputed from the forward's statistics and
// the logits' gradient, elementwise.
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), key j, (m, l, D) =
//            stats[row], A_j from them (common/search_weights.wgsl), f_j = dropout(stream 0, row·n + j):
//              scores[g, j]   = A_j·f_j                              (for dRV = Ãᵀ·dRet)
//              d_scores[g, j] = scale·A_j·(f_j·dA_j − D)  allowed j of a row with one, else 0
//            with scores = SQ_chunk·SKᵀ and d_scores = dA = dRet_chunk·RVᵀ from matmuls.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl; batch_index, search_index,
//                        begin/end = the chunk's query rows)
//            @binding(1) mask     [b, n] u32
//            @binding(2) stats    [b·s·n] vec4<f32>   (m, l, D)
//            @binding(3) scores   [end − begin, n] f32 read, then overwritten with Ã
//            @binding(4) d_scores [end − begin, n] f32 read (dA), then overwritten with dL·scale
// Dispatch   one invocation per element of the chunk, WG per workgroup, numbered linearly over x
//            and y.
// Host constants  WG.
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl.

@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_scores: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = linear_index(group, groups, lane);
    let n = params.seq;
    if (index >= (params.end - params.begin) * n) {
        return;
    }
    let g = index / n;
    let j = index % n;
    let i = params.begin + g;
    let b = params.batch_index;
    let row = (b * params.searches + params.search_index) * n + i;
    let row_stats = stats[row];
    let allowed = key_allowed(b, i, j);
    let weight = search_weight(row_stats, allowed, params.scale * scores[index]);
    let factor = dropout_factor(SEARCH_STREAM, row, n, j);
    scores[index] = weight * factor;
    var d_logit = 0.0;
    if (allowed && row_stats.y != 0.0) {
        d_logit = params.scale * weight * (factor * d_scores[index] - row_stats.z);
    }
    d_scores[index] = d_logit;
}
