//! One module per kernel: its WGSL file in `shaders/`, the host code that specialises and binds
//! it, and its tests against the CPU reference of that one step.
//!
//! | module | shader | step |
//! |---|---|---|
//! | [`gemm`] | `gemm.wgsl` | projections `x·Wᵀ` |
//! | [`layer_norm`] | `layer_norm.wgsl` | `prenorm` |
//! | [`search_scores`] | `search_scores.wgsl` | `L = scale·SQ·SKᵀ` (unfused) |
//! | [`masked_softmax`] | `masked_softmax.wgsl` | softmax over keys with mask/causal (unfused) |
//! | [`search_values`] | `search_values.wgsl` | `Ret = A·RV` for all pairs (unfused) |
//! | [`retrieval_select`] | `retrieval_select.wgsl` | softmax over retrievals, weighted sum (unfused) |
//! | [`texture_copy`] | `texture_copy.wgsl` | a buffer matrix into texel rows (CPU profile) |
//! | [`value_mean`] | `value_mean.wgsl` | mean value per batch, for fully masked rows (fused) |
//! | [`fused_attention`] | `fused_attention.wgsl` | the whole attention core, no `n × n` buffer |
//! | [`blocked_attention`] | `blocked_attention.wgsl`, `retrieval_mix.wgsl` | the fused core in 4 × 4 blocks, for CPU drivers |

pub(crate) mod blocked_attention;
pub(crate) mod fused_attention;
pub(crate) mod gemm;
pub(crate) mod layer_norm;
pub(crate) mod masked_softmax;
pub(crate) mod retrieval_select;
pub(crate) mod search_scores;
pub(crate) mod search_values;
pub(crate) mod texture_copy;
pub(crate) mod value_mean;

/// A matrix operand: a storage buffer, or texel rows (the CPU profile's fast format; see
/// `src/gpu/texture.rs`).
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    Buffer(&'a wgpu::Buffer),
    Texels(&'a crate::gpu::texture::TexelRows),
}

/// Placeholders for bindings a variant declares but does not use: WebGPU wants every binding
/// of the layout bound, and one WGSL file serves both the buffer and the texel variants. One
/// placeholder per role, since a resource read in one binding and written in another of the
/// same dispatch is a usage conflict.
pub(crate) struct Unused {
    pub read_buffer: wgpu::Buffer,
    pub write_buffer: wgpu::Buffer,
    pub read_texels: crate::gpu::texture::TexelRows,
    pub write_texels: crate::gpu::texture::TexelRows,
}

impl Unused {
    pub(crate) fn new(ctx: &crate::gpu::GpuContext) -> crate::Result<Unused> {
        use crate::gpu::{memory, texture::TexelRows};
        Ok(Unused {
            read_buffer: memory::storage(ctx, "unused binding", &[4], None)?,
            write_buffer: memory::storage(ctx, "unused binding", &[4], None)?,
            read_texels: TexelRows::new(ctx, "unused binding", 1, 4)?,
            write_texels: TexelRows::new(ctx, "unused binding", 1, 4)?,
        })
    }
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

    /// Copies columns `offset..offset + width` of every row of a host copy of `proj`.
    #[cfg(test)]
    pub(crate) fn column_block(&self, proj: &[f32], offset: usize, width: usize) -> Vec<f64> {
        proj.chunks_exact(self.row_stride)
            .flat_map(|row| row[offset..offset + width].iter().map(|&v| v as f64))
            .collect()
    }
}
