// io/gemm_out_texels.wgsl: gemm_texture's output as texel rows (alias OutTexels: rgba32float, or
// rgba16float for an f16 layer's projections), for a consumer that reads texels (the blocked and
// fused cores and training's chunked core on CPU drivers). Needs one reduction slice. Where N % 4 != 0 the columns past N in a row's last texel are not zero (they repeat
// the last column's products): their readers skip them, or multiply them by an operand whose
// padding is zero. Zeroing them here with a select slowed lavapipe's whole training step by a
// third. Placed before the kernel by the host instead of io/gemm_out_buffer.wgsl.
//
// Bindings   @binding(3) out  [M, N / 4] texel rows
// Includes   common/gemm_no_state.wgsl (it reads nothing once per row or per four columns).

@group(0) @binding(3) var out: OutTexels;

// Stores columns col .. col + 3 of one row (`values[j]` is column col + j).
fn store(row: u32, col: u32, values: vec4<f32>, per_row: RowState, per_columns: ColumnState) {
    if (row >= params.m) {
        return;
    }
    textureStore(out, texel_coords(row, col / 4u), texel_layer(row), to_OutTexels(values));
}
