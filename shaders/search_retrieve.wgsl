// search_retrieve.wgsl: the training forward's second pass over the keys: the retrieved values
// of every retrieval, Ret_ρ = Σ_j Ã_j·RV_jρ, with the search weights recomputed from the row's
// statistics (search_statistics.wgsl) and dropout drawn inline. Ret is what the backward keeps
// (FlashAttention-2 keeps its output O the same way): b·s·n·r·d floats, linear in n.
//
// Computes   for row (b, σ, i), keys j in [begin, end):
//              Ã_j = A_j · dropout(stream 0, row·n + j)        (A_j: common/search_weights.wgsl)
//              ret[row, ρ·d + e] (+)= Σ_j Ã_j · RV[b·n + j, ρ·d + e]     for all ρ, e
//            `first` overwrites, later key slices add.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) proj  [b·n, row_stride] f32   [SQ | SK | RQ | RV]
//            @binding(2) mask  [b, n] u32
//            @binding(3) stats [b·s·n] vec4<f32>   (m, l) from search_statistics
//            @binding(4) ret   [b·s·n, r·d] f32    written (added to after the first slice)
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y; each
//            holds its r·d accumulators in registers (private memory).
// Host constants  WG, D (= d), VW (= r·d).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl, common/search_rows.wgsl.

@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> ret: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = linear_index(group, groups, lane);
    if (row >= params.batch * params.searches * params.seq) {
        return;
    }
    let i = row % params.seq;
    let sigma = (row / params.seq) % params.searches;
    let b = row / (params.seq * params.searches);
    let query_token = b * params.seq + i;
    let row_stats = stats[row];
    var query: array<f32, D>;
    let q = query_at(query_token, sigma);
    for (var e = 0u; e < D; e++) {
        query[e] = proj[q + e];
    }
    var acc: array<f32, VW>;
    for (var e = 0u; e < VW; e++) {
        acc[e] = select(ret[row * VW + e], 0.0, params.first != 0u);
    }
    for (var j = params.begin; j < params.end; j++) {
        let key_token = b * params.seq + j;
        let allowed = key_allowed(b, i, j);
        var score = 0.0;
        if (allowed && row_stats.y != 0.0) {
            let k = key_at(key_token, sigma);
            for (var e = 0u; e < D; e++) {
                score += query[e] * proj[k + e];
            }
            score *= params.scale;
        }
        let weight = search_weight(row_stats, allowed, score)
            * dropout_factor(SEARCH_STREAM, row, params.seq, j);
        if (weight == 0.0) {
            continue;
        }
        let values = key_token * params.row_stride + params.v_offset;
        for (var e = 0u; e < VW; e++) {
            acc[e] += weight * proj[values + e];
        }
    }
    for (var e = 0u; e < VW; e++) {
        ret[row * VW + e] = acc[e];
    }
}
