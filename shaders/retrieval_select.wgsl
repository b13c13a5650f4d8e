// retrieval_select.wgsl: retrieval attention over the r retrieved vectors of each search (the
// unfused strategy's selection).
//
// Computes   for each (b, σ, i), with Ret[ρ] = retrieved[b, σ, i, ρ·d ..][..d] and the search's
//            query block q = proj[(b·n + i)·row_stride + q_offset + σ·d ..][..d]:
//              G[ρ] = logit(Ret[ρ], q)             the selection piece placed first:
//                       io/select_dot.wgsl   G = Σ_k' (scale · q[k']) · (Ret · W_rkᵀ)[k']
//                                            (SPEC §2.3 as written: q = RQ; the fused kernel
//                                            uses the reassociated (RQ·W_rk)·Ret)
//                       io/select_mlp.wgsl   G = Σ_t w_score[t] · relu(W_hidden[t] · Ret + q[t])
//                                            (the MLP score network, SPEC.md §9.1: q = u)
//              C    = softmax_ρ(G - max G)
//              concat[b, i, σ·d + k] = Σ_ρ C[ρ] · Ret[ρ, k]
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) retrieved  [b, s, n, r·d]
//            @binding(2) proj       [b·n, row_stride]  packed projections (the query block)
//            @binding(3) g_scratch  [b, s, n, r]  the logits G, kept between the two passes
//            @binding(4) concat     [b, n, s·d]  searches concatenated for the output projection
//            @binding(5), (6)       the selection's weights, declared by its piece
// Dispatch   one invocation per (b, σ, i), WG per workgroup, numbered linearly over x and y.
// Host constants  WG; one selection piece (io/select_dot.wgsl or io/select_mlp.wgsl).

struct Params {
    rows: u32,
    searches: u32,
    retrievals: u32,
    seq: u32,
    head: u32,
    row_stride: u32,
    q_offset: u32,
    scale: f32,
    hidden: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> retrieved: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read_write> g_scratch: array<f32>;
@group(0) @binding(4) var<storage, read_write> concat: array<f32>;

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
    let q_base = (b * n + i) * params.row_stride + params.q_offset + sigma * d;

    var g_max = -3.4028234663852886e38;
    for (var rho = 0u; rho < r; rho++) {
        let g = logit(ret_base + rho * d, q_base);
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
