// blocked_attention.wgsl: the fused search and aggregation for CPU drivers, as 4 × 4 blocks.
//
// Computes   for each query i of the tile, search σ, batch b and 4·COLS value columns from c0:
//              A[j]   = softmax over allowed keys j of scale · SQ[i] · SK[j]      (online, f32)
//              retrieved[b, σ, i, c] = Σ_j A[j] · RV[j, c]      (normalised; for every retrieval,
//                                                                   since c runs over r·d)
//              m, l   = the row's softmax statistics: max of the allowed scores, Σ exp(score − m)
//            allowed(j) = mask[b, j] != 0 && (!causal || j <= i + causal_offset). A row with no
//            allowed key gets value_mean[b, c] (uniform weights over all keys, the reference's
//            semantics) and l = 0. Inference's retrieval selection follows in retrieval_mix.wgsl;
//            training's forward keeps the statistics and the retrieved values for its backward.
//            Nothing n × n is stored. The output piece decides what is written: the retrieved
//            texel rows (io/blocked_out_texels.wgsl), or Ret and the statistics in buffers
//            (io/blocked_out_training.wgsl). Keys and values come from the queries' own
//            projections (self-attention: `keys` and `values` are `proj`) or from a memory's
//            texel rows (cross-attention, and self-attention behind extra key rows,
//            src/cross_memory.rs): key row b·k_batch_rows + σ·k_head_rows + j at texels
//            k_offset + σ·k_head_texels + t, value row b·kv_seq + j at texels v_offset + c.
// Why        On CPU drivers (lavapipe, SwiftShader) invocations are SIMD lanes and every operand
//            fetch is a gather; arrays indexed in loops live in memory. Here each lane holds 16
//            queries (four blocks of four) × 4·COLS value columns as named 4 × 4 matrices and
//            computes scores for 16 keys at a time as 4 × 4 matrix products, like
//            gemm_texture.wgsl: 36 to 44 multiply-adds per texel fetched at d = 64 (with 8
//            queries, 23 to 26: on lavapipe the 16-query tile took 4–36 % less time, BENCHMARKS.md
//            "Sixteen rows per lane"). Value columns past one block's 4·COLS are split
//            over SLICES groups of WG lanes (ARCHITECTURE decision 18): lane `lane` of every
//            slice owns the same 16 queries, and each key tile's scores are computed once, each
//            4-key block by one slice (with 4 slices, all four by slice 0: SCORE_ALONE), and
//            shared through workgroup memory, where a workgroup per block would recompute them
//            SLICES times (8 times at r·d = 512). A workgroup
//            runs on one CPU thread on lavapipe, so a slice that computes no block is not idle
//            hardware: the work is what it costs.
// Bindings   @binding(0) params (uniform)  see Params; offsets and widths count texels
//            @binding(1) proj        [b·n, (3s + r)·d] texel rows  packed [SQ | SK | Q̃ | RV]
//            @binding(2) mask        [b, kv_seq] u32, 1 = key may be attended
//            @binding(3) value_mean  [b, r·d / 4] vec4
//            @binding(4) retrieved   [b·s·n, r·d], written: texel rows (rgba32float, or
//                                    rgba16float for an f16 layer: alias RetrievedTexels), or
//                                    an f32 buffer for training (the output piece declares it)
//            @binding(5) key_rows    texel rows holding SK (`proj`, or a memory's [b·s·L, d])
//            @binding(6) value_rows  texel rows holding RV (`proj`, or a memory's [b·L, r·d])
//                                    proj, key_rows and value_rows are read through load_ProjTexels,
//                                    load_KeyTexels, load_ValueTexels: read-only storage
//                                    textures of their format where the device allows, else
//                                    sampled (the host's TexelRead, as in gemm_texture.wgsl)
//            @binding(7) stats       [b·s·n] vec4<f32> (m, l, 0, 0), written by the first value
//                                    block's lanes (training's output piece only)
// Dispatch   one workgroup of LANES = WG·SLICES invocations per (b, σ, tile of 16·WG queries, group
//            of SLICES blocks of 4·COLS value columns), group = ((b·s + σ)·tiles + tile)·
//            slice_groups + slice_group, numbered linearly over x and y. Invocation `index` is
//            lane index % WG of slice index / WG, which computes value block
//            slice_group·SLICES + slice; the lane owns queries tile·16·WG + q·WG + lane (q < 16:
//            rows of blocks 0 .. 3, block b from q = 4b).
// Host constants  WG, DV (= d / 4), COLS (value texels per block: 4, 8 or 16), SLICES (1 to 8),
//            LANES (= WG·SLICES), SHARED (16·WG, or 1 for one slice), RPL; ProjTexels,
//            KeyTexels, ValueTexels (TexelRead: the type and its load function); with
//            io/blocked_out_texels.wgsl, alias RetrievedTexels (the written texel format).
// Includes   common/texel_rows.wgsl; an output piece (io/blocked_out_*.wgsl) declaring
//            `retrieved` (and `stats`), store_retrieved and store_statistics.

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    q_offset: u32,
    k_offset: u32,
    v_offset: u32,
    value_texels: u32,
    scale: f32,
    tiles: u32,
    slice_groups: u32,
    causal: u32,
    kv_seq: u32,
    k_batch_rows: u32,
    k_head_rows: u32,
    k_head_texels: u32,
    causal_offset: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var proj: ProjTexels;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> value_mean: array<vec4<f32>>;
