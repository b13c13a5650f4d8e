// fused_attention.wgsl: compositional attention for one (batch, search, query tile), flash-style.
//
// Computes   for each query i of the tile, search σ, batch b (SPEC §2.3, reassociated per §2.4):
//              A[j]   = softmax over allowed keys j of scale · SQ[i] · SK[j]     (online, f32)
//              Ret[ρ] = Σ_j A[j] · RV[j, ρ·d ..]                 for all ρ at once
//              G[ρ]   = scale · Q̃[i] · Ret[ρ]      with Q̃ = RQ · W_rk, precomputed by the GEMM
//              concat[b, i, σ·d + k] = Σ_ρ softmax_ρ(G)[ρ] · Ret[ρ, k]
//            allowed(j) = mask[b, j] != 0 && (!causal || j <= i + causal_offset). A row with no
//            allowed key uses Ret = value_mean[b] (uniform weights over all keys, the
//            reference's semantics). Nothing n × n is stored; masked scores never enter kept
//            arithmetic. Keys and values come from the queries' own projections (self-attention
//            binds `proj` as `keys` and `values`) or from a memory's cache layout (cross-
//            attention, and self-attention behind extra key rows; src/cross_memory.rs): key
//            position j of search σ at row b·k_batch_rows + σ·k_head_rows + j, elements
//            k_offset + σ·k_head_cols + k, of rows k_stride apart; its values at row
//            b·kv_seq + j, elements v_offset + c, of rows v_stride apart.
//            One dispatch covers keys [key_begin, key_end); where the driver caps loop
//            iterations per invocation, the host splits the keys over several dispatches that
//            carry the running max, sum and accumulators in `carry_*` (first/last flags).
// Bindings   @binding(0) params (uniform)  see Params; strides and offsets count KVec elements
//            @binding(1) proj         [b·n, row_stride]  packed [SQ | SK | Q̃ | RV] columns
//            @binding(2) mask         [b, kv_seq] u32, 0 = key masked
//            @binding(3) value_mean   [b, r·d]  mean of RV over all keys (fully masked rows)
//            @binding(4) concat       [b, n, s·d]  searches concatenated for the output GEMM
//            @binding(5) keys         rows holding SK (`proj`, or a memory's [b, s, L, d])
//            @binding(6) values       rows holding RV (`proj`, or a memory's [b, L, r·d])
//            @binding(7) carry_acc    [b·s·n, r·d]  accumulators between key chunks (split keys)
//            @binding(8) carry_stats  [b·s·n] (running max, running sum)         (split keys)
//            `proj`, `keys`, `values` and `concat` are storage buffers or texel rows, declared
//            by the io piece the host places first: io/fused_buffers.wgsl or
//            io/fused_texels.wgsl (which also define proj_at, key_at_row, value_at_row and
//            store_concat); the carry by io/fused_carry.wgsl or, where one
//            dispatch covers every key, io/fused_single_pass.wgsl (no bindings).
// Dispatch   one workgroup per (b, σ, tile of WG·QPI queries), group = (b·s + σ)·tiles + tile,
//            numbered linearly over x and y. Invocation `lane` owns the queries
//            tile·WG·QPI + qi·WG + lane (qi < QPI), each with a d-wide query and an r·d-wide
//            accumulator in registers, so every key and value element read feeds QPI FMAs.
// Host constants  WG, QPI, BK (keys per tile), D (= d), R (= r), KVec/VEC/kdot (vec4 when
//            d % 4 == 0), STAGE (bool: copy each key tile to workgroup memory, for GPUs; false
//            reads keys straight from `keys` at lane-uniform addresses, for CPU drivers), RPL
//            (rows per texture layer), SELECT (bool: true selects by Q̃·Ret and stores the
//            concatenation; false stores the normalised retrieved vectors Ret [b, s, n, r·d]
//            through the `concat` binding, for an MLP score network's retrieval_select).
// Includes   common/texel_rows.wgsl; one io piece for proj/concat and one for the carry (above).

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
    key_begin: u32,
    key_end: u32,
    first: u32,
    last: u32,
    kv_seq: u32,
    k_stride: u32,
    k_batch_rows: u32,
    k_head_rows: u32,
    k_head_cols: u32,
    v_stride: u32,
    causal_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> value_mean: array<KVec>;

