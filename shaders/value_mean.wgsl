// value_mean.wgsl: the mean retrieval value of each batch, for fully masked query rows.
//
// Computes   value_mean[b, c] = (1/n) · Σ_j RV[b, j, c],   c < r·d,
//            with RV the column block of the packed projection at v_offset. A query row whose
//            every key is masked attends uniformly to all n keys in the reference (SPEC §6), so
//            its retrieved vectors are exactly this mean; the fused kernel substitutes it.
// Bindings   @binding(0) params (uniform)  batch, seq, value_width, row_stride, v_offset
//            @binding(1) proj        [b·n, row_stride], a storage buffer or texel rows, declared
//                                    with proj_at by io/value_mean_buffers.wgsl or
//                                    io/value_mean_texels.wgsl, which the host places first
//            @binding(2) value_mean  [b, r·d]
// Dispatch   one workgroup of WG invocations per (b, c), numbered linearly over x and y; the
//            invocations stride over the n keys (n / WG loop iterations each) and reduce.
// Host constants  WG (a power of two), RPL (rows per texture layer).
// Includes   common/workgroup_reduce.wgsl or common/subgroup_reduce.wgsl (the host's
//            Reduction), common/texel_rows.wgsl.

struct Params {
    batch: u32,
    seq: u32,
    value_width: u32,
    row_stride: u32,
    v_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read_write> value_mean: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    invocation: Invocation,
) {
    let lane = invocation.index;
    let index = group.x + group.y * groups.x;
    if (index >= params.batch * params.value_width) {
        return;
    }
    let b = index / params.value_width;
    let c = index % params.value_width;
    var sum = 0.0;
    for (var j = lane; j < params.seq; j += WG) {
        sum += proj_at(b * params.seq + j, params.v_offset + c);
    }
    let total = workgroup_sum(invocation, sum);
    if (lane == 0u) {
        value_mean[index] = total / f32(params.seq);
    }
}
