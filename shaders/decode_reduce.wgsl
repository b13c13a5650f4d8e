// decode_reduce.wgsl: combines decode_attention's split partials and selects the retrieval.
//
// Computes   for query i of batch b, search σ, with splits t that hold (m_t, l_t, acc_t):
//              M = max_t m_t,  l = Σ_t l_t · exp(m_t − M),  Ret[ρ] = Σ_t acc_t[ρ] · exp(m_t − M) / l
//              G[ρ] = scale · Q̃[i] · Ret[ρ]       (Q̃ = RQ · W_rk, from the projection GEMM)
//              concat[b, i, σ·d + k] = Σ_ρ softmax_ρ(G)[ρ] · Ret[ρ, k]
//            Every row has at least one allowed key (itself, or all keys when uniform), so l ≥ 1.
//            Without SELECT (an MLP score network, which retrieval_select.wgsl runs after), it
//            stores the normalised Ret[ρ] instead: concat is then retrieved [b·s·seq, r·d] f32.
// Bindings   @binding(0) params (uniform)  batch, seq, searches, splits, row_stride and
//                        qt_offset (KVec units), scale
//            @binding(1) proj           [b·seq, row_stride] packed projections of the new tokens,
//                                       ProjVec (widened as read)
//            @binding(2) partial_stats  [b·s·seq·splits] (m, l) f32
//            @binding(3) partial_acc    [b·s·seq·splits, r·d] f32
//            @binding(4) concat         [b·seq, s·d] ProjVec (narrowed as stored); without
//                                       SELECT, retrieved [(b·s + σ)·seq + i, r·d] (Proj = f32)
// Dispatch   one invocation per (b, σ, i), WG per workgroup, numbered linearly over x and y.
// Host constants  WG, D (= d), R (= r), SELECT (bool), KVec/VEC/kdot (vec4 when d % 4 == 0), the stored
//            types Proj/ProjVec (f32 or f16; Cache too, unused here).

struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    splits: u32,
    row_stride: u32,
    qt_offset: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> proj: array<ProjVec>;
@group(0) @binding(2) var<storage, read> partial_stats: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> partial_acc: array<KVec>;
@group(0) @binding(4) var<storage, read_write> concat: array<ProjVec>;

const DV: u32 = D / VEC;
const VWV: u32 = R * DV;
const LOWEST: f32 = -3.4028234663852886e38;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = (group.x + group.y * groups.x) * WG + lane;   // (b·s + σ)·seq + i
    if (row >= params.batch * params.searches * params.seq) {
        return;
    }
    let i = row % params.seq;
    let bs = row / params.seq;
    let sigma = bs % params.searches;
    let b = bs / params.searches;
    let first = row * params.splits;

    var global_max = LOWEST;
    for (var t = 0u; t < params.splits; t++) {
        global_max = max(global_max, partial_stats[first + t].x);
    }
    var total = 0.0;
    var ret: array<KVec, VWV>;
    for (var c = 0u; c < VWV; c++) {
        ret[c] = KVec();
    }
    for (var t = 0u; t < params.splits; t++) {
        let stats = partial_stats[first + t];
        // Empty splits (l = 0) add nothing, whatever their m.
        let weight = select(0.0, exp(stats.x - global_max), stats.y > 0.0);
        total += stats.y * weight;
        for (var c = 0u; c < VWV; c++) {
            ret[c] += weight * partial_acc[(first + t) * VWV + c];
        }
    }
    let inv_total = 1.0 / max(total, 1e-30);
    if (!SELECT) {
        for (var c = 0u; c < VWV; c++) {
            concat[row * VWV + c] = ProjVec(ret[c] * inv_total);
        }
        return;
    }
    let token = b * params.seq + i;
    var logit: array<f32, R>;
    var logit_max = LOWEST;
    for (var rho = 0u; rho < R; rho++) {
        var g = 0.0;
        for (var k = 0u; k < DV; k++) {
            let c = rho * DV + k;
            ret[c] = ret[c] * inv_total;
            g += kdot(KVec(proj[token * params.row_stride + params.qt_offset + sigma * DV + k]), ret[c]);
        }
        logit[rho] = params.scale * g;
        logit_max = max(logit_max, logit[rho]);
    }
    var weight_sum = 0.0;
    for (var rho = 0u; rho < R; rho++) {
        logit[rho] = exp(logit[rho] - logit_max);
        weight_sum += logit[rho];
    }
    for (var k = 0u; k < DV; k++) {
        var o = KVec();
        for (var rho = 0u; rho < R; rho++) {
            o += logit[rho] * ret[rho * DV + k];
        }
        concat[token * params.searches * DV + sigma * DV + k] = ProjVec(o / weight_sum);
    }
}
