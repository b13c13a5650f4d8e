// common/workgroup_reduce.wgsl: workgroup-wide sum and max, included by row kernels.
//
// Needs the including kernel's WG (invocations per workgroup, a power of two). Every invocation
// must call these in uniform control flow; the result is uniform (workgroupUniformLoad), so
// callers may branch on it around later barriers, which Tint and naga both check.

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] += partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = workgroupUniformLoad(&partial[0]);
    workgroupBarrier();
    return total;
}

fn workgroup_max(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] = max(partial[lane], partial[lane + stride]);
        }
        workgroupBarrier();
    }
    let result = workgroupUniformLoad(&partial[0]);
    workgroupBarrier();
    return result;
}
