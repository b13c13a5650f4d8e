// search_chunk_softmax.wgsl: the CPU family's chunked training forward (with dropout, or where
// the blocked core cannot run: plan::TrainingCore::blocked_forward), between its two GEMMs: for a
// chunk of query rows of one (batch, search), the search softmax of each row from its raw
// scores, kept as the statistics (m, l), and the dropped weights written over the scores for
// the next GEMM (Ret = Ã·RV).
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), keys j < n:
//              L_j = scale·scores[g, j]    (scores = SQ_chunk·SKᵀ from a matmul)
//              m = max over allowed j of L_j,  l = Σ_allowed exp(L_j − m)    (workgroup-wide)
//              stats[row] = (m, l, 0, 0)
//              scores[g, j] = A_j · dropout(stream 0, row·n + j)   (A_j: common/search_weights.wgsl)
// Bindings   @binding(0) params (uniform, common/train_params.wgsl; batch_index, search_index,
//                        begin/end = the chunk's query rows)
//            @binding(1) mask   [b, n] u32
//            @binding(2) stats  [b·s·n] vec4<f32>   the chunk's rows written
//            @binding(3) scores [end − begin, n] f32 read, then overwritten with Ã
// Dispatch   one workgroup of WG invocations per chunk row, numbered linearly over x and y; the
//            lanes stride over the keys (n / WG iterations each, within any loop cap).
// Host constants  WG (a power of two).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl, common/workgroup_reduce.wgsl or
//            common/subgroup_reduce.wgsl (the host's Reduction).

@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

const LOWEST: f32 = -3.4028234663852886e38;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    invocation: Invocation,
) {
    let lane = invocation.index;
    // Uniform per workgroup, so every lane reaches the reductions' barriers.
    let g = group.x + group.y * groups.x;
    let rows = params.end - params.begin;
    let in_chunk = g < rows;
    let i = params.begin + min(g, rows - 1u);
    let b = params.batch_index;
    let n = params.seq;
    let row = (b * params.searches + params.search_index) * n + i;
    let base = min(g, rows - 1u) * n;
    var top = LOWEST;
    for (var j = lane; j < n; j += WG) {
        if (key_allowed(b, i, j)) {
            top = max(top, params.scale * scores[base + j]);
        }
    }
    let m = workgroup_max(invocation, top);
    var sum = 0.0;
    for (var j = lane; j < n; j += WG) {
        if (key_allowed(b, i, j)) {
            sum += exp(params.scale * scores[base + j] - m);
        }
    }
    let l = workgroup_sum(invocation, sum);
    if (!in_chunk) {
        return;
    }
    let row_stats = vec4<f32>(m, l, 0.0, 0.0);
    if (lane == 0u) {
        stats[row] = row_stats;
    }
    for (var j = lane; j < n; j += WG) {
        let allowed = key_allowed(b, i, j);
        let weight = search_weight(row_stats, allowed, params.scale * scores[base + j]);
        scores[base + j] = weight * dropout_factor(SEARCH_STREAM, row, n, j);
    }
}
