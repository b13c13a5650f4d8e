// common/texel_rows.wgsl: addressing of matrices stored as texel rows (rgba32float or rgba16float).
//
// Row r of a matrix lives at y = r % RPL of texture layer r / RPL (RPL, rows per layer, is a
// host constant: the device's 2-D texture height limit); texel x holds columns 4x .. 4x + 3.

fn texel_coords(row: u32, texel: u32) -> vec2<u32> {
    return vec2<u32>(texel, row % RPL);
}

fn texel_layer(row: u32) -> u32 {
    return row / RPL;
}
