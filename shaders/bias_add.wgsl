// bias_add.wgsl: adds a bias to every row of a matrix, after the GEMM that wrote it (the
// projections of a biased layer: the official fairseq module and xformers, SPEC.md §9).
//
// Computes   out[m, c] = out[m, c] + bias[c],   m < rows, c < cols   (f32 sum, stored as Out)
// Bindings   @binding(0) params (uniform)  rows, cols
//            @binding(1) bias  [cols] f32
//            @binding(2) out   [rows, cols] Out (f32 or f16), read and written in place
// Dispatch   one invocation per element, WG per workgroup, numbered linearly over x and y.
// Host constants  WG; the stored type Out (f32 or f16, with `enable f16;`).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<Out>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let index = (group.x + group.y * groups.x) * WG + lane;
    if (index >= params.rows * params.cols) {
        return;
    }
    out[index] = Out(f32(out[index]) + bias[index % params.cols]);
}