@group(0) @binding(5) var key_rows: KeyTexels;
@group(0) @binding(6) var value_rows: ValueTexels;

const BK: u32 = 16u;
// Whether slice 0 scores each key tile alone (16 query and 16 key texels a head texel, each read
// once) and shares it, where the slices would otherwise score a 4-key block each (reading all 16
// query texels each). A workgroup runs on one CPU thread on lavapipe, so this costs no
// parallelism there; measured (BENCHMARKS.md, "One slice scores the tile") faster with 4 slices
// in 8 rounds of 8, and not with 2 (each scores 8 keys) or 8 (slower in 5 rounds of 8).
const SCORE_ALONE: bool = SLICES == 1u || SLICES == 4u;

// One key tile's scores, [key block][query block][lane] as [key][query] blocks, written by the
// slice that computes each key block and read by every slice. SHARED = 16·WG where SLICES > 1,
// and 1 for a lone slice, which never touches it: workgroup memory is zeroed per workgroup.
var<workgroup> tile_scores: array<mat4x4<f32>, SHARED>;
// -FLT_MAX, spelled so that every WGSL front end accepts it as exactly representable.
const LOWEST: f32 = -3.4028234663852886e38;

var<private> batch_index: u32;
var<private> head: u32;
var<private> col0: u32;

fn query_texel(row: u32, column: u32) -> vec4<f32> {
    let r = batch_index * params.seq + min(row, params.seq - 1u);
    return load_ProjTexels(texel_coords(r, column), texel_layer(r));
}

// The row of key (or value) position j of this sequence, clamped to the last.
fn position(j: u32) -> u32 {
    return min(j, params.kv_seq - 1u);
}

fn key_texel(j: u32, column: u32) -> vec4<f32> {
    let r = batch_index * params.k_batch_rows + head * params.k_head_rows + position(j);
    return load_KeyTexels(texel_coords(r, column), texel_layer(r));
}

fn value_texel(j: u32, column: u32) -> vec4<f32> {
    let r = batch_index * params.kv_seq + position(j);
    return load_ValueTexels(texel_coords(r, column), texel_layer(r));
}

// Queries r, r + WG, r + 2·WG, r + 3·WG at head texel t, scaled (SQ · d^-1/2, as SPEC orders
// it), as [component][query].
fn query_block(r: u32, t: u32) -> mat4x4<f32> {
    let c = params.q_offset + head * DV + t;
    let rows = mat4x4<f32>(query_texel(r, c), query_texel(r + WG, c), query_texel(r + 2u * WG, c), query_texel(r + 3u * WG, c));
    return transpose(rows * params.scale);
}

// Keys j .. j + 3 at head texel t, as [key][component].
fn key_block(j: u32, t: u32) -> mat4x4<f32> {
    let c = params.k_offset + head * params.k_head_texels + t;
    return mat4x4<f32>(key_texel(j, c), key_texel(j + 1u, c), key_texel(j + 2u, c), key_texel(j + 3u, c));
}

// Values of keys j .. j + 3 at this block's value texel cb, as [column][key].
fn value_block(j: u32, cb: u32) -> mat4x4<f32> {
    let c = params.v_offset + min(col0 + cb, params.value_texels - 1u);
    return transpose(mat4x4<f32>(value_texel(j, c), value_texel(j + 1u, c), value_texel(j + 2u, c), value_texel(j + 3u, c)));
}

fn key_allowed(j: u32, end: u32) -> bool {
    return j < end && mask[batch_index * params.kv_seq + position(j)] != 0u;
}

fn keys_allowed(j: u32, end: u32) -> vec4<bool> {
    return vec4<bool>(key_allowed(j, end), key_allowed(j + 1u, end), key_allowed(j + 2u, end), key_allowed(j + 3u, end));
}

// Scores of key j for four queries, LOWEST where the key is not visible to the query.
fn visible(scores: vec4<f32>, allowed: bool, j: u32, rows: vec4<u32>) -> vec4<f32> {
    let future = vec4<bool>(params.causal != 0u) & (vec4<u32>(j) > rows + vec4<u32>(params.causal_offset));
    return select(vec4<f32>(LOWEST), scores, vec4<bool>(allowed) & !future);
}

// Scores of keys j .. j + 3 for the queries of blocks 0 .. 3 (rows0 ..), masked:
// [key][query] each.
struct BlockScores {
    q0: mat4x4<f32>,
    q1: mat4x4<f32>,
    q2: mat4x4<f32>,
    q3: mat4x4<f32>,
}

