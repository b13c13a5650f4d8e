// STUB naive matmul
struct Params { m: u32, n: u32, k_begin: u32, k_end: u32, a_offset: u32, a_stride: u32, b_offset: u32, b_stride: u32, c_offset: u32, c_stride: u32, accumulate: u32, _pad: u32, }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let index = (group.x + group.y * groups.x) * 64u + lane;
    if (index >= params.m * params.n) { return; }
    let row = index / params.n; let col = index % params.n;
    var sum = 0.0;
    for (var k = params.k_begin; k < params.k_end; k++) {
        var av: f32; var bv: f32;
        if (TA) { av = a[params.a_offset + k * params.a_stride + row]; } else { av = a[params.a_offset + row * params.a_stride + k]; }
        if (TB) { bv = b[params.b_offset + col * params.b_stride + k]; } else { bv = b[params.b_offset + k * params.b_stride + col]; }
        sum += av * bv;
    }
    let at = params.c_offset + row * params.c_stride + col;
    if (params.accumulate != 0u) { c[at] += sum; } else { c[at] = sum; }
}
