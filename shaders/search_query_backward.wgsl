// search_query_backward.wgsl: the backward's dQ kernel: the search queries' gradient of one
// query row, over key slices, with the search weights recomputed from the row's statistics.
//
// Computes   for row (b, σ, i) with (m, l, D) = stats[row], keys j in [begin, end), allowed:
//              A_j  = exp(scale·SQ_i·SK_j − m)/l,   f_j = dropout(stream 0, row·n + j)
//              dA_j = f_j · Σ_e dRet[row, e]·RV[b·n + j, e]              (all ρ at once)
//              dSQ_i (+)= scale · Σ_j A_j·(dA_j − D) · SK_j
//            into d_proj's SQ columns; `first` overwrites, later key slices add. A row with no
//            allowed key passes no gradient to its (masked) logits: dSQ_i = 0.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) proj   [b·n, row_stride] f32   [SQ | SK | RQ | RV]
//            @binding(2) mask   [b, n] u32
//            @binding(3) stats  [b·s·n] vec4<f32>   (m, l, D)
//            @binding(4) d_ret  [b·s·n, r·d] f32
//            @binding(5) d_proj [b·n, row_stride] f32   SQ columns written
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y.
// Host constants  WG, D (= d), VW (= r·d).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl, common/search_rows.wgsl.

@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> d_ret: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_proj: array<f32>;

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
    let out = query_token * params.row_stride + params.q_offset + sigma * D;
    let row_stats = stats[row];
    var acc: array<f32, D>;
    var query: array<f32, D>;
    let q = query_at(query_token, sigma);
    for (var e = 0u; e < D; e++) {
        acc[e] = select(d_proj[out + e], 0.0, params.first != 0u);
        query[e] = proj[q + e];
    }
    var d_row: array<f32, VW>;
    for (var e = 0u; e < VW; e++) {
        d_row[e] = d_ret[row * VW + e];
    }
    if (row_stats.y != 0.0) {
        for (var j = params.begin; j < params.end; j++) {
            if (!key_allowed(b, i, j)) {
                continue;
            }
            let key_token = b * params.seq + j;
            let key = key_at(key_token, sigma);
            var dot = 0.0;
            for (var e = 0u; e < D; e++) {
                dot += query[e] * proj[key + e];
            }
            let weight = search_weight(row_stats, true, params.scale * dot);
            let factor = dropout_factor(SEARCH_STREAM, row, params.seq, j);
            var d_weight = 0.0;
            if (factor != 0.0) {
                let values = key_token * params.row_stride + params.v_offset;
                for (var e = 0u; e < VW; e++) {
                    d_weight += d_row[e] * proj[values + e];
                }
            }
            let d_logit = params.scale * weight * (factor * d_weight - row_stats.z);
            for (var e = 0u; e < D; e++) {
                acc[e] += d_logit * proj[key + e];
            }
        }
    }
    for (var e = 0u; e < D; e++) {
        d_proj[out + e] = acc[e];
    }
}
