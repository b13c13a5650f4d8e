// selection_backward.wgsl: the backward's per-row pass, output → selection → retrieved values:
// the gradients of Ret and of Q̃ for one query row, and FlashAttention-2's row term D.
//
// Computes   for row (b, σ, i), token t, dO = d_concat[t, σ·d ..], C̃_ρ = C_ρ·f_ρ with f_ρ the
//            selection's dropout factor (stream 1, row·r + ρ):
//              dC_ρ   = f_ρ · dO·Ret_ρ
//              dG_ρ   = C_ρ · (dC_ρ − Σ_ρ' C_ρ'·dC_ρ')                 (softmax over ρ)
//              dRet_ρ = C̃_ρ·dO + scale·dG_ρ·Q̃                        (G_ρ = scale·Q̃·Ret_ρ)
//              dQ̃     = scale · Σ_ρ dG_ρ·Ret_ρ
//              D      = Σ_ρ dRet_ρ·Ret_ρ  (= Σ_j A_j·dA_j: the search softmax's row term)
//            d_ret[row] = dRet, d_qt[t, σ·d ..] = dQ̃, stats[row].z = D.
// Bindings   @binding(0) params (uniform, common/train_params.wgsl)
//            @binding(1) d_concat  [b·n, s·d] f32
//            @binding(2) ret       [b·s·n, r·d] f32
//            @binding(3) selection [b·s·n, r] f32      C before dropout
//            @binding(4) qt        [b·n, s·d] f32      Q̃
//            @binding(5) d_ret     [b·s·n, r·d] f32    written
//            @binding(6) d_qt      [b·n, s·d] f32      written
//            @binding(7) stats     [b·s·n] vec4<f32>   .z written
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y.
// Host constants  WG, R (= r).
// Includes   common/philox.wgsl, common/train_params.wgsl, common/train_dropout.wgsl.

@group(0) @binding(1) var<storage, read> d_concat: array<f32>;
@group(0) @binding(2) var<storage, read> ret: array<f32>;
@group(0) @binding(3) var<storage, read> selection: array<f32>;
@group(0) @binding(4) var<storage, read> qt: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_ret: array<f32>;
@group(0) @binding(6) var<storage, read_write> d_qt: array<f32>;
@group(0) @binding(7) var<storage, read_write> stats: array<vec4<f32>>;

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
    var c: array<f32, R>;
    var factor: array<f32, R>;
    var d_g: array<f32, R>;
    var mean = 0.0;
    for (var rho = 0u; rho < R; rho++) {
        c[rho] = selection[row * R + rho];
        factor[rho] = dropout_factor(SELECTION_STREAM, row, R, rho);
        var sum = 0.0;
        for (var e = 0u; e < d; e++) {
            sum += d_concat[slice + e] * ret[(row * R + rho) * d + e];
        }
        d_g[rho] = factor[rho] * sum;
        mean += c[rho] * d_g[rho];
    }
    for (var rho = 0u; rho < R; rho++) {
        d_g[rho] = c[rho] * (d_g[rho] - mean);
    }
    var row_term = 0.0;
    for (var e = 0u; e < d; e++) {
        let d_o = d_concat[slice + e];
        let q = qt[slice + e];
        var d_q = 0.0;
        for (var rho = 0u; rho < R; rho++) {
            let at = (row * R + rho) * d + e;
            let r_value = ret[at];
            let d_r = c[rho] * factor[rho] * d_o + params.scale * d_g[rho] * q;
            d_ret[at] = d_r;
            row_term += d_r * r_value;
            d_q += d_g[rho] * r_value;
        }
        d_qt[slice + e] = params.scale * d_q;
    }
    let row_stats = stats[row];
    stats[row] = vec4<f32>(row_stats.x, row_stats.y, row_term, 0.0);
}
