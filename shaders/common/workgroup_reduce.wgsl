// common/workgroup_reduce.wgsl: workgroup-wide sum and max through workgroup memory, included
// by row kernels on devices without subgroup operations (common/subgroup_reduce.wgsl stands in
// for it where the device has them; the host picks, src/gpu/pipelines.rs `Reduction`).
//
// Needs the including kernel's WG (invocations per workgroup, a power of two). The kernel takes
// an `Invocation` argument (declared here: the builtins the reduction needs) and passes it on.
// Every invocation must call these in uniform control flow; the result is uniform
// (workgroupUniformLoad), so callers may branch on it around later barriers, which Tint and
// naga both check. A tree of log2(WG) barrier-separated steps: log2(WG) + 4 barriers per call as
// naga emits them (workgroupUniformLoad is barrier, load, barrier).

struct Invocation {
    @builtin(local_invocation_index) index: u32,
}

var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(invocation: Invocation, value: f32) -> f32 {
    let lane = invocation.index;
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

fn workgroup_max(invocation: Invocation, value: f32) -> f32 {
    let lane = invocation.index;
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