fn block_scores(r0: u32, r1: u32, r2: u32, r3: u32, j: u32, end: u32, rows0: vec4<u32>, rows1: vec4<u32>, rows2: vec4<u32>, rows3: vec4<u32>) -> BlockScores {
    var s0 = mat4x4<f32>();
    var s1 = mat4x4<f32>();
    var s2 = mat4x4<f32>();
    var s3 = mat4x4<f32>();
    for (var t = 0u; t < DV; t++) {
        let k = key_block(j, t);
        s0 += query_block(r0, t) * k;
        s1 += query_block(r1, t) * k;
        s2 += query_block(r2, t) * k;
        s3 += query_block(r3, t) * k;
    }
    let allowed = keys_allowed(j, end);
    return BlockScores(masked(s0, j, allowed, rows0), masked(s1, j, allowed, rows1), masked(s2, j, allowed, rows2), masked(s3, j, allowed, rows3));
}

// Scores of keys j .. j + 7 (two blocks) for every query block, reading each query texel once:
// what a slice of two computes.
struct TwoBlockScores {
    a: BlockScores,
    b: BlockScores,
}

fn two_block_scores(r0: u32, r1: u32, r2: u32, r3: u32, j: u32, end: u32, rows0: vec4<u32>, rows1: vec4<u32>, rows2: vec4<u32>, rows3: vec4<u32>) -> TwoBlockScores {
    var s0a = mat4x4<f32>();
    var s0b = mat4x4<f32>();
    var s1a = mat4x4<f32>();
    var s1b = mat4x4<f32>();
    var s2a = mat4x4<f32>();
    var s2b = mat4x4<f32>();
    var s3a = mat4x4<f32>();
    var s3b = mat4x4<f32>();
    for (var t = 0u; t < DV; t++) {
        let ka = key_block(j, t);
        let kb = key_block(j + 4u, t);
        let q0 = query_block(r0, t);
        s0a += q0 * ka;
        s0b += q0 * kb;
        let q1 = query_block(r1, t);
        s1a += q1 * ka;
        s1b += q1 * kb;
        let q2 = query_block(r2, t);
        s2a += q2 * ka;
        s2b += q2 * kb;
        let q3 = query_block(r3, t);
        s3a += q3 * ka;
        s3b += q3 * kb;
    }
    let allowed_a = keys_allowed(j, end);
    let allowed_b = keys_allowed(j + 4u, end);
    return TwoBlockScores(
        BlockScores(masked(s0a, j, allowed_a, rows0), masked(s1a, j, allowed_a, rows1), masked(s2a, j, allowed_a, rows2), masked(s3a, j, allowed_a, rows3)),
        BlockScores(masked(s0b, j + 4u, allowed_b, rows0), masked(s1b, j + 4u, allowed_b, rows1), masked(s2b, j + 4u, allowed_b, rows2), masked(s3b, j + 4u, allowed_b, rows3)),
    );
}

// A [key][query] score block with invisible entries set to LOWEST.
fn masked(s: mat4x4<f32>, j: u32, allowed: vec4<bool>, rows: vec4<u32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        visible(s[0], allowed.x, j, rows),
        visible(s[1], allowed.y, j + 1u, rows),
        visible(s[2], allowed.z, j + 2u, rows),
        visible(s[3], allowed.w, j + 3u, rows),
    );
}

fn block_max(s: mat4x4<f32>) -> vec4<f32> {
    return max(max(s[0], s[1]), max(s[2], s[3]));
}

fn weight(s: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), exp(s - m), s != vec4<f32>(LOWEST));
}

// exp(s - m) per query (row of m), 0 where masked; [key][query].
fn weights(s: mat4x4<f32>, m: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(weight(s[0], m), weight(s[1], m), weight(s[2], m), weight(s[3], m));
}

fn block_sum(p: mat4x4<f32>) -> vec4<f32> {
    return p[0] + p[1] + p[2] + p[3];
}

// The values of keys j .. j + 15 at one value texel: four [column][key] blocks.
struct Values {
    k0: mat4x4<f32>,
    k1: mat4x4<f32>,
    k2: mat4x4<f32>,
    k3: mat4x4<f32>,
}

fn values(j: u32, cb: u32) -> Values {
    return Values(value_block(j, cb), value_block(j + 4u, cb), value_block(j + 8u, cb), value_block(j + 12u, cb));
}

// o · rescale + Σ_k p_k · v_k: a [column][query] accumulator after one key tile, where p_k are
// the [key][query] weights of keys 4k .. 4k + 3 of the tile.
fn update(o: mat4x4<f32>, rescale: vec4<f32>, p0: mat4x4<f32>, p1: mat4x4<f32>, p2: mat4x4<f32>, p3: mat4x4<f32>, v: Values) -> mat4x4<f32> {
    return rescaled(o, rescale) + p0 * v.k0 + p1 * v.k1 + p2 * v.k2 + p3 * v.k3;
}

// Every column of a [column][query] block times a per-query factor.
fn rescaled(o: mat4x4<f32>, r: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(o[0] * r, o[1] * r, o[2] * r, o[3] * r);
}

