// common/search_weights.wgsl: the search weights as the training kernels recompute them (the
// kernel or io piece declares `mask`, and its `params` has `seq` and `causal`:
// common/train_params.wgsl's block, or gemm_texture.wgsl's epilogue fields).
//
// Layouts (src/ops/attention_train.rs; row = (b·s + σ)·n + i, token = b·n + i):
//   proj   [b·n, row_stride]   columns [SQ | SK | RQ | RV] at q_offset, k_offset, -, v_offset
//   mask   [b, n] u32          0 = key masked
//   stats  [b·s·n] vec4        (running max m, running sum l, D = Σ_ρ dRet_ρ·Ret_ρ, 0)
// The search weight of allowed key j is A_j = exp(L_j − m)/l with L_j = scale·SQ_i·SK_j; a row
// with no allowed key (l = 0) weighs every key 1/n (the reference's masked_fill semantics).

fn key_allowed(b: u32, i: u32, j: u32) -> bool {
    return mask[b * params.seq + j] != 0u && (params.causal == 0u || j <= i);
}

// A_j from the row's statistics: 1/n on a row with no allowed key, else exp(L − m)/l where
// allowed and 0 where not. `score` is only read where the key is allowed.
fn search_weight(stats: vec4<f32>, allowed: bool, score: f32) -> f32 {
    if (stats.y == 0.0) {
        return 1.0 / f32(params.seq);
    }
    return select(0.0, exp(score - stats.x) / stats.y, allowed);
}

// Which of keys 4t .. 4t + 3 row i may attend (false past n): the texel kernels' four keys.
fn allowed_keys(b: u32, i: u32, t: u32) -> vec4<bool> {
    return causal_keys(i, t, unmasked_keys(b, t));
}

// Which of keys 4t .. 4t + 3 batch b's mask allows (false past n), whatever the row: what a
// kernel may read once for many rows.
fn unmasked_keys(b: u32, t: u32) -> vec4<bool> {
    var unmasked = vec4<bool>(false);
    for (var c = 0u; c < 4u; c++) {
        let j = 4u * t + c;
        unmasked[c] = j < params.seq && mask[b * params.seq + j] != 0u;
    }
    return unmasked;
}

// `unmasked` (unmasked_keys of keys 4t .. 4t + 3) limited to the keys row i may attend.
fn causal_keys(i: u32, t: u32, unmasked: vec4<bool>) -> vec4<bool> {
    let keys = vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u);
    // Parenthesised: WGSL (Tint) rejects `|` beside `<=` without them, where naga takes C's
    // precedence.
    return unmasked & (vec4<bool>(params.causal == 0u) | (keys <= vec4<u32>(i)));
}

// search_weight of keys 4t .. 4t + 3 at once (`logits` scaled; 0 past n).
fn search_weights4(stats: vec4<f32>, t: u32, allowed: vec4<bool>, logits: vec4<f32>) -> vec4<f32> {
    if (stats.y == 0.0) {
        let in_row = vec4<u32>(4u * t) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(params.seq);
        return select(vec4<f32>(0.0), vec4<f32>(1.0 / f32(params.seq)), in_row);
    }
    return select(vec4<f32>(0.0), exp(logits - stats.x) / stats.y, allowed);
}
