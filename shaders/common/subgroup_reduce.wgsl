// common/subgroup_reduce.wgsl: workgroup-wide sum and max through subgroup operations, in place
// of common/workgroup_reduce.wgsl where the device has wgpu::Features::SUBGROUP (native Vulkan,
// Metal, DX12; the host picks, src/gpu/pipelines.rs `Reduction`).
//
// Computes   each subgroup reduces in registers (subgroupAdd / subgroupMax), its lowest active
//            invocation stores the result in slot `subgroup_id`, and invocation 0 folds the slots
//            in order 0, 1, 2 ... (a fixed order: the same inputs give the same bits on every
//            run). One barrier and workgroupUniformLoad's (which naga emits as barrier, load,
//            barrier: 3 in all) where the tree of workgroup_reduce.wgsl takes log2(WG) + 4 as
//            emitted (10 at WG 64); the sum differs from the tree's by f32 rounding only.
//            The leader is found with subgroupMin rather than assumed to be invocation 0 of its
//            subgroup, which Vulkan promises to be active only for full subgroups. On DX12 naga
//            derives subgroup_id as local_invocation_index / WaveGetLaneCount(), which assumes
//            waves packed in order (what drivers do; D3D12 does not promise it).
// Needs the including kernel's WG. The kernel takes an `Invocation` argument (declared here,
// with the subgroup builtins) and passes it on. Every invocation must call these in uniform
// control flow; the result is uniform (workgroupUniformLoad).
// No trailing barrier: a later call writes `partial` only after its own barrier, which no
// invocation passes before invocation 0 has read the slots of this one, and `folded` only after
// that barrier too, when every invocation has loaded it.
// No `enable subgroups;`: naga (wgpu 30) enables subgroup operations through the device's
// feature and rejects the directive; Tint requires it, so browsers get workgroup_reduce.wgsl.

struct Invocation {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) in_subgroup: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
}

// One slot per subgroup: at most WG of them.
var<workgroup> partial: array<f32, WG>;
var<workgroup> folded: f32;

fn workgroup_sum(invocation: Invocation, value: f32) -> f32 {
    let part = subgroupAdd(value);
    if (invocation.in_subgroup == subgroupMin(invocation.in_subgroup)) {
        partial[invocation.subgroup] = part;
    }
    workgroupBarrier();
    if (invocation.index == 0u) {
        var total = partial[0];
        for (var g = 1u; g < invocation.subgroups; g++) {
            total += partial[g];
        }
        folded = total;
    }
    return workgroupUniformLoad(&folded);
}

fn workgroup_max(invocation: Invocation, value: f32) -> f32 {
    let part = subgroupMax(value);
    if (invocation.in_subgroup == subgroupMin(invocation.in_subgroup)) {
        partial[invocation.subgroup] = part;
    }
    workgroupBarrier();
    if (invocation.index == 0u) {
        var result = partial[0];
        for (var g = 1u; g < invocation.subgroups; g++) {
            result = max(result, partial[g]);
        }
        folded = result;
    }
    return workgroupUniformLoad(&folded);
}