// Writes the statistics of rows r, r + WG, r + 2·WG, r + 3·WG (the first value block's lanes
// only: every block holds the same).
fn store_row_statistics(r: u32, running_max: vec4<f32>, running_sum: vec4<f32>) {
    if (col0 != 0u) {
        return;
    }
    for (var q = 0u; q < 4u; q++) {
        let row = r + q * WG;
        if (row < params.seq) {
            store_statistics((batch_index * params.searches + head) * params.seq + row, running_max[q], running_sum[q]);
        }
    }
}

// Writes a [column][query] block of retrieved values for rows r, r + WG, ... at value texel cb.
fn store(o: mat4x4<f32>, r: u32, cb: u32, running_sum: vec4<f32>) {
    let rows = transpose(o);
    let t = col0 + cb;
    if (t >= params.value_texels) {
        return;
    }
    let mean = value_mean[batch_index * params.value_texels + t];
    for (var q = 0u; q < 4u; q++) {
        let row = r + q * WG;
        if (row < params.seq) {
            // running_sum is 0 (no allowed key: uniform row) or at least 1.
            let value = select(rows[q] / max(running_sum[q], 1.0), mean, running_sum[q] == 0.0);
            store_retrieved((batch_index * params.searches + head) * params.seq + row, t, value);
        }
    }
}

