// retrieval_mix.wgsl: the retrieval selection after blocked_attention.wgsl (CPU drivers).
//
// Computes   for each (b, σ, i), with Ret[ρ] = retrieved[(b·s + σ)·n + i, ρ·d ..][..d] (the
//            normalised retrieved vectors) and Q̃ = RQ · W_rk from the packed projection:
//              G[ρ] = scale · Q̃ · Ret[ρ],   C = softmax_ρ(G),
//              concat[b, i, σ·d + k] = Σ_ρ C[ρ] · Ret[ρ, k]
//            (SPEC §2.3 reassociated as in fused_attention.wgsl's epilogue).
// Bindings   @binding(0) params (uniform)  rows (= b·s·n), seq, searches, qt_offset (texels), scale
//            @binding(1) proj       [b·n, (3s + r)·d] texel rows
//            @binding(2) retrieved  [b·s·n, r·d] texel rows
//            @binding(3) concat     [b·n, s·d] texel rows, written (rgba32float, or rgba16float
//                                   for an f16 layer: alias ConcatTexels)
// Dispatch   one invocation per (b, σ, i), WG per workgroup, numbered linearly over x and y.
// Host constants  WG, DV (= d / 4), R, RPL; alias ConcatTexels (the written texel format).
// Includes   common/texel_rows.wgsl.

struct Params {
    rows: u32,
    seq: u32,
    searches: u32,
    qt_offset: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var proj: texture_2d_array<f32>;
@group(0) @binding(2) var retrieved: texture_2d_array<f32>;
@group(0) @binding(3) var concat: ConcatTexels;

const LOWEST: f32 = -3.4028234663852886e38;

fn proj_texel(row: u32, column: u32) -> vec4<f32> {
    return textureLoad(proj, texel_coords(row, column), texel_layer(row), 0);
}

fn retrieved_texel(row: u32, column: u32) -> vec4<f32> {
    return textureLoad(retrieved, texel_coords(row, column), texel_layer(row), 0);
}

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
    // row = (b·s + σ)·n + i
    let i = row % params.seq;
    let head = (row / params.seq) % params.searches;
    let b = row / (params.seq * params.searches);
    let token = b * params.seq + i;

    var logit: array<f32, R>;
    var logit_max = LOWEST;
    for (var rho = 0u; rho < R; rho++) {
        var g = 0.0;
        for (var t = 0u; t < DV; t++) {
            g += dot(proj_texel(token, params.qt_offset + head * DV + t), retrieved_texel(row, rho * DV + t));
        }
        logit[rho] = params.scale * g;
        logit_max = max(logit_max, logit[rho]);
    }
    var weight_sum = 0.0;
    for (var rho = 0u; rho < R; rho++) {
        logit[rho] = exp(logit[rho] - logit_max);
        weight_sum += logit[rho];
    }
    for (var t = 0u; t < DV; t++) {
        var o = vec4<f32>(0.0);
        for (var rho = 0u; rho < R; rho++) {
            o += logit[rho] * retrieved_texel(row, rho * DV + t);
        }
        let texel = head * DV + t;
        textureStore(concat, texel_coords(token, texel), texel_layer(token), to_ConcatTexels(o / weight_sum));
    }
}
