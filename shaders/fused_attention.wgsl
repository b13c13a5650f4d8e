// fused_attention.wgsl: compositional attention for one (batch, search, query tile), flash-style.
//
// Computes   for each query i of the tile, search σ, batch b (SPEC §2.3, reassociated per §2.4):
//              A[j]   = softmax_j over allowed keys of scale · SQ[i] · SK[j]      (online, f32)
//              Ret[ρ] = Σ_j A[j] · RV[j, ρ·d ..]                 for all ρ at once
//              G[ρ]   = scale · Q̃[i] · Ret[ρ]   with Q̃ = RQ · W_rk (= RQ · RKᵀ-side, precomputed)
//              concat[b, i, σ·d + k] = Σ_ρ softmax_ρ(G)[ρ] · Ret[ρ, k]
//            allowed(j) = mask[b, j] != 0 && (!causal || j <= i). A row with no allowed key
//            uses Ret = value_mean[b] (uniform weights over all n keys, the reference's
//            semantics). Nothing n × n is ever stored; masked scores never enter arithmetic
//            that is kept.
// Bindings   @binding(0) params (uniform)  see Params
//            @binding(1) proj        [b·n, row_stride]  packed [SQ | SK | Q̃ | RV] columns
//            @binding(2) mask        [b, n] u32, 1 = key may be attended
//            @binding(3) value_mean  [b, r·d]  mean of RV over all keys (fully masked rows)
//            @binding(4) concat      [b, n, s·d]  searches concatenated for the output GEMM
// Dispatch   one workgroup per (b, σ, tile of WG·QPI queries), group = (b·s + σ)·tiles + tile,
//            numbered linearly over x and y. Invocation `lane` owns queries
//            tile·WG·QPI + qi·WG + lane for qi < QPI, each with a d-wide query and r·d-wide
//            accumulator in registers, so every key and value element read feeds QPI FMAs.
// Host constants  WG, QPI, BK (keys per tile), D (= d), R (= r), STAGE (bool: stage each key
//            tile in workgroup memory, for GPUs; false reads keys straight from `proj`, which
//            suits CPU drivers where every lane reads the same address).

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    qt_offset: u32,
    v_offset: u32,
    scale: f32,
    tiles: u32,
    causal: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> proj: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> value_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> concat: array<f32>;

const VW: u32 = R * D;
const ROWS: u32 = WG * QPI;
const LOWEST: f32 = -3.4028235e38;

// Key tile: staged copies (used when STAGE) of BK keys, their values and mask bits.
var<workgroup> key_tile: array<f32, select(1u, BK * D, STAGE)>;
var<workgroup> value_tile: array<f32, select(1u, BK * VW, STAGE)>;
var<workgroup> mask_tile: array<u32, select(1u, BK, STAGE)>;

// The (batch b, search σ) this workgroup serves, and the first key row of batch b in `proj`.
var<private> b: u32;
var<private> head: u32;

fn key_at(t0: u32, t: u32, k: u32) -> f32 {
    if (STAGE) {
        return key_tile[t * D + k];
    }
    let j = min(t0 + t, params.seq - 1u);
    return proj[(b * params.seq + j) * params.row_stride + params.k_offset + head * D + k];
}

fn value_at(t0: u32, t: u32, c: u32) -> f32 {
    if (STAGE) {
        return value_tile[t * VW + c];
    }
    let j = min(t0 + t, params.seq - 1u);
    return proj[(b * params.seq + j) * params.row_stride + params.v_offset + c];
}

fn key_allowed(t0: u32, t: u32) -> bool {
    let j = t0 + t;
    if (STAGE) {
        return mask_tile[t] != 0u;
    }
    return j < params.seq && mask[b * params.seq + min(j, params.seq - 1u)] != 0u;
}

