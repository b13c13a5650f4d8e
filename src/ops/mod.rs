//! One module per kernel: its WGSL file in `shaders/` (and its io pieces in `shaders/io/`), the
//! host code that specialises and binds it as the execution plan (`src/plan/mod.rs`) says, and its
//! tests against the CPU reference of that one step.
//!
//! | module | shader | step |
//! |---|---|---|
//! | [`gemm`] | `gemm.wgsl`, `gemm_tiled.wgsl`, `gemm_texture.wgsl`, `gemv_texture.wgsl` | projections `x·Wᵀ` |
//! | [`layer_norm`] | `layer_norm.wgsl` | `prenorm` |
//! | [`search_scores`] | `search_scores.wgsl` | `L = scale·SQ·SKᵀ` (unfused) |
//! | [`masked_softmax`] | `masked_softmax.wgsl` | softmax over keys with mask/causal (unfused) |
//! | [`search_values`] | `search_values.wgsl` | `Ret = A·RV` for all pairs (unfused) |
//! | [`retrieval_select`] | `retrieval_select.wgsl` with `io/select_dot.wgsl` or `io/select_mlp.wgsl` | selection logits, softmax over retrievals, weighted sum (unfused) |
//! | [`bias_add`] | `bias_add.wgsl` | a bias per column after a GEMM (biased layers) |
//! | [`texture_copy`] | `texture_copy.wgsl` | a buffer matrix into texel rows (CPU profile) |
//! | [`value_mean`] | `value_mean.wgsl` | mean value per batch, for fully masked rows (fused) |
//! | [`fused_attention`] | `fused_attention.wgsl` | the whole attention core, no `n × n` buffer |
//! | [`blocked_attention`] | `blocked_attention.wgsl`, `retrieval_mix.wgsl` | the fused core in 4 × 4 blocks, for CPU drivers |
//! | [`matmul`] | `matmul.wgsl` | training's GEMMs: `C (+)= op(A)·op(B)` on column blocks |
//! | [`attention_train`] | `search_statistics`, `search_retrieve`, `selection_forward`, `selection_backward`, `search_query_backward`, `search_key_value_backward` | training's attention core, one row per invocation (GPU family) |
//! | [`attention_chunks`] | `search_chunk_softmax.wgsl`, `search_chunk_backward.wgsl` | training's attention core as GEMMs over chunks of query rows (CPU family) |
//! | [`layer_norm_backward`] | `layer_norm_backward.wgsl` | prenorm's backward |
//! | [`adamw`] | `adamw.wgsl` | one AdamW step of one parameter |
//! | `dropout_mask` (tests) | `dropout_mask.wgsl` with `common/philox.wgsl` | dropout's keep mask, the WGSL Philox checked against [`crate::dropout`] |
//! | [`decode`] | `cache_append.wgsl`, `decode_attention.wgsl`, `decode_reduce.wgsl`, `cache_advance.wgsl` | new queries over a KV cache, split-KV |
//!
//! [`kernel_params`] holds the kernels' parameter types (tilings, operand storage, the texel GEMM
//! kernel, the cores' per-shape parameters): the plan chooses their values, the kernels read
//! them; nothing here imports the plan.

pub(crate) mod adamw;
pub(crate) mod attention_chunk_texels;
pub(crate) mod attention_chunks;
pub(crate) mod attention_train;
pub(crate) mod bias_add;
pub(crate) mod blocked_attention;
pub(crate) mod decode;
// The training kernels will draw the mask inline; until then this kernel is only its test.
#[cfg(test)]
pub(crate) mod dropout_mask;
pub(crate) mod fused_attention;
pub(crate) mod gemm;
pub(crate) mod kernel_params;
pub(crate) mod key_values;
pub(crate) mod layer_norm;
pub(crate) mod layer_norm_backward;
pub(crate) mod masked_softmax;
pub(crate) mod matmul;
pub(crate) mod retrieval_select;
pub(crate) mod search_scores;
pub(crate) mod search_values;
pub(crate) mod texture_copy;
pub(crate) mod value_mean;

/// A matrix operand: a storage buffer, or texel rows (the CPU profile's fast format; see
/// `src/gpu/texture.rs`).
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    Buffer(crate::gpu::dispatch::Buf<'a>),
    Texels(&'a crate::gpu::texture::TexelRows),
}

/// Where each projection lives in the packed buffer `proj [b·n, row_stride]` that one GEMM
/// writes: columns `[SQ | SK | RQ | RV]`, widths `s·d, s·d, s·d, r·d`. (The fused path stores
/// `RQ·W_rk` in the RQ block.) One GEMM with a wide output reuses each input row four times
/// over, where four GEMMs would re-read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProjectionLayout {
    pub batch: usize,
    pub seq: usize,
    pub searches: usize,
    pub retrievals: usize,
    pub head: usize,
    /// `(3s + r)·d`.
    pub row_stride: usize,
    /// Column offset of SQ.
    pub search_queries: usize,
    /// Column offset of SK.
    pub search_keys: usize,
    /// Column offset of RQ (or `RQ·W_rk`).
    pub retrieval_queries: usize,
    /// Column offset of RV.
    pub retrieval_values: usize,
}

impl ProjectionLayout {
    pub(crate) fn new(
        batch: usize,
        seq: usize,
        searches: usize,
        retrievals: usize,
        head: usize,
    ) -> Self {
        let search_width = searches * head;
        ProjectionLayout {
            batch,
            seq,
            searches,
            retrievals,
            head,
            row_stride: 3 * search_width + retrievals * head,
            search_queries: 0,
            search_keys: search_width,
            retrieval_queries: 2 * search_width,
            retrieval_values: 3 * search_width,
        }
    }

