// search_scores.wgsl: the search logits of every (batch, search), L = scale · SQ · SKᵀ.
//
// Computes   logits[b, σ, i, j] = scale · Σ_k SQ[b, i, σ·d + k] · SK[b, j, σ·d + k]
//            where SQ and SK are column blocks of the packed projection `proj`:
//            SQ[b, t, f] = proj[(b·n + t)·row_stride + q_offset + f], likewise SK at k_offset.
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) proj    [b·n, row_stride]  packed input projections
//            @binding(2) logits  [b, s, n, n]
// Dispatch   one workgroup per (b·s, query tile, key tile); a tile is (WG_Y·TILE_I) × (WG_X·TILE_J)
//            logits and each invocation computes TILE_I × TILE_J of them in registers. Groups are
//            numbered linearly over x and y: group = ((b·s)·tiles_i + tile_i)·tiles_j + tile_j.
// Host constants  WG_X, WG_Y, TILE_I, TILE_J.

struct Params {
    batch_searches: u32,
    seq: u32,
    searches: u32,
    head: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    scale: f32,
    tiles_i: u32,
    tiles_j: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let linear = group.x + group.y * groups.x;
    let tile_j = linear % params.tiles_j;
    let tile_i = (linear / params.tiles_j) % params.tiles_i;
    let bs = linear / (params.tiles_j * params.tiles_i);
    if (bs >= params.batch_searches) {
        return;
    }
    let n = params.seq;
    let b = bs / params.searches;
    let sigma = bs % params.searches;
    let i0 = (tile_i * WG_Y + local.y) * TILE_I;
    let j0 = (tile_j * WG_X + local.x) * TILE_J;
    if (i0 >= n || j0 >= n) {
        return;
    }

    // Row starts of this invocation's queries and keys; rows past the end read the last row
    // (results discarded) so the inner loop needs no bounds checks.
    let head_offset = sigma * params.head;
    var q_base: array<u32, TILE_I>;
    for (var t = 0u; t < TILE_I; t++) {
        q_base[t] = (b * n + min(i0 + t, n - 1u)) * params.row_stride + params.q_offset + head_offset;
    }
    var k_base: array<u32, TILE_J>;
    for (var t = 0u; t < TILE_J; t++) {
        k_base[t] = (b * n + min(j0 + t, n - 1u)) * params.row_stride + params.k_offset + head_offset;
    }

    var acc: array<array<f32, TILE_J>, TILE_I>;
    for (var t = 0u; t < TILE_I; t++) {
        for (var u = 0u; u < TILE_J; u++) {
            acc[t][u] = 0.0;
        }
    }
    for (var k = 0u; k < params.head; k++) {
        var q: array<f32, TILE_I>;
        for (var t = 0u; t < TILE_I; t++) {
            q[t] = proj[q_base[t] + k];
        }
        for (var u = 0u; u < TILE_J; u++) {
            let key = proj[k_base[u] + k];
            for (var t = 0u; t < TILE_I; t++) {
                acc[t][u] += q[t] * key;
            }
        }
    }

    let out_base = bs * n * n;
    for (var t = 0u; t < TILE_I; t++) {
        let i = i0 + t;
        for (var u = 0u; u < TILE_J; u++) {
            let j = j0 + u;
            if (i < n && j < n) {
                logits[out_base + i * n + j] = params.scale * acc[t][u];
            }
        }
    }
}
