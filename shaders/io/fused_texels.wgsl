// io/fused_texels.wgsl: fused_attention's projections and output as rgba32float texel rows (CPU
// drivers, which fetch texels as vector gathers; see src/gpu/texture.rs). Needs VEC = 4. Placed
// before the kernel by the host instead of io/fused_buffers.wgsl.
//
// Bindings   @binding(1) proj    [b·n, row_stride / 4] texel rows, packed [SQ | SK | Q̃ | RV]
//            @binding(4) concat  [b·n, s·d / 4] texel rows
//            @binding(5) keys    texel rows holding SK
//            @binding(6) values  texel rows holding RV

@group(0) @binding(1) var proj: texture_2d_array<f32>;
@group(0) @binding(4) var concat: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(5) var keys: texture_2d_array<f32>;
@group(0) @binding(6) var values: texture_2d_array<f32>;

fn proj_at(row: u32, column: u32) -> KVec {
    return kvec(textureLoad(proj, texel_coords(row, column), texel_layer(row), 0));
}

fn key_at_row(row: u32, column: u32) -> KVec {
    return kvec(textureLoad(keys, texel_coords(row, column), texel_layer(row), 0));
}

fn value_at_row(row: u32, column: u32) -> KVec {
    return kvec(textureLoad(values, texel_coords(row, column), texel_layer(row), 0));
}

fn store_retrieved(row: u32, column: u32, value: KVec) {
    textureStore(concat, texel_coords(row, column), texel_layer(row), vec4<f32>(value));
}

fn store_concat(row: u32, column: u32, value: KVec) {
    textureStore(concat, texel_coords(row, column), texel_layer(row), vec4<f32>(value));
}
