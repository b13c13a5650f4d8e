// io/gemm_out_buffer.wgsl: gemm_texture's output as an f32 storage buffer, added to where the
// host splits the reduction (params.accumulate). Placed before the kernel by the host instead of
// io/gemm_out_texels.wgsl.
//
// Bindings   @binding(3) out  [M, N] f32

@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Stores columns col .. col + 3 of one row (`values[j]` is column col + j).
fn store(row: u32, col: u32, values: vec4<f32>) {
    if (row >= params.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < params.n) {
            let index = row * params.n + col + j;
            out[index] = select(values[j], out[index] + values[j], params.accumulate != 0u);
        }
    }
}
