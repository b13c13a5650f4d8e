// io/gemm_out_dropped_none.wgsl: without dropout Ã = A, which io/gemm_out_search_weights.wgsl
// already stored, so io/gemm_out_logit_grads.wgsl stores nothing more and binds nothing for it.
// Stands for io/gemm_out_dropped_texels.wgsl.

fn store_dropped(row: u32, t: u32, values: vec4<f32>) {}
