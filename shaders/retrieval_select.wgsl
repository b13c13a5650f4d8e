// retrieval_select.wgsl: retrieval attention over the r retrieved vectors of each search.
//
// Computes   for each (b, σ, i), with Ret[ρ] = retrieved[b, σ, i, ρ·d ..][..d] and
//            RQ = proj[(b·n + i)·row_stride + rq_offset + σ·d ..][..d]:
//              RK[ρ, k'] = Σ_k Ret[ρ, k] · W_rk[k', k]                  (RK = Ret · W_rkᵀ)
//              G[ρ]      = Σ_k' (scale · RQ[k']) · RK[ρ, k']
//              C         = softmax_ρ(G - max G)
//              concat[b, i, σ·d + k] = Σ_ρ C[ρ] · Ret[ρ, k]
//            as SPEC §2.3 writes it (the fused kernel uses the reassociated G = (RQ·W_rk)·Ret).
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) retrieved  [b, s, n, r·d]
//            @binding(2) proj       [b·n, row_stride]  packed projections (RQ block)
//            @binding(3) w_rk       [d, d]  PyTorch layout [out, in]
//            @binding(4) g_scratch  [b, s, n, r]  the logits G, kept between the two passes
//            @binding(5) concat     [b, n, s·d]  searches concatenated for the output projection
// Dispatch   one invocation per (b, σ, i), WG per workgroup, numbered linearly over x and y.
// Host constants  WG.

struct Params {
    rows: u32,
    searches: u32,
    retrievals: u32,
    seq: u32,
    head: u32,
    row_stride: u32,
    rq_offset: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> retrieved: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read> w_rk: array<f32>;
@group(0) @binding(4) var<storage, read_write> g_scratch: array<f32>;
@group(0) @binding(5) var<storage, read_write> concat: array<f32>;

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
    let rq_base = (b * n + i) * params.row_stride + params.rq_offset + sigma * d;

    var g_max = -3.4028234663852886e38;
    for (var rho = 0u; rho < r; rho++) {
        var g = 0.0;
        for (var k_out = 0u; k_out < d; k_out++) {
            var rk = 0.0;
            for (var k = 0u; k < d; k++) {
                rk += retrieved[ret_base + rho * d + k] * w_rk[k_out * d + k];
            }
            g += (params.scale * proj[rq_base + k_out]) * rk;
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
