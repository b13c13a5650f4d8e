// io/gemm_out_dropped_texels.wgsl: where io/gemm_out_logit_grads.wgsl puts the dropped search
// weights Ã = A·f when dropout is on: texel rows that the products dSK and dRV then read.
// Stands for io/gemm_out_dropped_none.wgsl.
//
// Bindings   @binding(6) dropped  [M, N / 4] texel rows, Ã written

@group(0) @binding(6) var dropped: OutTexels;

fn store_dropped(row: u32, t: u32, values: vec4<f32>) {
    textureStore(dropped, texel_coords(row, t), texel_layer(row), to_OutTexels(values));
}
