// layer_norm_backward.wgsl: the backward of prenorm's LayerNorm for one token row, and the
// products the γ gradient sums (its column sums are a column_sum pass after this one).
//
// Computes   for row t with x̂ = (x − μ)·inv, inv = 1/√(var + eps) (biased variance, as forward):
//              dx̂ = dh·γ
//              dx[t] = inv · (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))
//              scaled[t] = dh ⊙ x̂                           (Σ_t scaled = dγ; Σ_t dh = dβ)
// Bindings   @binding(0) params (uniform)  rows, dim, eps
//            @binding(1) x      [rows, dim] f32   the LayerNorm's input
//            @binding(2) gamma  [dim] f32
//            @binding(3) d_h    [rows, dim] f32   the gradient of its output
//            @binding(4) d_x    [rows, dim] f32   written
//            @binding(5) scaled [rows, dim] f32   written
// Dispatch   one invocation per row, WG per workgroup, numbered linearly over x and y; three
//            passes over the row (statistics, the two means, the gradient).
// Host constants  WG.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> d_h: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_x: array<f32>;
@group(0) @binding(5) var<storage, read_write> scaled: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = (group.x + group.y * groups.x) * WG + lane;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.dim;
    let n = f32(params.dim);
    var mean = 0.0;
    for (var c = 0u; c < params.dim; c++) {
        mean += x[base + c];
    }
    mean /= n;
    var variance = 0.0;
    for (var c = 0u; c < params.dim; c++) {
        let centred = x[base + c] - mean;
        variance += centred * centred;
    }
    let inv = inverseSqrt(variance / n + params.eps);
    var mean_dxh = 0.0;
    var mean_dxh_xh = 0.0;
    for (var c = 0u; c < params.dim; c++) {
        let x_hat = (x[base + c] - mean) * inv;
        let d_x_hat = d_h[base + c] * gamma[c];
        mean_dxh += d_x_hat;
        mean_dxh_xh += d_x_hat * x_hat;
        scaled[base + c] = d_h[base + c] * x_hat;
    }
    mean_dxh /= n;
    mean_dxh_xh /= n;
    for (var c = 0u; c < params.dim; c++) {
        let x_hat = (x[base + c] - mean) * inv;
        d_x[base + c] = inv * (d_h[base + c] * gamma[c] - mean_dxh - x_hat * mean_dxh_xh);
    }
}
