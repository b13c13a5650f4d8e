// common/search_rows.wgsl: where a token's search query and key start in the packed projection
// `proj [b·n, row_stride]` (the kernel declares `proj` and the host the constant D = d).
//
// The per-row kernels keep the row they own (a query, or a key and its values) in private memory
// and read the rows they loop over at lane-uniform addresses: the lanes of a workgroup own
// neighbouring rows of one (batch, search), so a loop's reads are one load broadcast to them all.

// Where SQ (or SK) of `token` for search `sigma` starts in `proj`.
fn query_at(token: u32, sigma: u32) -> u32 {
    return token * params.row_stride + params.q_offset + sigma * D;
}

fn key_at(token: u32, sigma: u32) -> u32 {
    return token * params.row_stride + params.k_offset + sigma * D;
}

