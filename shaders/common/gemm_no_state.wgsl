// common/gemm_no_state.wgsl: the row and column state of a plain output of gemm_texture.wgsl
// (io/gemm_out_buffer.wgsl, io/gemm_out_texels.wgsl), which reads nothing once per row or per
// four columns: its `store` ignores both. The training epilogues declare their own
// (gemm_texture.wgsl's header says what the state is for).

alias RowState = u32;
alias ColumnState = u32;

fn row_state(row: u32) -> RowState {
    return 0u;
}

fn column_state(col: u32) -> ColumnState {
    return 0u;
}
