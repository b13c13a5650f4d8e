// search_statistics.wgsl: the training forward's first pass over the keys: each query row's
// running maximum and sum of the search softmax, kept for the backward (FlashAttention-2's
// log-sum-exp, here as the pair (m, l) so that a row with no allowed key stays recognisable).
//
// Computes   for row (b, σ, i) over keys j in [begin, end) that are allowed:
//              L_j = scale·SQ_i·SK_j,  m = max(m, L_j),  l = Σ_j exp(L_j − m)   (online rescale)
//            stats[row] = (m, l, 0, 0); `first` starts from (−FLT_MAX, 0), later dispatches
//            (the host splits the keys where the driver caps loop iterations) continue.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) proj  [b·n, row_stride] f32   [SQ | SK | RQ | RV]
//            @binding(2) mask  [b, n] u32
//            @binding(3) stats [b·s·n] vec4<f32>        read and written
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y.
// Host constants  WG, D (= d).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl, common/search_rows.wgsl.

@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> stats: array<vec4<f32>>;

// -FLT_MAX, spelled so that every WGSL front end accepts it as exactly representable.
const LOWEST: f32 = -3.4028234663852886e38;

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
    var query: array<f32, D>;
    let q = query_at(query_token, sigma);
    for (var e = 0u; e < D; e++) {
        query[e] = proj[q + e];
    }
    var m = LOWEST;
    var l = 0.0;
    if (params.first == 0u) {
        m = stats[row].x;
        l = stats[row].y;
    }
    for (var j = params.begin; j < params.end; j++) {
        if (!key_allowed(b, i, j)) {
            continue;
        }
        let k = key_at(b * params.seq + j, sigma);
        var dot = 0.0;
        for (var e = 0u; e < D; e++) {
            dot += query[e] * proj[k + e];
        }
        let score = params.scale * dot;
        if (score > m) {
            l = l * exp(m - score) + 1.0;
            m = score;
        } else {
            l += exp(score - m);
        }
    }
    stats[row] = vec4<f32>(m, l, 0.0, 0.0);
}