const DV: u32 = D / VEC;
const VWV: u32 = R * DV;
const ROWS: u32 = WG * QPI;
// -FLT_MAX, spelled so that every WGSL front end accepts it as exactly representable.
const LOWEST: f32 = -3.4028234663852886e38;

var<workgroup> key_tile: array<KVec, select(1u, BK * DV, STAGE)>;
var<workgroup> value_tile: array<KVec, select(1u, BK * VWV, STAGE)>;
var<workgroup> mask_tile: array<u32, select(1u, BK, STAGE)>;

var<private> batch_index: u32;
var<private> head: u32;

// The row of query i of this sequence in `proj` (clamped to the last).
fn token(i: u32) -> u32 {
    return batch_index * params.seq + min(i, params.seq - 1u);
}

// The row of value (and mask) position j of this sequence (clamped to the last).
fn kv_token(j: u32) -> u32 {
    return batch_index * params.kv_seq + min(j, params.kv_seq - 1u);
}

// Element k of key position j of this search.
fn key_element(j: u32, k: u32) -> KVec {
    let row = batch_index * params.k_batch_rows + head * params.k_head_rows + min(j, params.kv_seq - 1u);
    return key_at_row(row, params.k_offset + head * params.k_head_cols + k);
}

// Element c of the values of position j.
fn value_element(j: u32, c: u32) -> KVec {
    return value_at_row(kv_token(j), params.v_offset + c);
}

fn key_at(t0: u32, t: u32, k: u32) -> KVec {
    if (STAGE) {
        return key_tile[t * DV + k];
    }
    return key_element(t0 + t, k);
}

fn value_at(t0: u32, t: u32, c: u32) -> KVec {
    if (STAGE) {
        return value_tile[t * VWV + c];
    }
    return value_element(t0 + t, c);
}

fn key_allowed(t0: u32, t: u32, end: u32) -> bool {
    if (STAGE) {
        return mask_tile[t] != 0u;
    }
    return t0 + t < end && mask[kv_token(t0 + t)] != 0u;
}

