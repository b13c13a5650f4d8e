// matmul.wgsl: a general f32 matrix product for training's GEMMs, C (+)= op(A)·op(B), where
// either operand may be transposed and every matrix may be a column block of a wider one
// (an offset and a row stride each), register blocked for SIMD-lane execution as gemm.wgsl is.
//
// Computes   C[c_offset + m·c_stride + n] (+)= Σ_k op(A)[m, k] · op(B)[k, n]
//              op(A)[m, k] = A[a_offset + m·a_stride + k]      (TA: A[a_offset + k·a_stride + m])
//              op(B)[k, n] = B[b_offset + k·b_stride + n]      (TB: B[b_offset + n·b_stride + k])
//            over the slice [k_begin, k_end) of the reduction (the host splits K where the driver
//            caps loop iterations); `accumulate` adds to C, else C is overwritten. Columns of C
//            outside 0..N are never touched.
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) a  f32 storage
//            @binding(2) b  f32 storage
//            @binding(3) c  f32 storage, read and written
// Dispatch   one workgroup per (4·WG rows) × (TILE_N columns) tile, numbered linearly over x and
//            y: group = tile_m · tiles_n + tile_n. Invocation `lane` owns rows
//            tile_m·4·WG + t·WG + lane (t < 4, the components of a vec4) and the tile's TILE_N
//            columns. At each k every lane reads the same TILE_N elements of op(B) (one load
//            each, broadcast to the SIMD lanes) and its own 4 of op(A): 4 + TILE_N loads feed
//            4·TILE_N multiply-adds held in registers.
// Host constants  WG, TILE_N, TA, TB (bool).

struct Params {
    m: u32,
    n: u32,
    tiles_n: u32,
    accumulate: u32,
    k_begin: u32,
    k_end: u32,
    a_offset: u32,
    a_stride: u32,
    b_offset: u32,
    b_stride: u32,
    c_offset: u32,
    c_stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let tile = group.x + group.y * groups.x;
    let row0 = (tile / params.tiles_n) * WG * 4u + lane;
    let col0 = (tile % params.tiles_n) * TILE_N;
    if (col0 >= params.n || params.m == 0u) {
        return;
    }
    // Where op(A)'s rows (one per vector lane of `acc`) and op(B)'s columns start, and the
    // step along k of each. Rows and columns past the edge re-read the last one; their sums are
    // never stored.
    let last = params.m - 1u;
    let rows = vec4<u32>(
        min(row0, last),
        min(row0 + WG, last),
        min(row0 + 2u * WG, last),
        min(row0 + 3u * WG, last),
    );
    let a_base = vec4<u32>(params.a_offset) + select(rows * params.a_stride, rows, TA);
    let a_step = select(1u, params.a_stride, TA);
    var b_base: array<u32, TILE_N>;
    for (var u = 0u; u < TILE_N; u++) {
        let col = min(col0 + u, params.n - 1u);
        b_base[u] = params.b_offset + select(col, col * params.b_stride, TB);
    }
    let b_step = select(params.b_stride, 1u, TB);

    // acc[u] holds column u of the lane's four rows. The reduction goes four steps at a time:
    // drivers that cannot unroll these loops (lavapipe's, behind its loop limiter) then spend
    // one loop iteration on 16 multiply-adds instead of one.
    var acc: array<vec4<f32>, TILE_N>;
    var k = params.k_begin;
    for (; k + 4u <= params.k_end; k += 4u) {
        let l0 = lhs_at(a_base, k * a_step);
        let l1 = lhs_at(a_base, (k + 1u) * a_step);
        let l2 = lhs_at(a_base, (k + 2u) * a_step);
        let l3 = lhs_at(a_base, (k + 3u) * a_step);
        for (var u = 0u; u < TILE_N; u++) {
            let at = b_base[u] + k * b_step;
            acc[u] += l0 * b[at] + l1 * b[at + b_step] + l2 * b[at + 2u * b_step]
                + l3 * b[at + 3u * b_step];
        }
    }
    for (; k < params.k_end; k++) {
        let l0 = lhs_at(a_base, k * a_step);
        for (var u = 0u; u < TILE_N; u++) {
            acc[u] += l0 * b[b_base[u] + k * b_step];
        }
    }

    for (var t = 0u; t < 4u; t++) {
        let row = row0 + t * WG;
        if (row < params.m) {
            for (var u = 0u; u < TILE_N; u++) {
                if (col0 + u < params.n) {
                    let index = params.c_offset + row * params.c_stride + col0 + u;
                    c[index] = select(acc[u][t], c[index] + acc[u][t], params.accumulate != 0u);
                }
            }
        }
    }
}

// op(A) at one k for the lane's four rows.
fn lhs_at(base: vec4<u32>, step: u32) -> vec4<f32> {
    return vec4<f32>(a[base.x + step], a[base.y + step], a[base.z + step], a[base.w + step]);
}
