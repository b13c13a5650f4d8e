// cache_advance.wgsl: advances the KV cache's length after a step's attention has read it.
//
// Computes   state.len += seq (one invocation).
// Bindings   @binding(0) params (uniform)  seq
//            @binding(1) state  [1] u32: tokens cached
// Dispatch   one workgroup of one invocation.

struct Params {
    seq: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> state: array<u32>;

@compute @workgroup_size(1)
fn main() {
    state[0] = state[0] + params.seq;
}
