// io/gemm_out_logit_grads.wgsl: gemm_texture's output as the gradient of training's search
// logits, the epilogue of the backward's product dA = dRet_C·RV_bᵀ for a chunk of query rows
// (one (batch, search), the query rows begin .. begin + M): each store turns four columns of dA
// into dL, so the backward never stores dA. The row's statistics come in as its row state, read
// once per row (gemm_texture.wgsl's header says why). The weights A come from the score product's
// epilogue (io/gemm_out_search_weights.wgsl); the dropped weights Ã = A·f go where one of
// io/gemm_out_dropped_texels.wgsl (with dropout) and io/gemm_out_dropped_none.wgsl (without,
// where Ã = A and the products read A) puts them. Placed before the kernel by the host
// instead of io/gemm_out_texels.wgsl.
//
// Computes   for chunk row g (query i = begin + g, row = (b·s + σ)·n + i), key j, (l, D) from
//            stats[row], f_j = dropout(stream 0, row·n + j):
//              dL[g, j] = scale·A[g, j]·(f_j·dA[g, j] − D)   a row with an allowed key (l ≠ 0)
//                         0                                  a row without one
//              Ã[g, j]  = A[g, j]·f_j
//            A is 0 at keys the row may not attend and past n, and so is dL there.
// Bindings   @binding(3) out      [M, N / 4] texel rows, dL written (N = n)
//            @binding(4) stats    [b·s·n] vec4<f32>  (m, l, D) of every row
//            @binding(5) weights  [M, N / 4] texel rows, A read
//            @binding(6) dropped  [M, N / 4] texel rows, Ã written (io/gemm_out_dropped_texels.wgsl)
// Params     the epilogue fields: seq, searches, begin, batch_index, search_index, scale, and
//            dropout's dropout, seed_lo, seed_hi, threshold, keep_scale.
// Includes   common/philox.wgsl, common/train_dropout.wgsl.

@group(0) @binding(3) var out: OutTexels;
@group(0) @binding(4) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(5) var weights: texture_2d_array<f32>;

// A row's statistics (m, l, D), read once per row (a row past M reads the last).
alias RowState = vec4<f32>;
// Nothing is read once per four columns.
alias ColumnState = u32;

// The statistics' index of chunk row `row`: also dropout's row.
fn stats_index(row: u32) -> u32 {
    return (params.batch_index * params.searches + params.search_index) * params.seq + params.begin + row;
}

fn row_state(row: u32) -> RowState {
    return stats[stats_index(min(row, params.m - 1u))];
}

fn column_state(col: u32) -> ColumnState {
    return 0u;
}

// Stores dL (and Ã) of keys col .. col + 3 of chunk row `row` from their dA.
fn store(row: u32, col: u32, d_a: vec4<f32>, stats_row: RowState, per_columns: ColumnState) {
    // A tile's 16 columns may pass the texture's ceil(n / 4) texels.
    if (row >= params.m || col >= params.n) {
        return;
    }
    let t = col / 4u;
    let a = textureLoad(weights, texel_coords(row, t), texel_layer(row), 0);
    let factor = dropout_factors4(SEARCH_STREAM, stats_index(row), t);
    let d_logit = params.scale * a * (factor * d_a - stats_row.z);
    textureStore(out, texel_coords(row, t), texel_layer(row), to_OutTexels(select(vec4<f32>(0.0), d_logit, stats_row.y != 0.0)));
    store_dropped(row, t, a * factor);
}
