// io/value_mean_buffers.wgsl: value_mean's projections as a storage buffer. Placed before the
// kernel by the host instead of io/value_mean_texels.wgsl.
//
// Bindings   @binding(1) proj  [b·n, row_stride] Proj (f32 or f16, widened as it is read)

@group(0) @binding(1) var<storage, read> proj: array<Proj>;

fn proj_at(row: u32, column: u32) -> f32 {
    return f32(proj[row * params.row_stride + column]);
}
