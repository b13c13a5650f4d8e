// gemm_texture.wgsl: the projection GEMM for CPU drivers, y = x · Wᵀ, operands read as texels.
//
// Computes   out[m, c] = Σ_k lhs[m, k] · rhs[c, k]      (M × N output, K reduction)
// Bindings   @binding(0) params (uniform)  m, n, tiles_n, the texel slice [k_begin, k_end) of
//                        the reduction this dispatch adds (the host splits K only where the
//                        driver caps loop iterations), accumulate (add to the buffer output),
//                        where a buffer output's rows lie: row r from element
//                        out_offset + r·out_stride (training writes column blocks, ops/matmul.rs),
//                        k, the reduction's length (rows of a stored transpose past it
//                        read as 0), and an epilogue's fields
//            @binding(1) lhs      [M, K] texel rows (columns past K are 0), or with LHS_T its
//                                 transpose [K, M] as texel rows
//            @binding(2) rhs      [N, K] texel rows (PyTorch weight layout, padded likewise),
//                                 or with RHS_T its transpose [K, N]
//                                 Both are read through `load_LhsTexels`/`load_RhsTexels`: as
//                                 read-only storage textures of their format where the device
//                                 allows, else sampled (the host's TexelRead; on lavapipe the
//                                 storage read skips the sampled fetch's per-lane mip level,
//                                 about a fifth less time, BENCHMARKS.md "Texels read as
//                                 storage")
//            @binding(3) out      [M, N]: an f32 buffer (io/gemm_out_buffer.wgsl) or texel rows
//                                 (io/gemm_out_texels.wgsl: where N % 4 != 0, the columns past
//                                 N of a row's last texel are not zero), or texel rows of what
//                                 an epilogue makes of the product (training's search weights,
//                                 io/gemm_out_search_weights.wgsl, and logit gradients,
//                                 io/gemm_out_logit_grads.wgsl, which bind more from
//                                 @binding(4) and read the params' epilogue fields); the host
//                                 places one of these pieces first, which declares `out`,
//                                 `store`, and what `store` reads once per row and once per
//                                 four columns: `RowState`, `row_state`, `ColumnState`,
//                                 `column_state` (the plain outputs take them from
//                                 common/gemm_no_state.wgsl)
// Dispatch   one workgroup per (WG·16 rows) × 16 columns, numbered linearly over x and y:
//            group = tile_m · tiles_n + tile_n. Invocation `lane` owns sixteen rows of the tile
//            (four blocks of four, `lane_row`) and its 16 columns, held as sixteen 4 × 4 matrix
//            accumulators. Each step over 4 values of k fetches 16 + 16 texels and does 1024
//            multiply-adds as 4 × 4 matrix products: on a SIMD CPU the lanes are 8 consecutive
//            rows (with LHS_T 8 consecutive blocks of four rows), texel fetches are vector
//            gathers, and no private array is indexed dynamically: the stores are straight-line
//            calls with constant indices, because a store loop over private arrays that the
//            driver does not unroll indexes them per lane (on lavapipe such a loop ran at half
//            the speed of the products).
//            Why sixteen rows: lavapipe gathers every fetch lane by lane, uniform or not, so the
//            fetches per multiply-add set the speed. Sixteen rows fetch 32 texels per 1024
//            multiply-adds where eight fetched 24 per 512; measured on lavapipe (BENCHMARKS.md,
//            "Sixteen rows per lane"), 18–27 % less time at 1024³ and on training's narrow and
//            short-K products. Sixteen × 32 columns measured no faster than 16 × 16.
//            Why per-row and per-column state: an epilogue's loads that depend on the row alone
//            (training's statistics) or on the column alone (the key mask) are made once per
//            row and per four columns (16 row states and 4 column states per lane), not once
//            per stored texel (64 per lane, each with the mask's four keys): lavapipe gathers
//            every load lane by lane, and the search weights' epilogue took 2.2× the time it
//            took with those loads replaced by constants (BENCHMARKS.md, "The epilogues' loads
//            hoisted").
//            Why the stored transposes: training's backward multiplies by the transpose of a
//            [rows, n] matrix it has just written (dLᵀ·SQ, Ãᵀ·dRet) and by operands whose
//            untransposed copies it already holds; reading them transposed here costs one 4 × 4
//            transpose per block, where writing or copying the transpose cost a strided texel
//            store per value on lavapipe (ops/attention_chunk_texels.rs, ARCHITECTURE decision 17).
// Host constants  WG, RPL, LHS_T, RHS_T (bool); LhsTexels, RhsTexels (TexelRead: the type and
//            its load function).
// Includes   common/texel_rows.wgsl, and those an epilogue piece calls (its `includes`).

