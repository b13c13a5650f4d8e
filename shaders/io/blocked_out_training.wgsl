// io/blocked_out_training.wgsl: blocked_attention's output for training's forward without
// dropout (src/training/forward.rs): the retrieved vectors `Ret` and each row's softmax
// statistics in the f32 buffers the backward reads (common/search_weights.wgsl's layouts), so
// the training forward runs the eval forward's core. Placed before the kernel by the host
// instead of io/blocked_out_texels.wgsl.
//
// Bindings   @binding(4) retrieved  [b·s·n, r·d / 4] vec4<f32>, written
//            @binding(7) stats      [b·s·n] vec4<f32>: (running max m, running sum l, 0, 0),
//                                   written; l = 0 on a row with no allowed key

@group(0) @binding(4) var<storage, read_write> retrieved: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> stats: array<vec4<f32>>;

// Stores value texel t of retrieved row `row` ((b·s + σ)·n + i).
fn store_retrieved(row: u32, t: u32, value: vec4<f32>) {
    retrieved[row * params.value_texels + t] = value;
}

// Stores row `row`'s statistics; m is over scaled scores, l = Σ exp(L − m) over allowed keys.
fn store_statistics(row: u32, running_max: f32, running_sum: f32) {
    stats[row] = vec4<f32>(running_max, running_sum, 0.0, 0.0);
}
