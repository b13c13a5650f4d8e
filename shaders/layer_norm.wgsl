// layer_norm.wgsl: LayerNorm over the model width, for `prenorm`.
//
// Computes   out[t, :] = (x[t, :] - mean) / sqrt(var + eps) * gamma + beta
//            with mean and the biased variance of row t, both by a full pass over the row
//            (two-pass, as PyTorch's nn.LayerNorm; no E[x²] - E[x]² cancellation). The mean is
//            summed relative to the row's first element, so a large common offset costs no
//            precision.
// Bindings   @binding(0) params (uniform)  rows, dim, eps
//            @binding(1) x      [rows, dim]
//            @binding(2) gamma  [dim]
//            @binding(3) beta   [dim]
//            @binding(4) out    [rows, dim]
// Dispatch   one workgroup of WG invocations per row, numbered linearly over x and y.
// Host constants  WG (a power of two, at most 256).
// Includes   common/workgroup_reduce.wgsl or common/subgroup_reduce.wgsl (the host's
//            Reduction: Invocation, workgroup_sum, workgroup_max).

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    invocation: Invocation,
) {
    let lane = invocation.index;
    let row = group.x + group.y * groups.x;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.dim;
    let width = f32(params.dim);

    let shift = x[base];
    var sum = 0.0;
    for (var c = lane; c < params.dim; c += WG) {
        sum += x[base + c] - shift;
    }
    let mean = shift + workgroup_sum(invocation, sum) / width;

    var squares = 0.0;
    for (var c = lane; c < params.dim; c += WG) {
        let centred = x[base + c] - mean;
        squares += centred * centred;
    }
    let inv_std = inverseSqrt(workgroup_sum(invocation, squares) / width + params.eps);

    for (var c = lane; c < params.dim; c += WG) {
        out[base + c] = (x[base + c] - mean) * inv_std * gamma[c] + beta[c];
    }
}
