// search_key_value_backward.wgsl: the backward's dK/dV kernel: the search keys' and the
// retrieval values' gradients of one key token, over query slices, every search at once.
//
// Computes   for key token (b, j), every search σ, queries i in [begin, end), row = (b·s + σ)·n + i,
//            (m, l, D) = stats[row], A_ij recomputed (1/n on a row with no allowed key),
//            f_ij = dropout(stream 0, row·n + j):
//              dRV_j  (+)= Σ_σ Σ_i A_ij·f_ij · dRet[row]                     (all ρ at once)
//              dA_ij  = f_ij · dRet[row]·RV_j
//              dSK_jσ (+)= scale · Σ_i A_ij·(dA_ij − D_i) · SQ_iσ            (allowed (i, j) only)
//            into d_proj's SK and RV columns; `first` overwrites, later query slices add.
//            dRV_j sums over every search. One invocation owns key j and loops over the searches
//            itself, so the sum is a register reduction: no atomics (WGSL has no float atomics)
//            and no s-times-larger partial buffer to reduce afterwards.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) proj   [b·n, row_stride] f32   [SQ | SK | RQ | RV]
//            @binding(2) mask   [b, n] u32
//            @binding(3) stats  [b·s·n] vec4<f32>   (m, l, D)
//            @binding(4) d_ret  [b·s·n, r·d] f32
//            @binding(5) d_proj [b·n, row_stride] f32   SK and RV columns written
// Dispatch   one invocation per key token, WG per workgroup, numbered linearly over x and y.
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
    let key_token = linear_index(group, groups, lane);
    if (key_token >= params.batch * params.seq) {
        return;
    }
    let j = key_token % params.seq;
    let b = key_token / params.seq;
    let values = key_token * params.row_stride + params.v_offset;
    var d_value: array<f32, VW>;
    var value: array<f32, VW>;
    for (var e = 0u; e < VW; e++) {
        d_value[e] = select(d_proj[values + e], 0.0, params.first != 0u);
        value[e] = proj[values + e];
    }
    for (var sigma = 0u; sigma < params.searches; sigma++) {
        let key = key_at(key_token, sigma);
        var d_key: array<f32, D>;
        var key_row: array<f32, D>;
        for (var e = 0u; e < D; e++) {
            d_key[e] = select(d_proj[key + e], 0.0, params.first != 0u);
            key_row[e] = proj[key + e];
        }
        for (var i = params.begin; i < params.end; i++) {
            let row = (b * params.searches + sigma) * params.seq + i;
            let row_stats = stats[row];
            let allowed = key_allowed(b, i, j) && row_stats.y != 0.0;
            if (!allowed && row_stats.y != 0.0) {
                continue;
            }
            let query_token = b * params.seq + i;
            let query = query_at(query_token, sigma);
            var score = 0.0;
            if (allowed) {
                for (var e = 0u; e < D; e++) {
                    score += proj[query + e] * key_row[e];
                }
                score *= params.scale;
            }
            let weight = search_weight(row_stats, allowed, score);
            let factor = dropout_factor(SEARCH_STREAM, row, params.seq, j);
            if (factor == 0.0) {
                // Dropped: no value gradient, and dA_ij = 0 leaves −A_ij·D_i for the key.
                if (allowed) {
                    let d_logit = -params.scale * weight * row_stats.z;
                    for (var e = 0u; e < D; e++) {
                        d_key[e] += d_logit * proj[query + e];
                    }
                }
                continue;
            }
            let kept = weight * factor;
            var d_weight = 0.0;
            for (var e = 0u; e < VW; e++) {
                let g = d_ret[row * VW + e];
                d_value[e] += kept * g;
                d_weight += g * value[e];
            }
            if (allowed) {
                let d_logit = params.scale * weight * (factor * d_weight - row_stats.z);
                for (var e = 0u; e < D; e++) {
                    d_key[e] += d_logit * proj[query + e];
                }
            }
        }
        for (var e = 0u; e < D; e++) {
            d_proj[key + e] = d_key[e];
        }
    }
    for (var e = 0u; e < VW; e++) {
        d_proj[values + e] = d_value[e];
    }
}
