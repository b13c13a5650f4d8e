// search_chunk_backward_texels.wgsl: search_chunk_backward.wgsl with its matrices as texel rows,
// for the CPU family where texel loads work. The products that need the transposes of what it
// writes (dSK = dLᵀ·SQ, dRV = Ãᵀ·dRet) read them transposed (gemm_texture.wgsl, LHS_T): writing
// the transposes here was half of this kernel's time on lavapipe, whose texel stores to
// scattered rows go lane by lane (ARCHITECTURE decision 17).
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), key j, (m, l, D) =
//            stats[row], A_j from them (common/search_weights.wgsl), f_j = dropout(stream 0, row·n + j):
//              Ã[g, j]  = A_j·f_j
//              dL[g, j] = scale·A_j·(f_j·dA_j − D)  allowed j of a row with one, else 0
//            with scores = SQ_chunk·SKᵀ and d_weights = dA = dRet_chunk·RVᵀ from gemm_texture;
//            every entry past n is 0.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl; batch_index, search_index,
//                        begin/end = the chunk's query rows)
//            @binding(1) mask        [b, n] u32
//            @binding(2) stats       [b·s·n] vec4<f32>   (m, l, D)
//            @binding(3) scores      [end − begin, n] texel rows, read
//            @binding(4) d_weights   [end − begin, n] texel rows (dA), read
//            @binding(5) d_logits    [end − begin, n] texel rows, dL written
//            @binding(6) weights     [end − begin, n] texel rows, Ã written
// Dispatch   one invocation per texel (chunk row g, keys 4t .. 4t + 3), WG per workgroup,
//            numbered linearly over x and y: index = g · ceil(n/4) + t, so that the lanes of a
//            SIMD vector read and write consecutive texels of one row.
// Host constants  WG, RPL.
// Includes   common/philox.wgsl, common/train_params.wgsl, common/search_weights.wgsl,
//            common/texel_rows.wgsl.

@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(3) var scores: texture_2d_array<f32>;
@group(0) @binding(4) var d_weights: texture_2d_array<f32>;
@group(0) @binding(5) var d_logits: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(6) var weights: texture_storage_2d_array<rgba32float, write>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = linear_index(group, groups, lane);
    let n = params.seq;
    let width = (n + 3u) / 4u;
    if (index >= (params.end - params.begin) * width) {
        return;
    }
    let g = index / width;
    let t = index % width;
    let b = params.batch_index;
    let i = params.begin + g;
    let row = (b * params.searches + params.search_index) * n + i;
    let stats_row = stats[row];
    let logits = params.scale * textureLoad(scores, texel_coords(g, t), texel_layer(g), 0);
    let d_a = textureLoad(d_weights, texel_coords(g, t), texel_layer(g), 0);
    let allowed = allowed_keys(b, i, t);
    let a = search_weights4(stats_row, t, allowed, logits);
    let factor = dropout_factors4(SEARCH_STREAM, row, t);
    let d_logit = params.scale * a * (factor * d_a - stats_row.z);
    let kept = allowed & vec4<bool>(stats_row.y != 0.0);
    textureStore(d_logits, texel_coords(g, t), texel_layer(g), select(vec4<f32>(0.0), d_logit, kept));
    textureStore(weights, texel_coords(g, t), texel_layer(g), a * factor);
}
