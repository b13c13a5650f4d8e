// search_chunk_softmax_texels.wgsl: search_chunk_softmax.wgsl with its matrices as texel rows,
// for the CPU family where texel loads work: the chunk's scores come from the texel GEMM's
// texel output and its weights go straight to the texel rows the next GEMM reads (no copy).
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), keys j < n:
//              L_j = scale·scores[g, j]    (scores = SQ_chunk·SKᵀ from gemm_texture)
//              m = max over allowed j of L_j,  l = Σ_allowed exp(L_j − m)    (workgroup-wide)
//              stats[row] = (m, l, 0, 0)
//              weights[g, j] = A_j · dropout(stream 0, row·n + j), and 0 for j ≥ n
//            (A_j: common/search_weights.wgsl)
// Bindings   @binding(0) params (uniform, common/train_params.wgsl; batch_index, search_index,
//                        begin/end = the chunk's query rows)
//            @binding(1) mask    [b, n] u32
//            @binding(2) stats   [b·s·n] vec4<f32>   the chunk's rows written
//            @binding(3) scores  [end − begin, n] texel rows, read
//            @binding(4) weights [end − begin, n] texel rows, written
// Dispatch   one workgroup of WG invocations per chunk row, numbered linearly over x and y; the
//            lanes stride over the row's texels (n / (4·WG) iterations each).
// Host constants  WG (a power of two), RPL.
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl,
//            common/search_weights.wgsl, common/workgroup_reduce.wgsl or
//            common/subgroup_reduce.wgsl (the host's Reduction),
//            common/texel_rows.wgsl.

@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: array<vec4<f32>>;
@group(0) @binding(3) var scores: texture_2d_array<f32>;
@group(0) @binding(4) var weights: texture_storage_2d_array<rgba32float, write>;

const LOWEST: f32 = -3.4028234663852886e38;

fn score_texel(g: u32, t: u32) -> vec4<f32> {
    return params.scale * textureLoad(scores, texel_coords(g, t), texel_layer(g), 0);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    invocation: Invocation,
) {
    let lane = invocation.index;
    // Uniform per workgroup, so every lane reaches the reductions' barriers.
    let group_index = group.x + group.y * groups.x;
    let rows = params.end - params.begin;
    let in_chunk = group_index < rows;
    let g = min(group_index, rows - 1u);
    let i = params.begin + g;
    let b = params.batch_index;
    let n = params.seq;
    let width = (n + 3u) / 4u;
    let row = (b * params.searches + params.search_index) * n + i;
    var top = vec4<f32>(LOWEST);
    for (var t = lane; t < width; t += WG) {
        top = max(top, select(vec4<f32>(LOWEST), score_texel(g, t), allowed_keys(b, i, t)));
    }
    let m = workgroup_max(invocation, max(max(top.x, top.y), max(top.z, top.w)));
    var sum = vec4<f32>(0.0);
    for (var t = lane; t < width; t += WG) {
        sum += select(vec4<f32>(0.0), exp(score_texel(g, t) - m), allowed_keys(b, i, t));
    }
    let l = workgroup_sum(invocation, sum.x + sum.y + sum.z + sum.w);
    if (!in_chunk) {
        return;
    }
    let row_stats = vec4<f32>(m, l, 0.0, 0.0);
    if (lane == 0u) {
        stats[row] = row_stats;
    }
    for (var t = lane; t < width; t += WG) {
        let logits = score_texel(g, t);
        let weight = search_weights4(row_stats, t, allowed_keys(b, i, t), logits);
        let factor = dropout_factors4(SEARCH_STREAM, row, t);
        textureStore(weights, texel_coords(g, t), texel_layer(g), weight * factor);
    }
}