// Copies keys t0 .. t0 + BK (their SK block, RV columns and mask bits) into workgroup memory.
fn stage_tile(t0: u32, lane: u32) {
    workgroupBarrier();
    let n = params.seq;
    for (var e = lane; e < BK * D; e += WG) {
        let j = min(t0 + e / D, n - 1u);
        key_tile[e] = proj[(b * n + j) * params.row_stride + params.k_offset + head * D + e % D];
    }
    for (var e = lane; e < BK * VW; e += WG) {
        let j = min(t0 + e / VW, n - 1u);
        value_tile[e] = proj[(b * n + j) * params.row_stride + params.v_offset + e % VW];
    }
    for (var t = lane; t < BK; t += WG) {
        let j = t0 + t;
        mask_tile[t] = select(0u, mask[b * n + min(j, n - 1u)], j < n);
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let linear = group.x + group.y * groups.x;
    let tile = linear % params.tiles;
    let bs = linear / params.tiles;
    if (bs >= params.batch * params.searches) {
        return;
    }
    b = bs / params.searches;
    head = bs % params.searches;
    let n = params.seq;

    // This invocation's queries: rows past the end compute on row n-1 and are not stored.
    var query: array<array<f32, D>, QPI>;
    var row: array<u32, QPI>;
    for (var qi = 0u; qi < QPI; qi++) {
        row[qi] = tile * ROWS + qi * WG + lane;
        let base = (b * n + min(row[qi], n - 1u)) * params.row_stride + params.q_offset + head * D;
        for (var k = 0u; k < D; k++) {
            query[qi][k] = params.scale * proj[base + k];
        }
    }

    var running_max: array<f32, QPI>;
    var running_sum: array<f32, QPI>;
    var acc: array<array<f32, VW>, QPI>;
    for (var qi = 0u; qi < QPI; qi++) {
        running_max[qi] = LOWEST;
    }

    // Causal: no query of this tile sees a key past its last row.
    let key_end = select(n, min(n, (tile + 1u) * ROWS), params.causal != 0u);
    for (var t0 = 0u; t0 < key_end; t0 += BK) {
        if (STAGE) {
            stage_tile(t0, lane);
        }
        // Scores of the tile, the tile max over allowed keys, then one rescale per tile.
        var score: array<array<f32, BK>, QPI>;
        var tile_max: array<f32, QPI>;
        for (var qi = 0u; qi < QPI; qi++) {
            tile_max[qi] = LOWEST;
        }
        for (var t = 0u; t < BK; t++) {
            let allowed = key_allowed(t0, t);
            for (var k = 0u; k < D; k++) {
                let key = key_at(t0, t, k);
                for (var qi = 0u; qi < QPI; qi++) {
                    score[qi][t] += query[qi][k] * key;
                }
            }
            for (var qi = 0u; qi < QPI; qi++) {
                let ok = allowed && !(params.causal != 0u && t0 + t > row[qi]);
                score[qi][t] = select(LOWEST, score[qi][t], ok);
                tile_max[qi] = max(tile_max[qi], score[qi][t]);
            }
        }
        var p: array<array<f32, BK>, QPI>;
        for (var qi = 0u; qi < QPI; qi++) {
            let new_max = max(running_max[qi], tile_max[qi]);
            // Before the first allowed key the accumulator is empty: keep the rescale at 1.
            let old_max = select(running_max[qi], new_max, running_sum[qi] == 0.0);
            let rescale = exp(old_max - new_max);
            var tile_sum = 0.0;
            for (var t = 0u; t < BK; t++) {
                p[qi][t] = select(0.0, exp(score[qi][t] - new_max), score[qi][t] != LOWEST);
                tile_sum += p[qi][t];
            }
            running_sum[qi] = running_sum[qi] * rescale + tile_sum;
            running_max[qi] = new_max;
            for (var c = 0u; c < VW; c++) {
                acc[qi][c] *= rescale;
            }
        }
        for (var t = 0u; t < BK; t++) {
            for (var c = 0u; c < VW; c++) {
                let value = value_at(t0, t, c);
                for (var qi = 0u; qi < QPI; qi++) {
                    acc[qi][c] += p[qi][t] * value;
                }
            }
        }
    }

    // Epilogue: normalise, retrieval attention over the R retrieved vectors, one store.
    for (var qi = 0u; qi < QPI; qi++) {
        let i = min(row[qi], n - 1u);
        // running_sum is 0 (no allowed key: uniform row) or at least 1 (the max key's exp(0)).
        let fully_masked = running_sum[qi] == 0.0;
        let inv_sum = 1.0 / max(running_sum[qi], 1.0);
        let qt_base = (b * n + i) * params.row_stride + params.qt_offset + head * D;
        var logit: array<f32, R>;
        var logit_max = LOWEST;
        for (var rho = 0u; rho < R; rho++) {
            var g = 0.0;
            for (var k = 0u; k < D; k++) {
                let c = rho * D + k;
                acc[qi][c] = select(acc[qi][c] * inv_sum, value_mean[b * VW + c], fully_masked);
                g += proj[qt_base + k] * acc[qi][c];
            }
            logit[rho] = params.scale * g;
            logit_max = max(logit_max, logit[rho]);
        }
        var weight_sum = 0.0;
        for (var rho = 0u; rho < R; rho++) {
            logit[rho] = exp(logit[rho] - logit_max);
            weight_sum += logit[rho];
        }
        if (row[qi] < n) {
            let out_base = (b * n + i) * params.searches * D + head * D;
            for (var k = 0u; k < D; k++) {
                var o = 0.0;
                for (var rho = 0u; rho < R; rho++) {
                    o += logit[rho] * acc[qi][rho * D + k];
                }
                concat[out_base + k] = o / weight_sum;
            }
        }
    }
}
