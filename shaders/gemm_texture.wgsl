// gemm_texture.wgsl: the projection GEMM for CPU drivers, y = x · Wᵀ, operands read as texels.
//
// Computes   out[m, c] = Σ_k lhs[m, k] · rhs[c, k]      (M × N output, K reduction)
// Bindings   @binding(0) params (uniform)  m, n, tiles_n, the texel slice [k_begin, k_end) of
//                        the reduction this dispatch adds (the host splits K only where the
//                        driver caps loop iterations), accumulate (add to the buffer output),
//                        and where a buffer output's rows lie: row r from element
//                        out_offset + r·out_stride (training writes column blocks, ops/matmul.rs)
//            @binding(1) lhs      [M, K] texel rows (columns past K are 0)
//            @binding(2) rhs      [N, K] texel rows (PyTorch weight layout, padded likewise)
//            @binding(3) out      [M, N]: an f32 buffer (io/gemm_out_buffer.wgsl) or texel rows
//                                 with N % 4 == 0 (io/gemm_out_texels.wgsl); the host places
//                                 one of the two pieces first, which declares `out` and `store`
// Dispatch   one workgroup per (WG·8 rows) × 16 columns, numbered linearly over x and y:
//            group = tile_m · tiles_n + tile_n. Invocation `lane` owns rows row0 + t·WG
//            (t < 8, two blocks of four) and the 16 columns of the tile, held as eight 4 × 4
//            matrix accumulators. Each step over 4 values of k fetches 8 + 16 texels and does
//            512 multiply-adds as 4 × 4 matrix products: on a SIMD CPU the lanes are 8
//            consecutive rows, texel fetches are vector gathers, and no private array is
//            indexed dynamically.
// Host constants  WG, RPL.
// Includes   common/texel_rows.wgsl.

struct Params {
    m: u32,
    n: u32,
    tiles_n: u32,
    k_begin: u32,
    k_end: u32,
    accumulate: u32,
    out_offset: u32,
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var lhs: texture_2d_array<f32>;
@group(0) @binding(2) var rhs: texture_2d_array<f32>;

// Rows (k-texel k of four rows r, r + WG, r + 2·WG, r + 3·WG) as a matrix whose columns are
// the rows' texels, transposed: entry [i][j] = lhs[row i, 4k + j].
fn lhs_block(r: u32, k: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(lhs_texel(r, k), lhs_texel(r + WG, k), lhs_texel(r + 2u * WG, k), lhs_texel(r + 3u * WG, k)));
}

fn lhs_texel(row: u32, k: u32) -> vec4<f32> {
    let r = min(row, params.m - 1u);
    return textureLoad(lhs, texel_coords(r, k), texel_layer(r), 0);
}

// Columns c .. c + 3 at k-texel k: column j of the matrix is weight row c + j.
fn rhs_block(c: u32, k: u32) -> mat4x4<f32> {
    return mat4x4<f32>(rhs_texel(c, k), rhs_texel(c + 1u, k), rhs_texel(c + 2u, k), rhs_texel(c + 3u, k));
}

fn rhs_texel(col: u32, k: u32) -> vec4<f32> {
    let c = min(col, params.n - 1u);
    return textureLoad(rhs, texel_coords(c, k), texel_layer(c), 0);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile = group.x + group.y * groups.x;
    let row0 = (tile / params.tiles_n) * WG * 8u + lane;
    let col0 = (tile % params.tiles_n) * 16u;
    if (col0 >= params.n) {
        return;
    }
    // acc_tc: rows of block t (t·4·WG ..), columns col0 + 4c .. + 3; entry [j][i] = (row i, col j).
    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc02 = mat4x4<f32>();
    var acc03 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();
    var acc12 = mat4x4<f32>();
    var acc13 = mat4x4<f32>();
    for (var k = params.k_begin; k < params.k_end; k++) {
        let a0 = lhs_block(row0, k);
        let a1 = lhs_block(row0 + 4u * WG, k);
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
    }
    // (a · b)[j][i] = Σ_k a[k][i] b[j][k] = Σ_k lhs[row i, k] · rhs[col j, k]: transpose to
    // get one row per vector.
    let rows0 = array<mat4x4<f32>, 4>(transpose(acc00), transpose(acc01), transpose(acc02), transpose(acc03));
    let rows1 = array<mat4x4<f32>, 4>(transpose(acc10), transpose(acc11), transpose(acc12), transpose(acc13));
    for (var i = 0u; i < 4u; i++) {
        for (var c = 0u; c < 4u; c++) {
            store(row0 + i * WG, col0 + 4u * c, rows0[c][i]);
            store(row0 + (4u + i) * WG, col0 + 4u * c, rows1[c][i]);
        }
    }
}
