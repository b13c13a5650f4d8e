// io/gemm_out_search_weights.wgsl: gemm_texture's output as training's search weights, the
// epilogue of the backward's score product S = SQ_C·SK_bᵀ for a chunk of query rows (one
// (batch, search), the query rows begin .. begin + M): each store turns four scores into the
// weights A (common/search_weights.wgsl) and stores those, so the backward never stores S. The
// row's statistics and the four keys' mask come in as the row and column state, read once per
// row and per four columns (gemm_texture.wgsl's header says why).
// Placed before the kernel by the host instead of io/gemm_out_texels.wgsl.
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), key j, (m, l) = stats[row]:
//              A[g, j] = exp(scale·S[g, j] − m)/l   allowed j of a row with one
//                        1/n                        j < n of a row without one (l = 0)
//                        0                          a key the row may not attend, and j ≥ n
//            so that A is 0 wherever the logit gradient is (io/gemm_out_logit_grads.wgsl relies
//            on that), and every column past n is 0 (the products that read A need it).
// Bindings   @binding(3) out    [M, N / 4] texel rows, A written (N = n)
//            @binding(4) stats  [b·s·n] vec4<f32>  (m, l, D) of every row
//            @binding(5) mask   [b, n] u32          0 = key masked
// Params     the epilogue fields: seq, searches, causal, begin, batch_index, search_index, scale.
// Includes   common/search_weights.wgsl.

@group(0) @binding(3) var out: OutTexels;
@group(0) @binding(4) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;

// A row's statistics (m, l, D), read once per row (a row past M reads the last).
alias RowState = vec4<f32>;
// Which of keys col .. col + 3 the mask allows and that lie before n, read once per four
// columns.
alias ColumnState = vec4<bool>;

fn row_state(row: u32) -> RowState {
    let i = params.begin + min(row, params.m - 1u);
    return stats[(params.batch_index * params.searches + params.search_index) * params.seq + i];
}

fn column_state(col: u32) -> ColumnState {
    return unmasked_keys(params.batch_index, col / 4u);
}

// Stores the weights of keys col .. col + 3 of chunk row `row` from their scores.
fn store(row: u32, col: u32, scores: vec4<f32>, stats_row: RowState, unmasked: ColumnState) {
    // A tile's 16 columns may pass the texture's ceil(n / 4) texels.
    if (row >= params.m || col >= params.n) {
        return;
    }
    let t = col / 4u;
    let allowed = causal_keys(params.begin + row, t, unmasked);
    let a = search_weights4(stats_row, t, allowed, params.scale * scores);
    textureStore(out, texel_coords(row, t), texel_layer(row), to_OutTexels(a));
}
