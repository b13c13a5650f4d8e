// residual_add.wgsl: the embedding program's own kernel between two attention layers (not part of
// the library): h[i] = h[i] + x[i].
//
// Bindings   @binding(0) x  [len] f32 (read)
//            @binding(1) h  [len] f32 (read and written)
// Dispatch   ceil(len / 64) workgroups of 64 invocations along x, one element each.

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&h)) {
        h[id.x] = h[id.x] + x[id.x];
    }
}