@compute @workgroup_size(LANES)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
) {
    let linear = group.x + group.y * groups.x;
    let slice_group = linear % params.slice_groups;
    let tile = (linear / params.slice_groups) % params.tiles;
    let bs = linear / (params.slice_groups * params.tiles);
    if (bs >= params.batch * params.searches) {
        return;
    }
    let slice = index / WG;
    let lane = index % WG;
    batch_index = bs / params.searches;
    head = bs % params.searches;
    col0 = (slice_group * SLICES + slice) * COLS;
    let r0 = tile * 16u * WG + lane;
    let r1 = r0 + 4u * WG;
    let r2 = r0 + 8u * WG;
    let r3 = r0 + 12u * WG;
    let rows0 = vec4<u32>(r0, r0 + WG, r0 + 2u * WG, r0 + 3u * WG);
    let rows1 = rows0 + vec4<u32>(4u * WG);
    let rows2 = rows0 + vec4<u32>(8u * WG);
    let rows3 = rows0 + vec4<u32>(12u * WG);

    var max0 = vec4<f32>(LOWEST);
    var max1 = vec4<f32>(LOWEST);
    var max2 = vec4<f32>(LOWEST);
    var max3 = vec4<f32>(LOWEST);
    var sum0 = vec4<f32>(0.0);
    var sum1 = vec4<f32>(0.0);
    var sum2 = vec4<f32>(0.0);
    var sum3 = vec4<f32>(0.0);
    // o<b>_<c>: queries of block b, value texel c of this column block; [column][query].
    // Texels 4 .. 7 are used when COLS >= 8, 8 .. 15 when COLS == 16.
    var o0_0 = mat4x4<f32>();
    var o1_0 = mat4x4<f32>();
    var o2_0 = mat4x4<f32>();
    var o3_0 = mat4x4<f32>();
    var o0_1 = mat4x4<f32>();
    var o1_1 = mat4x4<f32>();
    var o2_1 = mat4x4<f32>();
    var o3_1 = mat4x4<f32>();
    var o0_2 = mat4x4<f32>();
    var o1_2 = mat4x4<f32>();
    var o2_2 = mat4x4<f32>();
    var o3_2 = mat4x4<f32>();
    var o0_3 = mat4x4<f32>();
    var o1_3 = mat4x4<f32>();
    var o2_3 = mat4x4<f32>();
    var o3_3 = mat4x4<f32>();
    var o0_4 = mat4x4<f32>();
    var o1_4 = mat4x4<f32>();
    var o2_4 = mat4x4<f32>();
    var o3_4 = mat4x4<f32>();
    var o0_5 = mat4x4<f32>();
    var o1_5 = mat4x4<f32>();
    var o2_5 = mat4x4<f32>();
    var o3_5 = mat4x4<f32>();
    var o0_6 = mat4x4<f32>();
    var o1_6 = mat4x4<f32>();
    var o2_6 = mat4x4<f32>();
    var o3_6 = mat4x4<f32>();
    var o0_7 = mat4x4<f32>();
    var o1_7 = mat4x4<f32>();
    var o2_7 = mat4x4<f32>();
    var o3_7 = mat4x4<f32>();
    var o0_8 = mat4x4<f32>();
    var o1_8 = mat4x4<f32>();
    var o2_8 = mat4x4<f32>();
    var o3_8 = mat4x4<f32>();
    var o0_9 = mat4x4<f32>();
    var o1_9 = mat4x4<f32>();
    var o2_9 = mat4x4<f32>();
    var o3_9 = mat4x4<f32>();
    var o0_10 = mat4x4<f32>();
    var o1_10 = mat4x4<f32>();
    var o2_10 = mat4x4<f32>();
    var o3_10 = mat4x4<f32>();
    var o0_11 = mat4x4<f32>();
    var o1_11 = mat4x4<f32>();
    var o2_11 = mat4x4<f32>();
    var o3_11 = mat4x4<f32>();
    var o0_12 = mat4x4<f32>();
    var o1_12 = mat4x4<f32>();
    var o2_12 = mat4x4<f32>();
    var o3_12 = mat4x4<f32>();
    var o0_13 = mat4x4<f32>();
    var o1_13 = mat4x4<f32>();
    var o2_13 = mat4x4<f32>();
    var o3_13 = mat4x4<f32>();
    var o0_14 = mat4x4<f32>();
    var o1_14 = mat4x4<f32>();
    var o2_14 = mat4x4<f32>();
    var o3_14 = mat4x4<f32>();
    var o0_15 = mat4x4<f32>();
    var o1_15 = mat4x4<f32>();
    var o2_15 = mat4x4<f32>();
    var o3_15 = mat4x4<f32>();

    // Causal: no query of this tile sees a key past its last row (behind the extra rows).
    let last = (tile + 1u) * 16u * WG + params.causal_offset;
    let key_end = select(params.kv_seq, min(params.kv_seq, last), params.causal != 0u);
    for (var j0 = 0u; j0 < key_end; j0 += BK) {
        // Scores s_bk: queries of block b against keys j0 + 4k .. + 3; [key][query].
        var s00 = mat4x4<f32>();
        var s01 = mat4x4<f32>();
        var s02 = mat4x4<f32>();
        var s03 = mat4x4<f32>();
        var s10 = mat4x4<f32>();
        var s11 = mat4x4<f32>();
        var s12 = mat4x4<f32>();
        var s13 = mat4x4<f32>();
        var s20 = mat4x4<f32>();
        var s21 = mat4x4<f32>();
        var s22 = mat4x4<f32>();
        var s23 = mat4x4<f32>();
        var s30 = mat4x4<f32>();
        var s31 = mat4x4<f32>();
        var s32 = mat4x4<f32>();
        var s33 = mat4x4<f32>();
        // Slice 0 scores the whole tile (the lone slice, and SCORE_ALONE), in a loop that runs
        // once for it and not at all for the other slices' lanes.
        if (SCORE_ALONE) {
            for (var once = slice; once == 0u; once = 1u) {
                for (var t = 0u; t < DV; t++) {
                    let q0 = query_block(r0, t);
                    let q1 = query_block(r1, t);
                    let q2 = query_block(r2, t);
                    let q3 = query_block(r3, t);
                    let k0 = key_block(j0 + 0u, t);
                    let k1 = key_block(j0 + 4u, t);
                    let k2 = key_block(j0 + 8u, t);
                    let k3 = key_block(j0 + 12u, t);
                    s00 += q0 * k0;
                    s01 += q0 * k1;
                    s02 += q0 * k2;
                    s03 += q0 * k3;
                    s10 += q1 * k0;
                    s11 += q1 * k1;
                    s12 += q1 * k2;
                    s13 += q1 * k3;
                    s20 += q2 * k0;
                    s21 += q2 * k1;
                    s22 += q2 * k2;
                    s23 += q2 * k3;
                    s30 += q3 * k0;
                    s31 += q3 * k1;
                    s32 += q3 * k2;
                    s33 += q3 * k3;
                }
                let a0 = keys_allowed(j0 + 0u, key_end);
                let a1 = keys_allowed(j0 + 4u, key_end);
                let a2 = keys_allowed(j0 + 8u, key_end);
                let a3 = keys_allowed(j0 + 12u, key_end);
                s00 = masked(s00, j0 + 0u, a0, rows0);
                s01 = masked(s01, j0 + 4u, a1, rows0);
                s02 = masked(s02, j0 + 8u, a2, rows0);
                s03 = masked(s03, j0 + 12u, a3, rows0);
                s10 = masked(s10, j0 + 0u, a0, rows1);
                s11 = masked(s11, j0 + 4u, a1, rows1);
                s12 = masked(s12, j0 + 8u, a2, rows1);
                s13 = masked(s13, j0 + 12u, a3, rows1);
                s20 = masked(s20, j0 + 0u, a0, rows2);
                s21 = masked(s21, j0 + 4u, a1, rows2);
                s22 = masked(s22, j0 + 8u, a2, rows2);
                s23 = masked(s23, j0 + 12u, a3, rows2);
                s30 = masked(s30, j0 + 0u, a0, rows3);
                s31 = masked(s31, j0 + 4u, a1, rows3);
                s32 = masked(s32, j0 + 8u, a2, rows3);
                s33 = masked(s33, j0 + 12u, a3, rows3);
            }
        }
        if (SLICES > 1u) {
            if (SCORE_ALONE) {
                if (slice == 0u) {
                    tile_scores[0u * WG + lane] = s00;
                    tile_scores[1u * WG + lane] = s10;
                    tile_scores[2u * WG + lane] = s20;
                    tile_scores[3u * WG + lane] = s30;
                    tile_scores[4u * WG + lane] = s01;
                    tile_scores[5u * WG + lane] = s11;
                    tile_scores[6u * WG + lane] = s21;
                    tile_scores[7u * WG + lane] = s31;
                    tile_scores[8u * WG + lane] = s02;
                    tile_scores[9u * WG + lane] = s12;
                    tile_scores[10u * WG + lane] = s22;
                    tile_scores[11u * WG + lane] = s32;
                    tile_scores[12u * WG + lane] = s03;
                    tile_scores[13u * WG + lane] = s13;
                    tile_scores[14u * WG + lane] = s23;
                    tile_scores[15u * WG + lane] = s33;
                }
            } else if (SLICES == 2u) {
                let kb = 2u * slice;
                let two = two_block_scores(r0, r1, r2, r3, j0 + 4u * kb, key_end, rows0, rows1, rows2, rows3);
                tile_scores[(4u * kb + 0u) * WG + lane] = two.a.q0;
                tile_scores[(4u * kb + 1u) * WG + lane] = two.a.q1;
                tile_scores[(4u * kb + 2u) * WG + lane] = two.a.q2;
                tile_scores[(4u * kb + 3u) * WG + lane] = two.a.q3;
                tile_scores[(4u * kb + 4u) * WG + lane] = two.b.q0;
                tile_scores[(4u * kb + 5u) * WG + lane] = two.b.q1;
                tile_scores[(4u * kb + 6u) * WG + lane] = two.b.q2;
                tile_scores[(4u * kb + 7u) * WG + lane] = two.b.q3;
            } else {
                // One block per slice from five slices up; with three, slice 0 also takes block 3.
                for (var kb = slice; kb < 4u; kb += SLICES) {
                    let block = block_scores(r0, r1, r2, r3, j0 + 4u * kb, key_end, rows0, rows1, rows2, rows3);
                    tile_scores[(4u * kb + 0u) * WG + lane] = block.q0;
                    tile_scores[(4u * kb + 1u) * WG + lane] = block.q1;
                    tile_scores[(4u * kb + 2u) * WG + lane] = block.q2;
                    tile_scores[(4u * kb + 3u) * WG + lane] = block.q3;
                }
            }
            workgroupBarrier();
            s00 = tile_scores[0u * WG + lane];
            s10 = tile_scores[1u * WG + lane];
            s20 = tile_scores[2u * WG + lane];
            s30 = tile_scores[3u * WG + lane];
            s01 = tile_scores[4u * WG + lane];
            s11 = tile_scores[5u * WG + lane];
            s21 = tile_scores[6u * WG + lane];
            s31 = tile_scores[7u * WG + lane];
            s02 = tile_scores[8u * WG + lane];
            s12 = tile_scores[9u * WG + lane];
            s22 = tile_scores[10u * WG + lane];
            s32 = tile_scores[11u * WG + lane];
            s03 = tile_scores[12u * WG + lane];
            s13 = tile_scores[13u * WG + lane];
            s23 = tile_scores[14u * WG + lane];
            s33 = tile_scores[15u * WG + lane];
            // Every slice has its copy before the next tile overwrites the shared one.
            workgroupBarrier();
        }

        // Online softmax, one rescale per tile; before the first allowed key keep it at 1.
        let new0 = max(max0, max(max(block_max(s00), block_max(s01)), max(block_max(s02), block_max(s03))));
        let new1 = max(max1, max(max(block_max(s10), block_max(s11)), max(block_max(s12), block_max(s13))));
        let new2 = max(max2, max(max(block_max(s20), block_max(s21)), max(block_max(s22), block_max(s23))));
        let new3 = max(max3, max(max(block_max(s30), block_max(s31)), max(block_max(s32), block_max(s33))));
        let rescale0 = exp(select(max0, new0, sum0 == vec4<f32>(0.0)) - new0);
        let rescale1 = exp(select(max1, new1, sum1 == vec4<f32>(0.0)) - new1);
        let rescale2 = exp(select(max2, new2, sum2 == vec4<f32>(0.0)) - new2);
        let rescale3 = exp(select(max3, new3, sum3 == vec4<f32>(0.0)) - new3);
        max0 = new0;
        max1 = new1;
        max2 = new2;
        max3 = new3;
        let p00 = weights(s00, new0);
        let p01 = weights(s01, new0);
        let p02 = weights(s02, new0);
        let p03 = weights(s03, new0);
        let p10 = weights(s10, new1);
        let p11 = weights(s11, new1);
        let p12 = weights(s12, new1);
        let p13 = weights(s13, new1);
        let p20 = weights(s20, new2);
        let p21 = weights(s21, new2);
        let p22 = weights(s22, new2);
        let p23 = weights(s23, new2);
        let p30 = weights(s30, new3);
        let p31 = weights(s31, new3);
        let p32 = weights(s32, new3);
        let p33 = weights(s33, new3);
        sum0 = sum0 * rescale0 + block_sum(p00) + block_sum(p01) + block_sum(p02) + block_sum(p03);
        sum1 = sum1 * rescale1 + block_sum(p10) + block_sum(p11) + block_sum(p12) + block_sum(p13);
        sum2 = sum2 * rescale2 + block_sum(p20) + block_sum(p21) + block_sum(p22) + block_sum(p23);
        sum3 = sum3 * rescale3 + block_sum(p30) + block_sum(p31) + block_sum(p32) + block_sum(p33);

        // o += p · v for each value texel of the block.
        let v0 = values(j0, 0u);
        let v1 = values(j0, 1u);
        let v2 = values(j0, 2u);
        let v3 = values(j0, 3u);
        o0_0 = update(o0_0, rescale0, p00, p01, p02, p03, v0);
        o1_0 = update(o1_0, rescale1, p10, p11, p12, p13, v0);
        o2_0 = update(o2_0, rescale2, p20, p21, p22, p23, v0);
        o3_0 = update(o3_0, rescale3, p30, p31, p32, p33, v0);
        o0_1 = update(o0_1, rescale0, p00, p01, p02, p03, v1);
        o1_1 = update(o1_1, rescale1, p10, p11, p12, p13, v1);
        o2_1 = update(o2_1, rescale2, p20, p21, p22, p23, v1);
        o3_1 = update(o3_1, rescale3, p30, p31, p32, p33, v1);
        o0_2 = update(o0_2, rescale0, p00, p01, p02, p03, v2);
        o1_2 = update(o1_2, rescale1, p10, p11, p12, p13, v2);
        o2_2 = update(o2_2, rescale2, p20, p21, p22, p23, v2);
        o3_2 = update(o3_2, rescale3, p30, p31, p32, p33, v2);
        o0_3 = update(o0_3, rescale0, p00, p01, p02, p03, v3);
        o1_3 = update(o1_3, rescale1, p10, p11, p12, p13, v3);
        o2_3 = update(o2_3, rescale2, p20, p21, p22, p23, v3);
        o3_3 = update(o3_3, rescale3, p30, p31, p32, p33, v3);
        if (COLS >= 8u) {
            let v4 = values(j0, 4u);
            let v5 = values(j0, 5u);
            let v6 = values(j0, 6u);
            let v7 = values(j0, 7u);
            o0_4 = update(o0_4, rescale0, p00, p01, p02, p03, v4);
            o1_4 = update(o1_4, rescale1, p10, p11, p12, p13, v4);
            o2_4 = update(o2_4, rescale2, p20, p21, p22, p23, v4);
            o3_4 = update(o3_4, rescale3, p30, p31, p32, p33, v4);
            o0_5 = update(o0_5, rescale0, p00, p01, p02, p03, v5);
            o1_5 = update(o1_5, rescale1, p10, p11, p12, p13, v5);
            o2_5 = update(o2_5, rescale2, p20, p21, p22, p23, v5);
            o3_5 = update(o3_5, rescale3, p30, p31, p32, p33, v5);
            o0_6 = update(o0_6, rescale0, p00, p01, p02, p03, v6);
            o1_6 = update(o1_6, rescale1, p10, p11, p12, p13, v6);
            o2_6 = update(o2_6, rescale2, p20, p21, p22, p23, v6);
            o3_6 = update(o3_6, rescale3, p30, p31, p32, p33, v6);
            o0_7 = update(o0_7, rescale0, p00, p01, p02, p03, v7);
            o1_7 = update(o1_7, rescale1, p10, p11, p12, p13, v7);
            o2_7 = update(o2_7, rescale2, p20, p21, p22, p23, v7);
            o3_7 = update(o3_7, rescale3, p30, p31, p32, p33, v7);
        }
        if (COLS == 16u) {
            let v8 = values(j0, 8u);
            let v9 = values(j0, 9u);
            let v10 = values(j0, 10u);
            let v11 = values(j0, 11u);
            let v12 = values(j0, 12u);
            let v13 = values(j0, 13u);
            let v14 = values(j0, 14u);
            let v15 = values(j0, 15u);
            o0_8 = update(o0_8, rescale0, p00, p01, p02, p03, v8);
            o1_8 = update(o1_8, rescale1, p10, p11, p12, p13, v8);
            o2_8 = update(o2_8, rescale2, p20, p21, p22, p23, v8);
            o3_8 = update(o3_8, rescale3, p30, p31, p32, p33, v8);
            o0_9 = update(o0_9, rescale0, p00, p01, p02, p03, v9);
            o1_9 = update(o1_9, rescale1, p10, p11, p12, p13, v9);
            o2_9 = update(o2_9, rescale2, p20, p21, p22, p23, v9);
            o3_9 = update(o3_9, rescale3, p30, p31, p32, p33, v9);
            o0_10 = update(o0_10, rescale0, p00, p01, p02, p03, v10);
            o1_10 = update(o1_10, rescale1, p10, p11, p12, p13, v10);
            o2_10 = update(o2_10, rescale2, p20, p21, p22, p23, v10);
            o3_10 = update(o3_10, rescale3, p30, p31, p32, p33, v10);
            o0_11 = update(o0_11, rescale0, p00, p01, p02, p03, v11);
            o1_11 = update(o1_11, rescale1, p10, p11, p12, p13, v11);
            o2_11 = update(o2_11, rescale2, p20, p21, p22, p23, v11);
            o3_11 = update(o3_11, rescale3, p30, p31, p32, p33, v11);
            o0_12 = update(o0_12, rescale0, p00, p01, p02, p03, v12);
            o1_12 = update(o1_12, rescale1, p10, p11, p12, p13, v12);
            o2_12 = update(o2_12, rescale2, p20, p21, p22, p23, v12);
            o3_12 = update(o3_12, rescale3, p30, p31, p32, p33, v12);
            o0_13 = update(o0_13, rescale0, p00, p01, p02, p03, v13);
            o1_13 = update(o1_13, rescale1, p10, p11, p12, p13, v13);
            o2_13 = update(o2_13, rescale2, p20, p21, p22, p23, v13);
            o3_13 = update(o3_13, rescale3, p30, p31, p32, p33, v13);
            o0_14 = update(o0_14, rescale0, p00, p01, p02, p03, v14);
            o1_14 = update(o1_14, rescale1, p10, p11, p12, p13, v14);
            o2_14 = update(o2_14, rescale2, p20, p21, p22, p23, v14);
            o3_14 = update(o3_14, rescale3, p30, p31, p32, p33, v14);
            o0_15 = update(o0_15, rescale0, p00, p01, p02, p03, v15);
            o1_15 = update(o1_15, rescale1, p10, p11, p12, p13, v15);
            o2_15 = update(o2_15, rescale2, p20, p21, p22, p23, v15);
            o3_15 = update(o3_15, rescale3, p30, p31, p32, p33, v15);
        }
    }

    store_row_statistics(r0, max0, sum0);
    store_row_statistics(r1, max1, sum1);
    store_row_statistics(r2, max2, sum2);
    store_row_statistics(r3, max3, sum3);
    store(o0_0, r0, 0u, sum0);
    store(o1_0, r1, 0u, sum1);
    store(o2_0, r2, 0u, sum2);
    store(o3_0, r3, 0u, sum3);
    store(o0_1, r0, 1u, sum0);
    store(o1_1, r1, 1u, sum1);
    store(o2_1, r2, 1u, sum2);
    store(o3_1, r3, 1u, sum3);
    store(o0_2, r0, 2u, sum0);
    store(o1_2, r1, 2u, sum1);
    store(o2_2, r2, 2u, sum2);
    store(o3_2, r3, 2u, sum3);
    store(o0_3, r0, 3u, sum0);
    store(o1_3, r1, 3u, sum1);
    store(o2_3, r2, 3u, sum2);
    store(o3_3, r3, 3u, sum3);
    if (COLS >= 8u) {
        store(o0_4, r0, 4u, sum0);
        store(o1_4, r1, 4u, sum1);
        store(o2_4, r2, 4u, sum2);
        store(o3_4, r3, 4u, sum3);
        store(o0_5, r0, 5u, sum0);
        store(o1_5, r1, 5u, sum1);
        store(o2_5, r2, 5u, sum2);
        store(o3_5, r3, 5u, sum3);
        store(o0_6, r0, 6u, sum0);
        store(o1_6, r1, 6u, sum1);
        store(o2_6, r2, 6u, sum2);
        store(o3_6, r3, 6u, sum3);
        store(o0_7, r0, 7u, sum0);
        store(o1_7, r1, 7u, sum1);
        store(o2_7, r2, 7u, sum2);
        store(o3_7, r3, 7u, sum3);
    }
    if (COLS == 16u) {
        store(o0_8, r0, 8u, sum0);
        store(o1_8, r1, 8u, sum1);
        store(o2_8, r2, 8u, sum2);
        store(o3_8, r3, 8u, sum3);
        store(o0_9, r0, 9u, sum0);
        store(o1_9, r1, 9u, sum1);
        store(o2_9, r2, 9u, sum2);
        store(o3_9, r3, 9u, sum3);
        store(o0_10, r0, 10u, sum0);
        store(o1_10, r1, 10u, sum1);
        store(o2_10, r2, 10u, sum2);
        store(o3_10, r3, 10u, sum3);
        store(o0_11, r0, 11u, sum0);
        store(o1_11, r1, 11u, sum1);
        store(o2_11, r2, 11u, sum2);
        store(o3_11, r3, 11u, sum3);
        store(o0_12, r0, 12u, sum0);
        store(o1_12, r1, 12u, sum1);
        store(o2_12, r2, 12u, sum2);
        store(o3_12, r3, 12u, sum3);
        store(o0_13, r0, 13u, sum0);
        store(o1_13, r1, 13u, sum1);
        store(o2_13, r2, 13u, sum2);
        store(o3_13, r3, 13u, sum3);
        store(o0_14, r0, 14u, sum0);
        store(o1_14, r1, 14u, sum1);
        store(o2_14, r2, 14u, sum2);
        store(o3_14, r3, 14u, sum3);
        store(o0_15, r0, 15u, sum0);
        store(o1_15, r1, 15u, sum1);
        store(o2_15, r2, 15u, sum2);
        store(o3_15, r3, 15u, sum3);
    }
}
