// texture_copy.wgsl: a matrix (or a column block of one) from a storage buffer into texel rows.
//
// Computes   dst[row, texel] = (m[row, 4·texel], …, m[row, 4·texel + 3]), with columns at or
//            past `cols` written as 0, for the CPU-driver kernels that read texels (see
//            src/gpu/texture.rs for why), where
//              m[row, col] = src[offset + row·stride + col]
//            (a product that needs a transpose reads the stored rows transposed:
//            gemm_texture.wgsl's LHS_T/RHS_T, ops/matmul.rs)
// Bindings   @binding(0) params (uniform)  rows, cols, width (texels per row), offset, stride
//            @binding(1) src  Src (f32, or an f16 layer's concatenation), widened
//            @binding(2) dst  [rows, cols] texel rows, written (DstTexels: rgba32float, or
//                             rgba16float for an f16 memory's key and value rows)
// Dispatch   one invocation per texel, WG per workgroup, numbered linearly over x and y.
// Host constants  WG, RPL; the stored type Src (f32 or f16, with `enable f16;`);
//            alias DstTexels (the written texel format).
// Includes   common/texel_rows.wgsl.

struct Params {
    rows: u32,
    cols: u32,
    width: u32,
    offset: u32,
    stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Src>;
@group(0) @binding(2) var dst: DstTexels;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * groups.x) * WG + lane;
    if (index >= params.rows * params.width) {
        return;
    }
    let row = index / params.width;
    let texel = index % params.width;
    var value = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        let col = 4u * texel + c;
        if (col < params.cols) {
            value[c] = f32(src[params.offset + row * params.stride + col]);
        }
    }
    textureStore(dst, texel_coords(row, texel), texel_layer(row), to_DstTexels(value));
}
