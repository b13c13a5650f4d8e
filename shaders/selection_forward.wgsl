// selection_forward.wgsl: the training forward's retrieval selection, per query row: the
// selection softmax over the retrievals (kept, before dropout, for the backward) and the
// search's output slice of `concat`.
//
// Computes   for row (b, σ, i), token t = b·n + i, with Q̃ = RQ·W_rk (a GEMM before this pass):
//              G_ρ = scale · Q̃[t, σ] · Ret[row, ρ]
//              C = softmax_ρ(G)                             selection[row, ρ] = C_ρ
//              concat[t, σ·d + e] = Σ_ρ C_ρ·dropout(stream 1, row·r + ρ) · Ret[row, ρ·d + e]
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) ret       [b·s·n, r·d] f32
//            @binding(2) qt        [b·n, s·d] f32      Q̃
//            @binding(3) selection [b·s·n, r] f32      written
//            @binding(4) concat    [b·n, s·d] f32      written
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y.
// Host constants  WG, R (= r).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl.

@group(0) @binding(1) var<storage, read> ret: array<f32>;
@group(0) @binding(2) var<storage, read> qt: array<f32>;
@group(0) @binding(3) var<storage, read_write> selection: array<f32>;
@group(0) @binding(4) var<storage, read_write> concat: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = linear_index(group, groups, lane);
    if (row >= params.batch * params.searches * params.seq) {
        return;
    }
    let d = params.head;
    let i = row % params.seq;
    let sigma = (row / params.seq) % params.searches;
    let b = row / (params.seq * params.searches);
    let slice = (b * params.seq + i) * params.searches * d + sigma * d;
    var logits: array<f32, R>;
    var top = -3.4028234663852886e38;
    for (var rho = 0u; rho < R; rho++) {
        var sum = 0.0;
        for (var e = 0u; e < d; e++) {
            sum += qt[slice + e] * ret[(row * R + rho) * d + e];
        }
        logits[rho] = params.scale * sum;
        top = max(top, logits[rho]);
    }
    var total = 0.0;
    for (var rho = 0u; rho < R; rho++) {
        logits[rho] = exp(logits[rho] - top);
        total += logits[rho];
    }
    var kept: array<f32, R>;
    for (var rho = 0u; rho < R; rho++) {
        let c = logits[rho] / total;
        selection[row * R + rho] = c;
        kept[rho] = c * dropout_factor(SELECTION_STREAM, row, R, rho);
    }
    for (var e = 0u; e < d; e++) {
        var sum = 0.0;
        for (var rho = 0u; rho < R; rho++) {
            sum += kept[rho] * ret[(row * R + rho) * d + e];
        }
        concat[slice + e] = sum;
    }
}
