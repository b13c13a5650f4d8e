//! Where an attention core's keys and values are: the queries' own projections
//! (self-attention), or a memory (`crate::cross_memory`, ARCHITECTURE decision 19) in its KV-cache
//! layout, with texel-row copies for the blocked core on CPU drivers. The blocked and fused
//! cores take a [`KeyValues`] and address either with strides.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch};
use crate::gpu::texture::TexelRows;
use crate::ops::decode::CacheBuffers;
use crate::ops::{ProjectionLayout, Rows, texture_copy, value_mean};

/// Where a core's keys and values are.
pub(crate) enum KeyValues<'a> {
    /// In the queries' own projections (self-attention), with the key mask `[b, n]`, the value
    /// mean `[b, r·d]` of those positions and the layer's `causal`.
    Own {
        causal: bool,
        mask: Buf<'a>,
        value_mean: &'a wgpu::Buffer,
    },
    /// A memory's.
    Memory(MemoryKeys<'a>),
}

/// A memory's keys and values, as a `Memory` holds them.
#[derive(Clone, Copy)]
pub(crate) struct MemoryKeys<'a> {
    /// Keys `[b, s, L, d]`, values `[b, L, r·d]` (the layer's precision) and mask `[b, L]`.
    pub cache: &'a CacheBuffers,
    /// `[b, r·d]` f32: the mean of the values over the `L` positions, for a query with none
    /// allowed (only possible without extra rows, where those are the memory's positions).
    pub value_mean: &'a wgpu::Buffer,
    /// `L`: the extra rows and the memory's positions.
    pub positions: usize,
    /// `Some(e)`: causal self-attention behind `e` extra rows (query `i` sees positions up to
    /// `i + e`); `None`: every query sees every position.
    pub causal_offset: Option<usize>,
    /// Texel-row copies of the keys and values, where the layer attends with the blocked core.
    pub rows: Option<&'a MemoryRows>,
}

/// A memory's keys and values as texel rows, for the blocked core on CPU drivers (which fetch
/// texels as vector gathers; see `src/gpu/texture.rs`): two copies of the cache layout.
pub(crate) struct MemoryRows {
    /// `[b·s·L, d]`: search σ of sequence b at rows `(b·s + σ)·L ..`, as the cache stores them.
    pub keys: TexelRows,
    /// `[b·L, r·d]`.
    pub values: TexelRows,
}

impl MemoryRows {
    pub(crate) fn bytes(&self) -> u64 {
        self.keys.bytes() + self.values.bytes()
    }
}

/// Allocates a memory's [`MemoryRows`] and binds their fill from its cache (f32: the blocked
/// core runs f32 layers only).
pub(crate) async fn memory_rows(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    cache: &CacheBuffers,
) -> Result<(MemoryRows, Dispatch, Dispatch)> {
    let positions = layout.seq;
    let (batch, head) = (layout.batch, layout.head);
    let rows = MemoryRows {
        keys: TexelRows::new_in(
            ctx,
            "memory key rows",
            batch * layout.searches * positions,
            head,
            cache.precision,
        )?,
        values: TexelRows::new_in(
            ctx,
            "memory value rows",
            batch * positions,
            layout.retrievals * head,
            cache.precision,
        )?,
    };
    let keys = texture_copy::dispatch(ctx, &cache.keys, cache.precision, &rows.keys).await?;
    let values = texture_copy::dispatch(ctx, &cache.values, cache.precision, &rows.values).await?;
    Ok((rows, keys, values))
}

/// Allocates a memory's value mean `[b, r·d]` (f32) and binds its computation from the cache's
/// values; `layout.seq` is the memory's positions `L`.
pub(crate) async fn memory_value_mean(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    cache: &CacheBuffers,
) -> Result<(wgpu::Buffer, Dispatch)> {
    let width = layout.retrievals * layout.head;
    let mean = crate::gpu::memory::storage(ctx, "memory value mean", &[layout.batch, width], None)?;
    let values = ProjectionLayout {
        row_stride: width,
        retrieval_values: 0,
        ..*layout
    };
    let dispatch = value_mean::dispatch(
        ctx,
        &values,
        Rows::Buffer((&cache.values).into()),
        cache.precision,
        &mean,
    )
    .await?;
    Ok((mean, dispatch))
}

/// How a core addresses its keys and values, in units of `v` columns (the kernel's vector; 4
/// for texel rows): key position `j` of search `σ` of sequence `b` is row
/// `b·k_batch_rows + σ·k_head_rows + j`, elements from `k_offset + σ·k_head_cols`, of rows
/// `k_stride` apart; its values are row `b·kv_seq + j`, elements from `v_offset`, of rows
/// `v_stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyAddressing {
    pub kv_seq: usize,
    pub k_stride: usize,
    pub k_batch_rows: usize,
    pub k_head_rows: usize,
    pub k_head_cols: usize,
    pub k_offset: usize,
    pub v_stride: usize,
    pub v_offset: usize,
    pub causal: bool,
    pub causal_offset: usize,
}

impl KeyValues<'_> {
    /// The addressing of these keys and values for queries of `layout`, in units of `v`.
    pub(crate) fn addressing(&self, layout: &ProjectionLayout, v: usize) -> KeyAddressing {
        match self {
            // Packed rows [SQ | SK | Q̃ | RV] of the queries' own tokens.
            KeyValues::Own { causal, .. } => KeyAddressing {
                kv_seq: layout.seq,
                k_stride: layout.row_stride / v,
                k_batch_rows: layout.seq,
                k_head_rows: 0,
                k_head_cols: layout.head / v,
                k_offset: layout.search_keys / v,
                v_stride: layout.row_stride / v,
                v_offset: layout.retrieval_values / v,
                causal: *causal,
                causal_offset: 0,
            },
            // The cache layout: keys per search [b, s, L, d], values [b, L, r·d].
            KeyValues::Memory(memory) => KeyAddressing {
                kv_seq: memory.positions,
                k_stride: layout.head / v,
                k_batch_rows: layout.searches * memory.positions,
                k_head_rows: memory.positions,
                k_head_cols: 0,
                k_offset: 0,
                v_stride: layout.retrievals * layout.head / v,
                v_offset: 0,
                causal: memory.causal_offset.is_some(),
                causal_offset: memory.causal_offset.unwrap_or(0),
            },
        }
    }

    /// The key mask: `[b, n]` or the memory's `[b, L]`.
    pub(crate) fn mask(&self) -> Buf<'_> {
        match self {
            KeyValues::Own { mask, .. } => *mask,
            KeyValues::Memory(memory) => (&memory.cache.mask).into(),
        }
    }

    /// The value mean `[b, r·d]` a query with no allowed key reads.
    pub(crate) fn value_mean(&self) -> &wgpu::Buffer {
        match self {
            KeyValues::Own { value_mean, .. } => value_mean,
            KeyValues::Memory(memory) => memory.value_mean,
        }
    }
}
