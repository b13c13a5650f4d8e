// gemm_tiled.wgsl: the projection GEMM, y = x · Wᵀ, with workgroup-memory tiles (GPUs).
//
// Computes   out[m, c] = Σ_k lhs[m, k] · rhs[c, k]      (M × N output, K reduction)
// Bindings   @binding(0) params (uniform)  m, n, k_vecs (= K), tiles_n, and the slice [k_begin, k_end)
//            of the reduction this dispatch adds (the host splits K where the driver caps loop
//            iterations), accumulate (add to `out` if nonzero)
//            @binding(1) lhs  [M, K]  row-major, array<Lhs>
//            @binding(2) rhs  [N, K]  row-major (PyTorch weight layout), array<Rhs>
//            @binding(3) out  [M, N]  row-major, array<Out>
//            Each is stored in f32 or f16; staging widens to f32, and the sums are f32,
//            narrowed once as they are stored.
// Dispatch   one workgroup of WG_SIDE × WG_SIDE invocations per BM × BN output tile
//            (BM = BN = WG_SIDE·TILE), numbered linearly over x and y: group = tile_m·tiles_n +
//            tile_n. Each step stages a BK-deep slice of both operands in workgroup memory
//            (coalesced: consecutive invocations read consecutive k), then every invocation
//            accumulates its TILE × TILE outputs, strided by WG_SIDE so that neighbouring
//            invocations read neighbouring workgroup-memory words.
// Host constants  WG_SIDE, TILE, BK; the stored types Lhs, Rhs, Out (f32 or f16, with
//            `enable f16;`).

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
@group(0) @binding(1) var<storage, read> lhs: array<Lhs>;
@group(0) @binding(2) var<storage, read> rhs: array<Rhs>;
@group(0) @binding(3) var<storage, read_write> out: array<Out>;

const BM: u32 = WG_SIDE * TILE;
const THREADS: u32 = WG_SIDE * WG_SIDE;

// Slices stored k-major ([BK][BM]) so the inner loop reads rows of consecutive outputs.
var<workgroup> lhs_tile: array<f32, BK * BM>;
var<workgroup> rhs_tile: array<f32, BK * BM>;

@compute @workgroup_size(WG_SIDE, WG_SIDE)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile = group.x + group.y * groups.x;
    let tile_m = tile / params.tiles_n;
    let tile_n = tile % params.tiles_n;
    // Out-of-range groups (from the 2-D grid) still take part in barriers, then store nothing.
    let in_range = tile_m * BM < params.m;
    let row0 = tile_m * BM;
    let col0 = tile_n * BM;

    var acc: array<array<f32, TILE>, TILE>;
    for (var t = 0u; t < TILE; t++) {
        for (var u = 0u; u < TILE; u++) {
            acc[t][u] = 0.0;
        }
    }
    for (var k0 = params.k_begin; k0 < params.k_end; k0 += BK) {
        for (var e = lane; e < BK * BM; e += THREADS) {
            let kk = e % BK;
            let r = e / BK;
            let k = k0 + kk;
            let in_k = k < params.k_end;
            let lhs_row = min(row0 + r, params.m - 1u);
            let rhs_row = min(col0 + r, params.n - 1u);
            let k_safe = min(k, params.k_vecs - 1u);
            lhs_tile[kk * BM + r] = select(0.0, f32(lhs[lhs_row * params.k_vecs + k_safe]), in_k);
            rhs_tile[kk * BM + r] = select(0.0, f32(rhs[rhs_row * params.k_vecs + k_safe]), in_k);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, TILE>;
            var b: array<f32, TILE>;
            for (var t = 0u; t < TILE; t++) {
                a[t] = lhs_tile[kk * BM + t * WG_SIDE + local.y];
                b[t] = rhs_tile[kk * BM + t * WG_SIDE + local.x];
            }
            for (var t = 0u; t < TILE; t++) {
                for (var u = 0u; u < TILE; u++) {
                    acc[t][u] += a[t] * b[u];
                }
            }
        }
        workgroupBarrier();
    }

    if (!in_range) {
        return;
    }
    for (var t = 0u; t < TILE; t++) {
        let row = row0 + t * WG_SIDE + local.y;
        for (var u = 0u; u < TILE; u++) {
            let col = col0 + u * WG_SIDE + local.x;
            let index = row * params.n + col;
            if (row < params.m && col < params.n) {
                let sum = select(acc[t][u], f32(out[index]) + acc[t][u], params.accumulate != 0u);
                out[index] = Out(sum);
            }
        }
    }
}
