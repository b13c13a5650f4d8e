// io/value_mean_buffers.wgsl: value_mean's projections as a storage buffer. Placed before the
// kernel by the host instead of io/value_mean_texels.wgsl.
//
// Bindings   @binding(1) proj  [b·n, row_stride] f32

@group(0) @binding(1) var<storage, read> proj: array<f32>;

fn proj_at(row: u32, column: u32) -> f32 {
    return proj[row * params.row_stride + column];
}
