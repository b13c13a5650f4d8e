// io/fused_carry.wgsl: the running state fused_attention hands from one key chunk to the next,
// where the driver caps loop iterations and the host splits the keys over several dispatches.
// Placed before the kernel instead of io/fused_single_pass.wgsl.
//
// Bindings   @binding(7) carry_acc    [b·s·n, r·d] KVec accumulators
//            @binding(8) carry_stats  [b·s·n] (running max, running sum)

@group(0) @binding(7) var<storage, read_write> carry_acc: array<KVec>;
@group(0) @binding(8) var<storage, read_write> carry_stats: array<vec2<f32>>;

fn load_carry_stats(carry: u32) -> vec2<f32> {
    return carry_stats[carry];
}

fn load_carry_acc(carry: u32, c: u32) -> KVec {
    return carry_acc[carry * VWV + c];
}

fn store_carry_stats(carry: u32, stats: vec2<f32>) {
    carry_stats[carry] = stats;
}

fn store_carry_acc(carry: u32, c: u32, value: KVec) {
    carry_acc[carry * VWV + c] = value;
}