    /// The projection of a memory's `seq` positions: keys and values only, `[SK | RV]`
    /// (`row_stride = (s + r)·d`), which `cache_append` reads; it has no query columns (their
    /// offsets are 0 and unread).
    pub(crate) fn keys_values(
        batch: usize,
        seq: usize,
        searches: usize,
        retrievals: usize,
        head: usize,
    ) -> Self {
        let search_width = searches * head;
        ProjectionLayout {
            batch,
            seq,
            searches,
            retrievals,
            head,
            row_stride: search_width + retrievals * head,
            search_queries: 0,
            search_keys: 0,
            retrieval_queries: 0,
            retrieval_values: search_width,
        }
    }

    /// Copies columns `offset..offset + width` of every row of a host copy of `proj`.
    #[cfg(test)]
    pub(crate) fn column_block(&self, proj: &[f32], offset: usize, width: usize) -> Vec<f64> {
        proj.chunks_exact(self.row_stride)
            .flat_map(|row| row[offset..offset + width].iter().map(|&v| v as f64))
            .collect()
    }
}

/// Every kernel's Rust `Params` against the `struct Params` naga reflects from its WGSL.
#[cfg(test)]
mod uniform_layouts {
    use super::*;
    use crate::gpu::test_device::context;
    use crate::gpu::uniform::layout_differences;
    use crate::ops::kernel_params::{
        BlockedPlan, FusedPlan, FusedTiling, GemmTiling, OperandStorage,
    };
    use crate::precision::Precision;

    #[test]
    fn every_params_block_matches_its_wgsl() {
        let ctx = context();
        let layout = ProjectionLayout::new(1, 8, 2, 2, 8);
        let tiling = FusedTiling {
            wg: 8,
            qpi: 1,
            bk: 16,
            stage: false,
        };
        let fused = FusedPlan::resolve(ctx, &layout, tiling, OperandStorage::Buffers).unwrap();
        let blocked = BlockedPlan {
            block_texels: 4,
            slices: 2,
        };
        let [blocked_variant, mix_variant] = blocked_attention::variants(
            ctx,
            &layout,
            blocked,
            Precision::F32,
            blocked_attention::OperandReads::all(ctx, Precision::F32),
        );
        let shape = gemm::GemmShape { m: 4, n: 4, k: 4 };
        let wgsl =
            |variant: crate::gpu::pipelines::ShaderVariant| (variant.label(), variant.wgsl());
        let mut differences = Vec::new();
        macro_rules! check {
            ($ty:ty, $variant:expr) => {{
                let (label, text) = wgsl($variant);
                differences.extend(layout_differences::<$ty>(&label, &text));
            }};
        }
        check!(layer_norm::Params, layer_norm::variant(ctx));
        check!(layer_norm_backward::Params, layer_norm_backward::variant());
        check!(adamw::Params, adamw::variant());
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            check!(matmul::Params, matmul::variant(ta, tb));
        }
        for variant in attention_train::variants(&layout) {
            check!(attention_train::Params, variant);
        }
        check!(
            attention_train::Params,
            attention_chunks::softmax_variant(ctx)
        );
        check!(
            attention_train::Params,
            attention_chunks::backward_variant()
        );
        check!(
            attention_train::Params,
            attention_chunk_texels::softmax_variant(ctx)
        );
        for variant in attention_chunk_texels::epilogue_variants(ctx) {
            check!(gemm::TexelParams, variant);
        }
        check!(dropout_mask::Params, dropout_mask::variant());
        for precision in Precision::ALL {
            check!(bias_add::Params, bias_add::variant(precision));
        }
        for precision in Precision::ALL {
            check!(
                texture_copy::Params,
                texture_copy::variant(ctx, precision, precision)
            );
            check!(
                gemm::TexelParams,
                gemm::texel_variant(
                    ctx,
                    false,
                    precision,
                    (true, true),
                    (ctx.texel_read_for(precision), ctx.texel_read_for(precision))
                )
            );
            check!(gemm::GemvParams, gemm::gemv_variant(ctx, precision));
        }
        let f16 = gemm::GemmPrecision {
            lhs: Precision::F16,
            rhs: Precision::F16,
            out: Precision::F16,
        };
        for precision in [gemm::GemmPrecision::F32, f16] {
            check!(gemm::Params, GemmTiling::REGISTER.variant(shape, precision));
            check!(gemm::Params, GemmTiling::TILED.variant(shape, precision));
        }

        check!(search_scores::Params, search_scores::variant());
        check!(masked_softmax::Params, masked_softmax::variant(ctx));
        check!(search_values::Params, search_values::variant());
        check!(retrieval_select::Params, retrieval_select::variant(false));
        check!(retrieval_select::Params, retrieval_select::variant(true));
        for precision in Precision::ALL {
            check!(
                value_mean::Params,
                value_mean::variant(ctx, false, precision)
            );
            check!(
                fused_attention::Params,
                fused_attention::variant(ctx, &layout, &fused, precision)
            );
        }
        check!(blocked_attention::Params, blocked_variant);
        check!(blocked_attention::MixParams, mix_variant);
        for precision in Precision::ALL {
            let [append, attention, reduce, advance] = decode::variants(&layout, precision, true);
            check!(decode::AppendParams, append);
            check!(decode::AttentionParams, attention);
            check!(decode::ReduceParams, reduce);
            check!(decode::AdvanceParams, advance);
        }
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }

    /// The comparison itself can fail: a Rust struct with two members swapped is caught.
    #[test]
    fn a_swapped_member_is_caught() {
        crate::gpu::uniform::uniform! {
            struct Swapped {
                dim: u32,
                rows: u32,
                eps: f32,
                _pad: u32,
            }
        }
        let text = layer_norm::variant(context()).wgsl();
        assert!(!layout_differences::<Swapped>("swapped", &text).is_empty());
    }
}
