//! A GPU-resident KV cache for token-by-token generation with a causal layer.
//!
//! The cache holds, per sequence of the batch, every appended position's search keys (per
//! search, `[b, s, capacity, d]`), retrieval values (once per retrieval, shared by all searches,
//! `[b, capacity, r·d]`, as the official fairseq module's `incremental_state` keeps them), key
//! mask, the first allowed position, and its length, all on the GPU. A prefill chunk or decode
//! step runs the layer's projections on the new tokens only, appends, and attends over the cache
//! with the split-KV kernels of `src/ops/decode.rs`; nothing is recomputed for past tokens.
//!
//! A cache belongs to the layer that made it ([`CompositionalAttention::kv_cache`]); it keeps
//! the workspaces of its step shapes, since they bind its buffers.
//!
//! [`CompositionalAttention::kv_cache`]: crate::CompositionalAttention::kv_cache

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, memory};
use crate::ops::decode::CacheBuffers;
use crate::precision::Precision;
use crate::workspace::WorkspaceCache;

/// Keys, values and mask of every position generated so far, on the GPU. See the module docs.
pub struct KvCache {
    pub(crate) ctx: GpuContext,
    pub(crate) layer: u64,
    pub(crate) batch: usize,
    pub(crate) capacity: usize,
    pub(crate) precision: Precision,
    pub(crate) len: usize,
    pub(crate) buffers: CacheBuffers,
    pub(crate) workspaces: WorkspaceCache,
    /// The layer's weights version its workspaces were built with (optimiser steps raise it).
    pub(crate) weights_version: u64,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("batch", &self.batch)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("precision", &self.precision)
            .finish()
    }
}

impl KvCache {
    /// Allocates an empty cache of `capacity` positions for `batch` sequences.
    pub(crate) fn new(
        ctx: &GpuContext,
        layer: u64,
        config: &crate::Config,
        precision: Precision,
        batch: usize,
        capacity: usize,
    ) -> Result<KvCache> {
        let c = config;
        let buffers = CacheBuffers {
            precision,
            keys: memory::stored(
                ctx,
                "KV cache keys",
                &[batch, c.num_searches, capacity, c.dim_head],
                precision,
                None,
            )?,
            values: memory::stored(
                ctx,
                "KV cache values",
                &[batch, capacity, c.value_width()],
                precision,
                None,
            )?,
            mask: memory::storage(ctx, "KV cache mask", &[batch, capacity], None)?,
            first_allowed: memory::storage_init(
                ctx,
                "KV cache first allowed position",
                &vec![u32::MAX; batch],
            )?,
            state: memory::storage_init(ctx, "KV cache length", &[0u32])?,
        };
        Ok(KvCache {
            ctx: ctx.clone(),
            layer,
            batch,
            capacity,
            precision,
            len: 0,
            buffers,
            workspaces: WorkspaceCache::new(),
            weights_version: 0,
        })
    }

    /// Positions cached per sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions the cache holds (`max_seq`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How keys and values are stored: the layer's [`Precision`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sequences per step.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every position (the next prefill starts a new sequence); keeps the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        let queue = self.ctx.queue();
        queue.write_buffer(&self.buffers.state, 0, bytemuck::bytes_of(&0u32));
        queue.write_buffer(
            &self.buffers.first_allowed,
            0,
            bytemuck::cast_slice(&vec![u32::MAX; self.batch]),
        );
    }

    /// Bytes of GPU memory the cache holds: keys, values, mask and state, and the workspaces of
    /// its step shapes.
    pub fn gpu_bytes(&self) -> u64 {
        let b = &self.buffers;
        [&b.keys, &b.values, &b.mask, &b.first_allowed, &b.state]
            .iter()
            .map(|buffer| buffer.size())
            .sum::<u64>()
            + self.workspaces.bytes()
    }

    /// Fails unless `seq` more positions of `batch` sequences fit and the cache is `layer`'s.
    pub(crate) fn check_append(&self, layer: u64, batch: usize, seq: usize) -> Result<()> {
        if layer != self.layer {
            return Err(Error::CacheMismatch(
                "the cache was made by another layer (CompositionalAttention::kv_cache)".into(),
            ));
        }
        if batch != self.batch {
            return Err(Error::CacheMismatch(format!(
                "the cache holds {} sequences, the input {batch}",
                self.batch
            )));
        }
        if seq == 0
            || self
                .len
                .checked_add(seq)
                .is_none_or(|end| end > self.capacity)
        {
            return Err(Error::CacheFull {
                len: self.len,
                appended: seq,
                capacity: self.capacity,
            });
        }
        Ok(())
    }
}
