// io/value_mean_texels.wgsl: value_mean's projections as rgba32float texel rows (CPU drivers).
// Placed before the kernel by the host instead of io/value_mean_buffers.wgsl.
//
// Bindings   @binding(1) proj  [b·n, row_stride / 4] texel rows

@group(0) @binding(1) var proj: texture_2d_array<f32>;

fn proj_at(row: u32, column: u32) -> f32 {
    return textureLoad(proj, texel_coords(row, column / 4u), texel_layer(row), 0)[column % 4u];
}
