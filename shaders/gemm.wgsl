// gemm.wgsl: the projection GEMM, y = x · Wᵀ with W in PyTorch's [out, in] layout, register
// blocked for SIMD-lane execution (CPU drivers such as lavapipe and SwiftShader).
//
// Computes   out[m, c] = Σ_k lhs[m, k] · rhs[c, k]      (M × N output, K reduction)
// Bindings   @binding(0) params (uniform)  m, n, k_vecs (= K / VEC), tiles_n, and the slice
//            [k_begin, k_end) of the reduction this dispatch adds (in KVec units; the host splits
//            K where the driver caps loop iterations), accumulate (add to `out` if nonzero)
//            @binding(1) lhs  [M, K]  row-major, read as array<LhsVec>
//            @binding(2) rhs  [N, K]  row-major, read as array<RhsVec>
//            @binding(3) out  [M, N]  row-major, array<Out>
//            Each is stored in f32 or f16 (Lhs, Rhs, Out); loads widen to f32 and the sums
//            are f32, narrowed once as they are stored.
// Dispatch   one workgroup per (WG·TILE_M rows) × (TILE_N columns) tile, numbered linearly over x
//            and y: group = tile_m · tiles_n + tile_n. Invocation `lane` owns rows
//            tile_m·WG·TILE_M + t·WG + lane (t < TILE_M) and all TILE_N columns of the tile.
//            Every lane reads the same rhs element at each step (one load, broadcast to the
//            SIMD lanes) and its own lhs rows: TILE_M + TILE_N loads feed TILE_M·TILE_N·VEC
//            multiply-adds held in registers.
// Host constants  WG, TILE_M, TILE_N, and KVec = vec4<f32> with VEC = 4 when K % 4 == 0, else
//            f32 with VEC = 1, with kdot(a, b) its dot product; the stored types Lhs, Rhs, Out
//            (f32 or f16, with `enable f16;`) and LhsVec, RhsVec of width VEC.

struct Params {
    m: u32,
    n: u32,
    k_vecs: u32,
    tiles_n: u32,
    k_begin: u32,
    k_end: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lhs: array<LhsVec>;
@group(0) @binding(2) var<storage, read> rhs: array<RhsVec>;
@group(0) @binding(3) var<storage, read_write> out: array<Out>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile = group.x + group.y * groups.x;
    let row0 = (tile / params.tiles_n) * WG * TILE_M + lane;
    let col0 = (tile % params.tiles_n) * TILE_N;
    if (col0 >= params.n) {
        return;
    }

    // Rows and columns past the edge re-read the last one; their sums are never stored.
    var lhs_base: array<u32, TILE_M>;
    for (var t = 0u; t < TILE_M; t++) {
        lhs_base[t] = min(row0 + t * WG, params.m - 1u) * params.k_vecs;
    }
    var rhs_base: array<u32, TILE_N>;
    for (var u = 0u; u < TILE_N; u++) {
        rhs_base[u] = min(col0 + u, params.n - 1u) * params.k_vecs;
    }

    var acc: array<array<f32, TILE_N>, TILE_M>;
    for (var t = 0u; t < TILE_M; t++) {
        for (var u = 0u; u < TILE_N; u++) {
            acc[t][u] = 0.0;
        }
    }
    for (var k = params.k_begin; k < params.k_end; k++) {
        var a: array<KVec, TILE_M>;
        for (var t = 0u; t < TILE_M; t++) {
            a[t] = KVec(lhs[lhs_base[t] + k]);
        }
        for (var u = 0u; u < TILE_N; u++) {
            let b = KVec(rhs[rhs_base[u] + k]);
            for (var t = 0u; t < TILE_M; t++) {
                acc[t][u] += kdot(a[t], b);
            }
        }
    }

    for (var t = 0u; t < TILE_M; t++) {
        let row = row0 + t * WG;
        if (row < params.m) {
            for (var u = 0u; u < TILE_N; u++) {
                let index = row * params.n + col0 + u;
                if (col0 + u < params.n) {
                    let sum = select(acc[t][u], f32(out[index]) + acc[t][u], params.accumulate != 0u);
                    out[index] = Out(sum);
                }
            }
        }
    }
}
