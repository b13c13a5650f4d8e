// search_chunk_backward_texels.wgsl: search_chunk_backward.wgsl with its matrices as texel rows,
// for the CPU family where texel loads work. It also writes the transposes the next GEMMs read
// as their left operands (dSK = dLᵀ·SQ, dRV = Ãᵀ·dRet), so that no GEMM operand is copied with
// a strided (transposing) read of an n-sized matrix, which ran at a quarter of the GEMM's speed.
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), key j, (m, l, D) =
//            stats[row], A_j from them (common/search_weights.wgsl), f_j = dropout(stream 0, row·n + j):
//              Ã[g, j]  = A_j·f_j
//              dL[g, j] = scale·A_j·(f_j·dA_j − D)  allowed j of a row with one, else 0
//            with scores = SQ_chunk·SKᵀ and d_weights = dA = dRet_chunk·RVᵀ from gemm_texture;
//            every entry past the chunk's rows or past n is 0.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl; batch_index, search_index,
//                        begin/end = the chunk's query rows)
//            @binding(1) mask        [b, n] u32
//            @binding(2) stats       [b·s·n] vec4<f32>   (m, l, D)
//            @binding(3) scores      [end − begin, n] texel rows, read
//            @binding(4) d_weights   [end − begin, n] texel rows (dA), read
//            @binding(5) d_logits    [end − begin, n] texel rows, dL written
//            @binding(6) weights_t   [n, end − begin] texel rows, Ãᵀ written
//            @binding(7) d_logits_t  [n, end − begin] texel rows, dLᵀ written
// Dispatch   one invocation per 4 × 4 block (4 chunk rows × one texel of keys), WG per
//            workgroup, numbered linearly over x and y: block = row_block · ceil(n/4) + texel.
// Host constants  WG, RPL.
// Includes   common/philox.wgsl, common/train_params.wgsl, common/search_weights.wgsl,
//            common/texel_rows.wgsl.

@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(3) var scores: texture_2d_array<f32>;
@group(0) @binding(4) var d_weights: texture_2d_array<f32>;
@group(0) @binding(5) var d_logits: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(6) var weights_t: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(7) var d_logits_t: texture_storage_2d_array<rgba32float, write>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = linear_index(group, groups, lane);
    let n = params.seq;
    let rows = params.end - params.begin;
    let width = (n + 3u) / 4u;
    if (index >= ((rows + 3u) / 4u) * width) {
        return;
    }
    let block = index / width;
    let t = index % width;
    let b = params.batch_index;
    // weight[k], d_logit[k]: chunk row 4·block + k at keys 4t .. 4t + 3.
    var weight = array<vec4<f32>, 4>();
    var d_logit = array<vec4<f32>, 4>();
    for (var k = 0u; k < 4u; k++) {
        let g = 4u * block + k;
        if (g >= rows) {
            break;
        }
        let i = params.begin + g;
        let row = (b * params.searches + params.search_index) * n + i;
        let row_stats = stats[row];
        let logits = params.scale * textureLoad(scores, texel_coords(g, t), texel_layer(g), 0);
        let d_a = textureLoad(d_weights, texel_coords(g, t), texel_layer(g), 0);
        for (var c = 0u; c < 4u; c++) {
            let j = 4u * t + c;
            if (j < n) {
                let allowed = key_allowed(b, i, j);
                let a = search_weight(row_stats, allowed, logits[c]);
                let factor = dropout_factor(SEARCH_STREAM, row, n, j);
                weight[k][c] = a * factor;
                if (allowed && row_stats.y != 0.0) {
                    d_logit[k][c] = params.scale * a * (factor * d_a[c] - row_stats.z);
                }
            }
        }
        textureStore(d_logits, texel_coords(g, t), texel_layer(g), d_logit[k]);
    }
    for (var c = 0u; c < 4u; c++) {
        let j = 4u * t + c;
        if (j < n) {
            let w = vec4<f32>(weight[0][c], weight[1][c], weight[2][c], weight[3][c]);
            let dl = vec4<f32>(d_logit[0][c], d_logit[1][c], d_logit[2][c], d_logit[3][c]);
            textureStore(weights_t, texel_coords(j, block), texel_layer(j), w);
            textureStore(d_logits_t, texel_coords(j, block), texel_layer(j), dl);
        }
    }
}
