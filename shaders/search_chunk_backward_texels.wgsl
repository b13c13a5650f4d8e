// search_chunk_backward_texels.wgsl: search_chunk_backward.wgsl with its matrices as texel rows,
// for the CPU family where texel loads work. It also writes the transposes the next GEMMs read
// as their left operands (dSK = dLᵀ·SQ, dRV = Ãᵀ·dRet), so that no GEMM operand is copied with
// a strided (transposing) read of an n-sized matrix: on lavapipe those copies were a large share
// of the backward (ARCHITECTURE decision 17).
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

// Ã and dL of chunk row g at keys 4t .. 4t + 3; zeros for a row past the chunk or keys past n.
struct BlockRow {
    weight: vec4<f32>,
    d_logit: vec4<f32>,
}

fn block_row(g: u32, t: u32) -> BlockRow {
    let n = params.seq;
    if (g >= params.end - params.begin) {
        return BlockRow(vec4<f32>(0.0), vec4<f32>(0.0));
    }
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
    let has_keys = stats_row.y != 0.0;
    return BlockRow(a * factor, select(vec4<f32>(0.0), d_logit, allowed & vec4<bool>(has_keys)));
}

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
    let g = 4u * block;
    let r0 = block_row(g, t);
    let r1 = block_row(g + 1u, t);
    let r2 = block_row(g + 2u, t);
    let r3 = block_row(g + 3u, t);
    let d_rows = array<vec4<f32>, 4>(r0.d_logit, r1.d_logit, r2.d_logit, r3.d_logit);
    for (var k = 0u; k < 4u; k++) {
        if (g + k < rows) {
            textureStore(d_logits, texel_coords(g + k, t), texel_layer(g + k), d_rows[k]);
        }
    }
    // Column c of the transposed blocks is key 4t + c's texel of the four rows.
    let weight_t = transpose(mat4x4<f32>(r0.weight, r1.weight, r2.weight, r3.weight));
    let d_logit_t = transpose(mat4x4<f32>(r0.d_logit, r1.d_logit, r2.d_logit, r3.d_logit));
    for (var c = 0u; c < 4u; c++) {
        let j = 4u * t + c;
        if (j < n) {
            textureStore(weights_t, texel_coords(j, block), texel_layer(j), weight_t[c]);
            textureStore(d_logits_t, texel_coords(j, block), texel_layer(j), d_logit_t[c]);
        }
    }
}