struct Params {
    m: u32,
    n: u32,
    tiles_n: u32,
    k_begin: u32,
    k_end: u32,
    accumulate: u32,
    out_offset: u32,
    out_stride: u32,
    k: u32,
    // An epilogue piece's (ops::gemm::EpilogueFields: the training core's fields of the same
    // names, common/train_params.wgsl); zero for a plain product.
    seq: u32,
    searches: u32,
    causal: u32,
    begin: u32,
    batch_index: u32,
    search_index: u32,
    dropout: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    keep_scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var lhs: LhsTexels;
@group(0) @binding(2) var rhs: RhsTexels;

// Row i < 16 of the lane's rows in the tile from row `base`: lane + i·WG, so that the lanes of a
// SIMD vector read consecutive rows; with LHS_T, blocks of four consecutive rows (one texel of
// the stored transpose): base + (i / 4)·4·WG + 4·lane + i % 4.
fn lane_row(base: u32, lane: u32, i: u32) -> u32 {
    if (LHS_T) {
        return base + (i / 4u) * 4u * WG + 4u * lane + i % 4u;
    }
    return base + lane + i * WG;
}

// Block `blk` of the lane's rows (lane_row 4·blk .. 4·blk + 3) at k-texel k, as a matrix with
// entry [j][i] = lhs[row i, 4k + j].
fn lhs_block(base: u32, lane: u32, blk: u32, k: u32) -> mat4x4<f32> {
    if (LHS_T) {
        // Column j is row 4k + j of the stored transpose at the texel of the four rows.
        let q = min(base / 4u + blk * WG + lane, (params.m - 1u) / 4u);
        return mat4x4<f32>(lhs_t_texel(4u * k, q), lhs_t_texel(4u * k + 1u, q), lhs_t_texel(4u * k + 2u, q), lhs_t_texel(4u * k + 3u, q));
    }
    let r = lane_row(base, lane, 4u * blk);
    return transpose(mat4x4<f32>(lhs_texel(r, k), lhs_texel(r + WG, k), lhs_texel(r + 2u * WG, k), lhs_texel(r + 3u * WG, k)));
}

fn lhs_texel(row: u32, k: u32) -> vec4<f32> {
    let r = min(row, params.m - 1u);
    return load_LhsTexels(texel_coords(r, k), texel_layer(r));
}

// Texel q of row `row` of the stored transpose; rows past K are 0.
fn lhs_t_texel(row: u32, q: u32) -> vec4<f32> {
    let r = min(row, params.k - 1u);
    return select(vec4<f32>(0.0), load_LhsTexels(texel_coords(r, q), texel_layer(r)), row < params.k);
}

// Columns c .. c + 3 at k-texel k: column j of the matrix is weight row c + j.
fn rhs_block(c: u32, k: u32) -> mat4x4<f32> {
    if (RHS_T) {
        // Rows 4k + i of the stored transpose hold columns c .. c + 3 at k = 4k + i.
        let q = min(c / 4u, (params.n - 1u) / 4u);
        return transpose(mat4x4<f32>(rhs_t_texel(4u * k, q), rhs_t_texel(4u * k + 1u, q), rhs_t_texel(4u * k + 2u, q), rhs_t_texel(4u * k + 3u, q)));
    }
    return mat4x4<f32>(rhs_texel(c, k), rhs_texel(c + 1u, k), rhs_texel(c + 2u, k), rhs_texel(c + 3u, k));
}

fn rhs_texel(col: u32, k: u32) -> vec4<f32> {
    let c = min(col, params.n - 1u);
    return load_RhsTexels(texel_coords(c, k), texel_layer(c));
}

fn rhs_t_texel(row: u32, q: u32) -> vec4<f32> {
    let r = min(row, params.k - 1u);
    return select(vec4<f32>(0.0), load_RhsTexels(texel_coords(r, q), texel_layer(r)), row < params.k);
}

// The output piece's row states of an accumulator block's four rows from `row`.
struct BlockRows {
    r0: RowState,
    r1: RowState,
    r2: RowState,
    r3: RowState,
}

// The rows of a block are ROW_STEP apart: WG (lane_row), or 1 with LHS_T.
const ROW_STEP: u32 = select(WG, 1u, LHS_T);

fn block_rows(row: u32) -> BlockRows {
    return BlockRows(row_state(row), row_state(row + ROW_STEP), row_state(row + 2u * ROW_STEP), row_state(row + 3u * ROW_STEP));
}

// Columns c .. c + 3 of an accumulator block's four rows from `row` (entry [j][i] = (row i,
// column c + j)): one texel or four values per row, with the rows' states (`block_rows(row)`)
// and the four columns' (`column_state(c)`).
fn store_rows(row: u32, c: u32, block: mat4x4<f32>, rows: BlockRows, columns: ColumnState) {
    let values = transpose(block);
    store(row, c, values[0], rows.r0, columns);
    store(row + ROW_STEP, c, values[1], rows.r1, columns);
    store(row + 2u * ROW_STEP, c, values[2], rows.r2, columns);
    store(row + 3u * ROW_STEP, c, values[3], rows.r3, columns);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile = group.x + group.y * groups.x;
    let base = (tile / params.tiles_n) * WG * 16u;
    let col0 = (tile % params.tiles_n) * 16u;
    if (col0 >= params.n) {
        return;
    }
    // acc_tc: rows of block t (lane_row 4t ..), columns col0 + 4c .. + 3; entry [j][i] = (row i, col j).
    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc02 = mat4x4<f32>();
    var acc03 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();
    var acc12 = mat4x4<f32>();
    var acc13 = mat4x4<f32>();
    var acc20 = mat4x4<f32>();
    var acc21 = mat4x4<f32>();
    var acc22 = mat4x4<f32>();
    var acc23 = mat4x4<f32>();
    var acc30 = mat4x4<f32>();
    var acc31 = mat4x4<f32>();
    var acc32 = mat4x4<f32>();
    var acc33 = mat4x4<f32>();
    for (var k = params.k_begin; k < params.k_end; k++) {
        let a0 = lhs_block(base, lane, 0u, k);
        let a1 = lhs_block(base, lane, 1u, k);
        let a2 = lhs_block(base, lane, 2u, k);
        let a3 = lhs_block(base, lane, 3u, k);
        let b0 = rhs_block(col0, k);
        let b1 = rhs_block(col0 + 4u, k);
        let b2 = rhs_block(col0 + 8u, k);
        let b3 = rhs_block(col0 + 12u, k);
        acc00 += a0 * b0;
        acc01 += a0 * b1;
        acc02 += a0 * b2;
        acc03 += a0 * b3;
        acc10 += a1 * b0;
        acc11 += a1 * b1;
        acc12 += a1 * b2;
        acc13 += a1 * b3;
        acc20 += a2 * b0;
        acc21 += a2 * b1;
        acc22 += a2 * b2;
        acc23 += a2 * b3;
        acc30 += a3 * b0;
        acc31 += a3 * b1;
        acc32 += a3 * b2;
        acc33 += a3 * b3;
    }
    let r0 = lane_row(base, lane, 0u);
    let r1 = lane_row(base, lane, 4u);
    let r2 = lane_row(base, lane, 8u);
    let r3 = lane_row(base, lane, 12u);
    let rows0 = block_rows(r0);
    let rows1 = block_rows(r1);
    let rows2 = block_rows(r2);
    let rows3 = block_rows(r3);
    let cols0 = column_state(col0);
    let cols1 = column_state(col0 + 4u);
    let cols2 = column_state(col0 + 8u);
    let cols3 = column_state(col0 + 12u);
    store_rows(r0, col0, acc00, rows0, cols0);
    store_rows(r0, col0 + 4u, acc01, rows0, cols1);
    store_rows(r0, col0 + 8u, acc02, rows0, cols2);
    store_rows(r0, col0 + 12u, acc03, rows0, cols3);
    store_rows(r1, col0, acc10, rows1, cols0);
    store_rows(r1, col0 + 4u, acc11, rows1, cols1);
    store_rows(r1, col0 + 8u, acc12, rows1, cols2);
    store_rows(r1, col0 + 12u, acc13, rows1, cols3);
    store_rows(r2, col0, acc20, rows2, cols0);
    store_rows(r2, col0 + 4u, acc21, rows2, cols1);
    store_rows(r2, col0 + 8u, acc22, rows2, cols2);
    store_rows(r2, col0 + 12u, acc23, rows2, cols3);
    store_rows(r3, col0, acc30, rows3, cols0);
    store_rows(r3, col0 + 4u, acc31, rows3, cols1);
    store_rows(r3, col0 + 8u, acc32, rows3, cols2);
    store_rows(r3, col0 + 12u, acc33, rows3, cols3);
}
