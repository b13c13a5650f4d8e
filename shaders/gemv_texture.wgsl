// gemv_texture.wgsl: the projection GEMM for a few rows (decode steps, tiny batches) on CPU
// drivers, y = x · Wᵀ, operands read as texels. The blocked texel GEMM computes 128 rows per
// workgroup, 16 per lane; with one row it fetches every weight texel for one useful output row
// in sixteen.
//
// Computes   out[m, c] = Σ_k lhs[m, k] · rhs[c, k]      (M × N output, K reduction)
// Bindings   @binding(0) params (uniform)  m, n, k_texels (texels of K)
//            @binding(1) lhs  [M, K] texel rows (columns past K are 0)
//            @binding(2) rhs  [N, K] texel rows (PyTorch weight layout, padded likewise)
//            @binding(3) out  [M, N] buffer of Out (f32, or f16 for an f16 layer's projections)
// Dispatch   one invocation per output, column fastest: index = m·N + c, WG per workgroup,
//            numbered linearly over x and y. The lanes of a workgroup are consecutive columns:
//            their lhs fetch is lane-uniform and their rhs fetch one gather over WG weight rows.
//            The host uses this kernel only where K fits the driver's loop budget in one pass.
// Host constants  WG, RPL; the stored type Out (f32 or f16, with `enable f16;`).
// Includes   common/texel_rows.wgsl.

struct Params {
    m: u32,
    n: u32,
    k_texels: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var lhs: texture_2d_array<f32>;
@group(0) @binding(2) var rhs: texture_2d_array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<Out>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * groups.x) * WG + lane;
    if (index >= params.m * params.n) {
        return;
    }
    let row = index / params.n;
    let col = index % params.n;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < params.k_texels; k++) {
        let x = textureLoad(lhs, texel_coords(row, k), texel_layer(row), 0);
        let w = textureLoad(rhs, texel_coords(col, k), texel_layer(col), 0);
        acc += x * w;
    }
    out[index] = Out(acc.x + acc.y + acc.z + acc.w);
}
