// io/select_dot.wgsl: retrieval_select's logits by the dot product, as SPEC §2.3 writes it:
// G = Σ_k' (scale · RQ[k']) · RK[k'] with RK = Ret · W_rkᵀ. Placed before the kernel by the
// host instead of io/select_mlp.wgsl.
//
// Bindings   @binding(5) w_rk  [d, d]  PyTorch layout [out, in]

@group(0) @binding(5) var<storage, read> w_rk: array<f32>;

// The logit of the retrieved vector at `ret` for the query block at `q`.
fn logit(ret: u32, q: u32) -> f32 {
    let d = params.head;
    var g = 0.0;
    for (var k_out = 0u; k_out < d; k_out++) {
        var rk = 0.0;
        for (var k = 0u; k < d; k++) {
            rk += retrieved[ret + k] * w_rk[k_out * d + k];
        }
        g += (params.scale * proj[q + k_out]) * rk;
    }
    return g;
}
