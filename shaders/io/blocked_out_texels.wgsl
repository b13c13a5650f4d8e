// io/blocked_out_texels.wgsl: blocked_attention's output for inference: the retrieved vectors as
// texel rows (alias RetrievedTexels: rgba32float, or rgba16float for an f16 layer) for
// retrieval_mix.wgsl, and no softmax statistics. Placed before the kernel by the host instead of
// io/blocked_out_training.wgsl.
//
// Bindings   @binding(4) retrieved  [b·s·n, r·d] texel rows, written

@group(0) @binding(4) var retrieved: RetrievedTexels;

// Stores value texel t of retrieved row `row` ((b·s + σ)·n + i).
fn store_retrieved(row: u32, t: u32, value: vec4<f32>) {
    textureStore(retrieved, texel_coords(row, t), texel_layer(row), to_RetrievedTexels(value));
}

// Inference keeps no statistics.
fn store_statistics(row: u32, running_max: f32, running_sum: f32) {}
