// common/train_dropout.wgsl: dropout's inline mask in the training kernels, from the fields
// `dropout`, `seed_lo`, `seed_hi`, `threshold`, `keep_scale` and `seq` of the kernel's `params`
// (common/train_params.wgsl's block, or gemm_texture.wgsl's, whose epilogue fields carry the
// same names); common/philox.wgsl must come too.
//
// Dropout keeps A's element ((b·s + σ)·n + i)·n + j of stream 0 and C's ((b·s + σ)·n + i)·r + ρ
// of stream 1 (SPEC §6.4), scaled by keep_scale = 1/(1 − p).

const SEARCH_STREAM: u32 = 0u;
const SELECTION_STREAM: u32 = 1u;

// The dropout factor of element `row·width + col` of `stream`: keep_scale or 0 (1 without dropout).
fn dropout_factor(stream: u32, row: u32, width: u32, col: u32) -> f32 {
    if (params.dropout == 0u) {
        return 1.0;
    }
    let base = philox_mul_hi_lo(row, width);
    let lo = base.y + col;
    let hi = base.x + select(0u, 1u, lo < base.y);
    let keep = dropout_keeps(vec2<u32>(params.seed_lo, params.seed_hi), stream, vec2<u32>(lo, hi), params.threshold);
    return select(0.0, params.keep_scale, keep);
}

// The dropout factors of keys 4t .. 4t + 3 of `row` (1 without dropout; past n unused).
fn dropout_factors4(stream: u32, row: u32, t: u32) -> vec4<f32> {
    var factor = vec4<f32>(1.0);
    if (params.dropout != 0u) {
        for (var c = 0u; c < 4u; c++) {
            factor[c] = dropout_factor(stream, row, params.seq, min(4u * t + c, params.seq - 1u));
        }
    }
    return factor;
}
