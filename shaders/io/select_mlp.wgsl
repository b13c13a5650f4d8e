// io/select_mlp.wgsl: retrieval_select's logits by an MLP score network (fairseq's and
// xformers' `nonlinear=True`, lowered as SPEC.md §9.1 says): the hidden units' query inputs u
// sit in the query block, G = Σ_t w_score[t] · relu(Σ_k w_hidden[t, k] · Ret[k] + u[t]) (the
// output bias cancels in the softmax). Placed before the kernel by the host instead of
// io/select_dot.wgsl.
//
// Bindings   @binding(5) w_hidden  [H, d]  the hidden layer's weights on the retrieved vector
//            @binding(6) w_score   [H]     the output unit's weights (H = params.hidden)

@group(0) @binding(5) var<storage, read> w_hidden: array<f32>;
@group(0) @binding(6) var<storage, read> w_score: array<f32>;

// The logit of the retrieved vector at `ret` for the query block at `q`.
fn logit(ret: u32, q: u32) -> f32 {
    let d = params.head;
    var g = 0.0;
    for (var t = 0u; t < params.hidden; t++) {
        var pre = proj[q + t];
        for (var k = 0u; k < d; k++) {
            pre += w_hidden[t * d + k] * retrieved[ret + k];
        }
        g += w_score[t] * max(pre, 0.0);
    }
    return g;
}
