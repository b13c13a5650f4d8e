// adamw.wgsl: one AdamW step of one parameter, as PyTorch's torch.optim.AdamW computes it
// (decoupled weight decay, bias-corrected moments, amsgrad = False), in f32.
//
// Computes   for every element i < len, with g = gradient[i]:
//              θ ← θ − lr·λ·θ
//              m ← β1·m + (1 − β1)·g
//              v ← β2·v + (1 − β2)·g²
//              θ ← θ − step_size · m / (√v / √bc2 + eps)
//            where step_size = lr / bc1, bc1 = 1 − β1^t and bc2 = 1 − β2^t come from the host
//            (computed in f64 there).
// Bindings   @binding(0) params (uniform)  len, lr, λ, β1, β2, eps, step_size, √bc2
//            @binding(1) parameter     [len] f32  θ, read and written
//            @binding(2) gradient      [len] f32
//            @binding(3) first_moment  [len] f32  m, read and written
//            @binding(4) second_moment [len] f32  v, read and written
// Dispatch   one invocation per element, WG per workgroup, numbered linearly over x and y.
// Host constants  WG.

struct Params {
    len: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> parameter: array<f32>;
@group(0) @binding(2) var<storage, read> gradient: array<f32>;
@group(0) @binding(3) var<storage, read_write> first_moment: array<f32>;
@group(0) @binding(4) var<storage, read_write> second_moment: array<f32>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let i = (group.x + group.y * groups.x) * WG + lane;
    if (i >= params.len) {
        return;
    }
    let g = gradient[i];
    let theta = parameter[i] * (1.0 - params.lr * params.weight_decay);
    let m = params.beta1 * first_moment[i] + (1.0 - params.beta1) * g;
    let v = params.beta2 * second_moment[i] + (1.0 - params.beta2) * g * g;
    first_moment[i] = m;
    second_moment[i] = v;
    let denominator = sqrt(v) / params.bias_correction2_sqrt + params.eps;
    parameter[i] = theta - params.step_size * m / denominator;
}
