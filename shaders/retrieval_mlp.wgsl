// retrieval_mlp.wgsl: retrieval selection by an MLP score network (fairseq's and xformers'
// `nonlinear=True`, lowered as SPEC.md §9.1 says), in place of retrieval_select.wgsl.
//
// Computes   for each (b, σ, i), with Ret[ρ] = retrieved[b, σ, i, ρ·d ..][..d] and the hidden
//            units' query inputs u = proj[(b·n + i)·row_stride + u_offset + σ·d ..][..H]:
//              G[ρ]  = Σ_t w_score[t] · relu(Σ_k w_hidden[t, k] · Ret[ρ, k] + u[t])
//              C     = softmax_ρ(G - max G)
//              concat[b, i, σ·d + k] = Σ_ρ C[ρ] · Ret[ρ, k]
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) retrieved  [b, s, n, r·d]
//            @binding(2) proj       [b·n, row_stride]  packed projections (u in the RQ block)
//            @binding(3) w_hidden   [H, d]  the hidden layer's weights on the retrieved vector
//            @binding(4) w_score    [H]     the output unit's weights (its bias cancels in C)
//            @binding(5) g_scratch  [b, s, n, r]  the logits G, kept between the two passes
//            @binding(6) concat     [b, n, s·d]  searches concatenated for the output projection
// Dispatch   one invocation per (b, σ, i), WG per workgroup, numbered linearly over x and y.
// Host constants  WG.

struct Params {
    rows: u32,
    searches: u32,
    retrievals: u32,
    seq: u32,
    head: u32,
    row_stride: u32,
    u_offset: u32,
    hidden: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> retrieved: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> w_hidden: array<f32>;
@group(0) @binding(4) var<storage, read> w_score: array<f32>;
@group(0) @binding(5) var<storage, read_write> g_scratch: array<f32>;
@group(0) @binding(6) var<storage, read_write> concat: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = (group.x + group.y * groups.x) * WG + lane;
    if (row >= params.rows) {
        return;
    }
    let d = params.head;
    let r = params.retrievals;
    let n = params.seq;
    // row = (b·s + σ)·n + i
    let i = row % n;
    let sigma = (row / n) % params.searches;
    let b = row / (n * params.searches);
    let ret_base = row * r * d;
    let u_base = (b * n + i) * params.row_stride + params.u_offset + sigma * d;

    var g_max = -3.4028234663852886e38;
    for (var rho = 0u; rho < r; rho++) {
        var g = 0.0;
        for (var t = 0u; t < params.hidden; t++) {
            var pre = proj[u_base + t];
            for (var k = 0u; k < d; k++) {
                pre += w_hidden[t * d + k] * retrieved[ret_base + rho * d + k];
            }
            g += w_score[t] * max(pre, 0.0);
        }
        g_scratch[row * r + rho] = g;
        g_max = max(g_max, g);
    }

    var sum = 0.0;
    for (var rho = 0u; rho < r; rho++) {
        sum += exp(g_scratch[row * r + rho] - g_max);
    }
    let inv_sum = 1.0 / sum;

    let out_base = (b * n + i) * params.searches * d + sigma * d;
    for (var k = 0u; k < d; k++) {
        var o = 0.0;
        for (var rho = 0u; rho < r; rho++) {
            let c = exp(g_scratch[row * r + rho] - g_max) * inv_sum;
            o += c * retrieved[ret_base + rho * d + k];
        }
        concat[out_base + k] = o;
    }
}
