// masked_softmax.wgsl: softmax over keys with the key mask and causal, PyTorch's semantics.
//
// Computes   for each row (b, σ, i), with allowed(j) = mask[b, j] != 0 && !(causal && j > i):
//              weights[j] = allowed(j) ? exp(logits[j] - m) / Σ_{allowed} exp(logits - m) : 0
//              where m = max of the allowed logits;
//            a row with no allowed key is uniform, weights[j] = 1/n for every j (what the
//            reference's -FLT_MAX fill produces). Masked logits are never read into arithmetic,
//            so no infinity or NaN arises, whatever the inputs.
// Bindings   @binding(0) params (uniform)  rows (= b·s·n), searches, seq, causal
//            @binding(1) logits   [b, s, n, n]
//            @binding(2) mask     [b, n] u32, 1 = key may be attended
//            @binding(3) weights  [b, s, n, n]
// Dispatch   one workgroup of WG invocations per row, numbered linearly over x and y.
// Host constants  WG (a power of two, at most 256).
// Includes   common/workgroup_reduce.wgsl or common/subgroup_reduce.wgsl (the host's
//            Reduction: Invocation, workgroup_sum, workgroup_max).

struct Params {
    rows: u32,
    searches: u32,
    seq: u32,
    causal: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> weights: array<f32>;

// -FLT_MAX, spelled so that every WGSL front end accepts it as exactly representable.
const LOWEST: f32 = -3.4028234663852886e38;

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
    let n = params.seq;
    let i = row % n;
    let b = row / (n * params.searches);
    let base = row * n;
    // Causal: keys after i are masked, so only j < key_end can be allowed.
    let key_end = select(n, i + 1u, params.causal != 0u);

    var row_max = LOWEST;
    var allowed_count = 0.0;
    for (var j = lane; j < key_end; j += WG) {
        if (mask[b * n + j] != 0u) {
            row_max = max(row_max, logits[base + j]);
            allowed_count += 1.0;
        }
    }
    let m = workgroup_max(invocation, row_max);
    let any_allowed = workgroup_sum(invocation, allowed_count) > 0.0;

    if (!any_allowed) {
        let uniform_weight = 1.0 / f32(n);
        for (var j = lane; j < n; j += WG) {
            weights[base + j] = uniform_weight;
        }
        return;
    }

    var sum = 0.0;
    for (var j = lane; j < key_end; j += WG) {
        if (mask[b * n + j] != 0u) {
            sum += exp(logits[base + j] - m);
        }
    }
    let inv_sum = 1.0 / workgroup_sum(invocation, sum);

    for (var j = lane; j < n; j += WG) {
        var w = 0.0;
        if (j < key_end && mask[b * n + j] != 0u) {
            w = exp(logits[base + j] - m) * inv_sum;
        }
        weights[base + j] = w;
    }
}
