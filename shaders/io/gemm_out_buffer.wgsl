// io/gemm_out_buffer.wgsl: gemm_texture's output as a storage buffer of Out (f32, or f16 for an
// f16 layer's projections; the sums stay f32), added to where the host splits the reduction
// (params.accumulate). Placed before the kernel by the host instead of io/gemm_out_texels.wgsl.
//
// Bindings   @binding(3) out  [M, N] Out, row r from element params.out_offset + r·params.out_stride

@group(0) @binding(3) var<storage, read_write> out: array<Out>;

// Stores columns col .. col + 3 of one row (`values[j]` is column col + j).
fn store(row: u32, col: u32, values: vec4<f32>) {
    if (row >= params.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < params.n) {
            let index = params.out_offset + row * params.out_stride + col + j;
            out[index] = Out(select(values[j], f32(out[index]) + values[j], params.accumulate != 0u));
        }
    }
}
