// search_values.wgsl: search-value aggregation for every (search, retrieval) pair.
//
// Computes   retrieved[b, σ, i, c] = Σ_j weights[b, σ, i, j] · RV[b, j, c],   c < r·d,
//            i.e. Ret[b, σ, ρ, i, k] = A[b, σ] · RV[b, ρ] at c = ρ·d + k: one search's weights
//            multiply all r value heads at once (SPEC §2.4). RV is a column block of the packed
//            projection: RV[b, t, c] = proj[(b·n + t)·row_stride + v_offset + c].
//            One dispatch sums keys [key_begin, key_end) and adds to `retrieved` when
//            `accumulate` is set: the host splits the keys where the driver caps loop iterations.
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) weights    [b, s, n, n]  search softmax
//            @binding(2) proj       [b·n, row_stride]
//            @binding(3) retrieved  [b, s, n, r·d]
// Dispatch   one workgroup per (b·s, query tile, column tile); a tile is (WG_Y·TILE_I) queries ×
//            (WG_X·TILE_C) columns and each invocation accumulates TILE_I × TILE_C in registers.
//            group = ((b·s)·tiles_i + tile_i)·tiles_c + tile_c, numbered linearly over x and y.
// Host constants  WG_X, WG_Y, TILE_I, TILE_C.

struct Params {
    batch_searches: u32,
    searches: u32,
    seq: u32,
    value_width: u32,
    row_stride: u32,
    v_offset: u32,
    tiles_i: u32,
    tiles_c: u32,
    key_begin: u32,
    key_end: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> proj: array<f32>;
@group(0) @binding(3) var<storage, read_write> retrieved: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let linear = group.x + group.y * groups.x;
    let tile_c = linear % params.tiles_c;
    let tile_i = (linear / params.tiles_c) % params.tiles_i;
    let bs = linear / (params.tiles_c * params.tiles_i);
    if (bs >= params.batch_searches) {
        return;
    }
    let n = params.seq;
    let width = params.value_width;
    let b = bs / params.searches;
    let i0 = (tile_i * WG_Y + local.y) * TILE_I;
    let c0 = (tile_c * WG_X + local.x) * TILE_C;
    if (i0 >= n || c0 >= width) {
        return;
    }

    // Out-of-range queries and columns read the last valid one; their sums are never stored.
    var a_base: array<u32, TILE_I>;
    for (var t = 0u; t < TILE_I; t++) {
        a_base[t] = (bs * n + min(i0 + t, n - 1u)) * n;
    }
    var column: array<u32, TILE_C>;
    for (var u = 0u; u < TILE_C; u++) {
        column[u] = params.v_offset + min(c0 + u, width - 1u);
    }

    var acc: array<array<f32, TILE_C>, TILE_I>;
    for (var t = 0u; t < TILE_I; t++) {
        for (var u = 0u; u < TILE_C; u++) {
            acc[t][u] = 0.0;
        }
    }
    for (var j = params.key_begin; j < params.key_end; j++) {
        let v_row = (b * n + j) * params.row_stride;
        var v: array<f32, TILE_C>;
        for (var u = 0u; u < TILE_C; u++) {
            v[u] = proj[v_row + column[u]];
        }
        for (var t = 0u; t < TILE_I; t++) {
            let a = weights[a_base[t] + j];
            for (var u = 0u; u < TILE_C; u++) {
                acc[t][u] += a * v[u];
            }
        }
    }

    for (var t = 0u; t < TILE_I; t++) {
        let i = i0 + t;
        for (var u = 0u; u < TILE_C; u++) {
            let c = c0 + u;
            let index = (bs * n + i) * width + c;
            if (i < n && c < width) {
                retrieved[index] = select(acc[t][u], retrieved[index] + acc[t][u], params.accumulate != 0u);
            }
        }
    }
}