// Copies keys t0 .. t0 + BK (their SK block, RV columns and mask bits) to workgroup memory.
fn stage_tile(t0: u32, end: u32, lane: u32) {
    workgroupBarrier();
    for (var e = lane; e < BK * DV; e += WG) {
        key_tile[e] = key_element(t0 + e / DV, e % DV);
    }
    for (var e = lane; e < BK * VWV; e += WG) {
        value_tile[e] = value_element(t0 + e / VWV, e % VWV);
    }
    for (var t = lane; t < BK; t += WG) {
        mask_tile[t] = select(0u, mask[kv_token(t0 + t)], t0 + t < end);
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
    batch_index = bs / params.searches;
    head = bs % params.searches;
    let n = params.seq;

    // Every array is written before it is read: some implementations skip WGSL's zero fill.
    var query: array<array<KVec, DV>, QPI>;
    var row: array<u32, QPI>;
    var running_max: array<f32, QPI>;
    var running_sum: array<f32, QPI>;
    var acc: array<array<KVec, VWV>, QPI>;
    var score: array<array<f32, BK>, QPI>;
    var p: array<array<f32, BK>, QPI>;
    var tile_max: array<f32, QPI>;
    var dot: array<f32, QPI>;
    var logit: array<f32, R>;

    // This invocation's queries; rows past the end compute on row n-1 and are not stored.
    for (var qi = 0u; qi < QPI; qi++) {
        row[qi] = tile * ROWS + qi * WG + lane;
        let query_row = token(row[qi]);
        for (var k = 0u; k < DV; k++) {
            query[qi][k] = params.scale * proj_at(query_row, params.q_offset + head * DV + k);
        }
        let carry = bs * n + min(row[qi], n - 1u);
        if (params.first != 0u) {
            running_max[qi] = LOWEST;
            running_sum[qi] = 0.0;
            for (var c = 0u; c < VWV; c++) {
                acc[qi][c] = KVec();
            }
        } else {
            let stats = load_carry_stats(carry);
            running_max[qi] = stats.x;
            running_sum[qi] = stats.y;
            for (var c = 0u; c < VWV; c++) {
                acc[qi][c] = load_carry_acc(carry, c);
            }
        }
    }

    // Causal: no query of this tile sees a key past its last row (behind the extra rows).
    let last_key = (tile + 1u) * ROWS + params.causal_offset;
    let key_end = select(params.key_end, min(params.key_end, last_key), params.causal != 0u);
    for (var t0 = params.key_begin; t0 < key_end; t0 += BK) {
        if (STAGE) {
            stage_tile(t0, key_end, lane);
        }
        // Scores of the tile and their max over allowed keys, then one rescale per tile.
        for (var qi = 0u; qi < QPI; qi++) {
            tile_max[qi] = LOWEST;
        }
        for (var t = 0u; t < BK; t++) {
            let allowed = key_allowed(t0, t, key_end);
            for (var qi = 0u; qi < QPI; qi++) {
                dot[qi] = 0.0;
            }
            for (var k = 0u; k < DV; k++) {
                let key = key_at(t0, t, k);
                for (var qi = 0u; qi < QPI; qi++) {
                    dot[qi] += kdot(query[qi][k], key);
                }
            }
            for (var qi = 0u; qi < QPI; qi++) {
                let visible = allowed && !(params.causal != 0u && t0 + t > row[qi] + params.causal_offset);
                score[qi][t] = select(LOWEST, dot[qi], visible);
                tile_max[qi] = max(tile_max[qi], score[qi][t]);
            }
        }
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
            for (var c = 0u; c < VWV; c++) {
                acc[qi][c] *= rescale;
            }
        }
        for (var t = 0u; t < BK; t++) {
            for (var c = 0u; c < VWV; c++) {
                let value = value_at(t0, t, c);
                for (var qi = 0u; qi < QPI; qi++) {
                    acc[qi][c] += p[qi][t] * value;
                }
            }
        }
    }

    if (params.last == 0u) {
        // More key chunks follow: hand the running state to the next dispatch.
        for (var qi = 0u; qi < QPI; qi++) {
            if (row[qi] < n) {
                let carry = bs * n + row[qi];
                store_carry_stats(carry, vec2<f32>(running_max[qi], running_sum[qi]));
                for (var c = 0u; c < VWV; c++) {
                    store_carry_acc(carry, c, acc[qi][c]);
                }
            }
        }
        return;
    }

    // Epilogue: normalise, retrieval attention over the R retrieved vectors, one store.
    for (var qi = 0u; qi < QPI; qi++) {
        // running_sum is 0 (no allowed key: uniform row) or at least 1 (the max key's exp(0)).
        let fully_masked = running_sum[qi] == 0.0;
        let inv_sum = 1.0 / max(running_sum[qi], 1.0);
        if (!SELECT) {
            // The MLP score network selects after this kernel, from the stored vectors.
            if (row[qi] < n) {
                for (var c = 0u; c < VWV; c++) {
                    let value = select(acc[qi][c] * inv_sum, value_mean[batch_index * VWV + c], fully_masked);
                    store_retrieved(bs * n + row[qi], c, value);
                }
            }
            continue;
        }
        let query_row = token(row[qi]);
        var logit_max = LOWEST;
        for (var rho = 0u; rho < R; rho++) {
            var g = 0.0;
            for (var k = 0u; k < DV; k++) {
                let c = rho * DV + k;
                acc[qi][c] = select(acc[qi][c] * inv_sum, value_mean[batch_index * VWV + c], fully_masked);
                g += kdot(proj_at(query_row, params.qt_offset + head * DV + k), acc[qi][c]);
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
            for (var k = 0u; k < DV; k++) {
                var o = KVec();
                for (var rho = 0u; rho < R; rho++) {
                    o += logit[rho] * acc[qi][rho * DV + k];
                }
                store_concat(query_row, head * DV + k, o / weight_sum);
            }
        }
    }
}
