// STUB adamw
struct Params { len: u32, _p0: u32, _p1: u32, _p2: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, decay: f32, step_size: f32, bc2_sqrt: f32, _p3: u32, }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> theta: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let i = (group.x + group.y * groups.x) * 64u + lane;
    if (i >= params.len) { return; }
    var t = theta[i];
    t = t - params.lr * params.decay * t;
    let g = grad[i];
    let mm = params.beta1 * m[i] + (1.0 - params.beta1) * g;
    let vv = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
    m[i] = mm; v[i] = vv;
    theta[i] = t - params.step_size * mm / (sqrt(vv) / params.bc2_sqrt + params.eps);
}
