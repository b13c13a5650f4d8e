// io/gemm_out_buffer.wgsl: gemm_texture's output as a storage buffer of Out (f32, or f16 for an
// f16 layer's projections; the sums stay f32), added to where the host splits the reduction
// (params.accumulate). Placed before the kernel by the host instead of io/gemm_out_texels.wgsl.
//
// Bindings   @binding(3) out  [M, N] Out, row r from element params.out_offset + r·params.out_stride
// Includes   common/gemm_no_state.wgsl (it reads nothing once per row or per four columns).

@group(0) @binding(3) var<storage, read_write> out: array<Out>;

// Stores columns col .. col + 3 of one row (`values[j]` is column col + j).
fn store(row: u32, col: u32, values: vec4<f32>, per_row: RowState, per_columns: ColumnState) {
    if (row >= params.m) {
        return;
    }
    // Four straight-line stores, so that nothing depends on the driver unrolling a loop that
    // indexes `values` (gemm_texture.wgsl's note on its stores); on lavapipe the two forms
    // measured within the noise.
    let base = params.out_offset + row * params.out_stride + col;
    store_value(col, base, values.x);
    store_value(col + 1u, base + 1u, values.y);
    store_value(col + 2u, base + 2u, values.z);
    store_value(col + 3u, base + 3u, values.w);
}

fn store_value(col: u32, index: u32, value: f32) {
    if (col < params.n) {
        out[index] = Out(select(value, f32(out[index]) + value, params.accumulate != 0u));
    }
}
