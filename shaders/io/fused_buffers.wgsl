// io/fused_buffers.wgsl: fused_attention's projections and output as storage buffers (GPU
// kernel profile, and CPU drivers where texels are not used). Placed before the kernel by the
// host instead of io/fused_texels.wgsl; the two declare the same bindings and functions.
//
// Bindings   @binding(1) proj    [b·n, row_stride] ProjVec elements, packed [SQ | SK | Q̃ | RV]
//            @binding(4) concat  [b, n, s·d] ProjVec elements
//            @binding(5) keys    rows of k_stride ProjVec elements holding SK
//            @binding(6) values  rows of v_stride ProjVec elements holding RV
//            All stored in Proj (f32 or f16): widened to KVec as read, narrowed as stored.

@group(0) @binding(1) var<storage, read> proj: array<ProjVec>;
@group(0) @binding(4) var<storage, read_write> concat: array<ProjVec>;
@group(0) @binding(5) var<storage, read> keys: array<ProjVec>;
@group(0) @binding(6) var<storage, read> values: array<ProjVec>;

// Element `column` (in KVec units) of the packed projection row of token `row`.
fn proj_at(row: u32, column: u32) -> KVec {
    return KVec(proj[row * params.row_stride + column]);
}

// Element `column` (in KVec units) of row `row` of the keys.
fn key_at_row(row: u32, column: u32) -> KVec {
    return KVec(keys[row * params.k_stride + column]);
}

// Element `column` (in KVec units) of row `row` of the values.
fn value_at_row(row: u32, column: u32) -> KVec {
    return KVec(values[row * params.v_stride + column]);
}

// Stores element `column` (in KVec units) of retrieved row `row` ([b·s·n, r·d], SELECT false).
fn store_retrieved(row: u32, column: u32, value: KVec) {
    concat[row * VWV + column] = ProjVec(value);
}

// Stores element `column` (in KVec units, search σ at σ·DV) of token `row`'s output row.
fn store_concat(row: u32, column: u32, value: KVec) {
    concat[row * params.searches * DV + column] = ProjVec(value);
}
