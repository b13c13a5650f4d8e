// cache_append.wgsl: appends the new tokens' search keys, retrieval values and key mask to the
// KV cache, straight from the projection GEMM's output (no second pass over x).
//
// Computes   for token i < seq of batch b, at position p = state.len + i:
//              keys[b, σ, p, k]   = SK[b, i, σ·d + k]      (the SK block of proj, per search)
//              values[b, p, c]    = RV[b, i, c]            (the RV block, once per retrieval,
//                                                           shared by every search)
//              mask[b, p]         = new_mask[b, i]          (0 = masked)
//              first_allowed[b]   = min(first_allowed[b], p) where new_mask[b, i] != 0
//            state.len is read, not advanced: cache_advance.wgsl advances it after the step's
//            attention, so several steps recorded into one encoder each see their own length.
// Bindings   @binding(0) params (uniform)  batch, seq, searches, head (d), value_width (r·d),
//                        row_stride, k_offset, v_offset, capacity
//            @binding(1) proj           [b·seq, row_stride] Proj, packed [SQ | SK | Q̃ | RV]
//            @binding(2) new_mask       [b, seq] u32
//            @binding(3) state          [1] u32: tokens already cached (len)
//            @binding(4) keys           [b, s, capacity, d] Cache
//            @binding(5) values         [b, capacity, r·d] Cache
//            @binding(6) mask           [b, capacity] u32
//            @binding(7) first_allowed  [b] atomic u32 (0xFFFFFFFF: no allowed key yet)
// Dispatch   one invocation per element of (b, i, column) with column < s·d + r·d + 1, WG per
//            workgroup, numbered linearly over x and y.
// Host constants  WG; the stored types Proj and Cache (f32 or f16, the same in a layer, so
//            the copy is exact).

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    head: u32,
    value_width: u32,
    row_stride: u32,
    k_offset: u32,
    v_offset: u32,
    capacity: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> proj: array<Proj>;
@group(0) @binding(2) var<storage, read> new_mask: array<u32>;
@group(0) @binding(3) var<storage, read> state: array<u32>;
@group(0) @binding(4) var<storage, read_write> keys: array<Cache>;
@group(0) @binding(5) var<storage, read_write> values: array<Cache>;
@group(0) @binding(6) var<storage, read_write> mask: array<u32>;
@group(0) @binding(7) var<storage, read_write> first_allowed: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let key_width = params.searches * params.head;
    let width = key_width + params.value_width + 1u;
    let index = (group.x + group.y * groups.x) * WG + lane;
    if (index >= params.batch * params.seq * width) {
        return;
    }
    let token = index / width;
    let column = index % width;
    let b = token / params.seq;
    let position = state[0] + token % params.seq;
    if (position >= params.capacity) {
        return;
    }
    if (column < key_width) {
        let sigma = column / params.head;
        let k = column % params.head;
        let slot = ((b * params.searches + sigma) * params.capacity + position) * params.head + k;
        keys[slot] = Cache(proj[token * params.row_stride + params.k_offset + column]);
    } else if (column < key_width + params.value_width) {
        let c = column - key_width;
        values[(b * params.capacity + position) * params.value_width + c] =
            Cache(proj[token * params.row_stride + params.v_offset + c]);
    } else {
        let allowed = new_mask[token];
        mask[b * params.capacity + position] = allowed;
        if (allowed != 0u) {
            atomicMin(&first_allowed[b], position);
        }
    }
}
