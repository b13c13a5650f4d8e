//! Generation over a GPU-resident KV cache: the cache, prefill (chunked or whole) and decode,
//! from host slices or recorded on the caller's buffers (ARCHITECTURE decision 10; the cache
//! itself is `crate::kv_cache`).

use super::{CompositionalAttention, record_on_callers_buffers, run};
use crate::error::Result;
use crate::io;
use crate::kv_cache::KvCache;
use crate::plan::{ExecutionPlan, Strategy};
use crate::shape;
use crate::workspace::Workspace;

/// Generation: a KV cache, prefill and decode (see `src/kv_cache.rs`).
impl CompositionalAttention {
    /// A GPU-resident KV cache for `batch` sequences of up to `max_seq` positions. Only a causal
    /// layer generates; a non-causal one gets [`Error::InvalidConfig`](crate::Error).
    pub fn kv_cache(&self, batch: usize, max_seq: usize) -> Result<KvCache> {
        if !self.config.causal {
            return Err(crate::Error::InvalidConfig {
                field: "causal",
                value: "false".into(),
                reason: "a KV cache serves causal layers only: a non-causal position attends to \
                         keys that do not exist yet",
            });
        }
        shape::check_tokens(&self.config, batch, max_seq)?;
        self.ctx.check_alive("creating a KV cache")?;
        // Validates the sizes against the device before allocating.
        ExecutionPlan::resolve_cached(&self.ctx, &self.config, self.precision, batch, 1, max_seq)?;
        KvCache::new(
            &self.ctx,
            self.id,
            &self.config,
            self.precision,
            batch,
            max_seq,
        )
    }

    /// Appends `seq` positions per sequence (`x [batch, seq, dim]`, `mask [batch, seq]`: the key
    /// mask of the new positions) to `cache` and returns their outputs `[batch, seq, dim]`.
    /// Several calls are chunked prefill. Position `t`'s output is row `t` of the causal
    /// `forward` over the sequence up to `t` with the same key mask (see SPEC.md, "Generation").
    pub async fn prefill(
        &mut self,
        cache: &mut KvCache,
        x: &[f32],
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        let batch = cache.batch;
        shape::check_input(&self.config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        cache.check_append(self.id, batch, seq)?;
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let workspace = self.cached_workspace(cache, seq).await?;
        let (result, _) = run(&ctx, workspace, dim, x, mask, false, None).await?;
        cache.len += seq;
        Ok(result.output)
    }

    /// One new token per sequence: [`prefill`](Self::prefill) with `seq = 1`; `x` is
    /// `[batch, 1, dim]` and so is the result.
    pub async fn decode(
        &mut self,
        cache: &mut KvCache,
        x: &[f32],
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        self.prefill(cache, x, 1, mask).await
    }

    /// Blocking [`prefill`](Self::prefill) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefill_blocking(
        &mut self,
        cache: &mut KvCache,
        x: &[f32],
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.prefill(cache, x, seq, mask))
    }

    /// Blocking [`decode`](Self::decode) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_blocking(
        &mut self,
        cache: &mut KvCache,
        x: &[f32],
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.decode(cache, x, mask))
    }

    /// Records a decode step (`seq = 1`) or prefill chunk into the caller's encoder on the
    /// caller's buffers, as [`encode`](Self::encode) does for a forward: `input` and `output`
    /// `[batch, seq, dim]` f32, `mask` `[batch, seq]` u32. The cache's length advances on the GPU
    /// when the step runs (and on the host now), so steps may be recorded back to back into one
    /// encoder. On native targets a missing workspace is built here; in a browser,
    /// [`prepare_cached`](Self::prepare_cached) the step shape first.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_decode(
        &mut self,
        cache: &mut KvCache,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        mask: Option<&wgpu::Buffer>,
        output: &wgpu::Buffer,
        seq: usize,
    ) -> Result<()> {
        let batch = cache.batch;
        shape::check_io_buffers(&self.config, input, mask, output, batch, seq)?;
        cache.check_append(self.id, batch, seq)?;
        self.ctx.check_alive("encode_decode")?;
        let ctx = self.ctx.clone();
        #[cfg(not(target_arch = "wasm32"))]
        let _serial = pollster::block_on(ctx.serial());
        #[cfg(not(target_arch = "wasm32"))]
        let workspace = pollster::block_on(self.cached_workspace(cache, seq))?;
        // After optimiser steps the cache's workspaces bind stale weights: prepare again.
        #[cfg(target_arch = "wasm32")]
        let workspace = cache
            .workspaces
            .get(batch, seq, Strategy::Fused)
            .filter(|_| cache.weights_version == self.weights_version && !self.parameters_ahead)
            .ok_or(crate::Error::NotPrepared {
                batch,
                seq,
                strategy: "cached",
            })?;
        record_on_callers_buffers(
            &ctx,
            workspace,
            encoder,
            input,
            mask,
            output,
            "encode_decode",
        )?;
        cache.len += seq;
        Ok(())
    }

    /// Builds the cache's workspace for steps of `seq` tokens per sequence (a decode step is
    /// `seq = 1`), unless it is alive. In a browser, call this before
    /// [`encode_decode`](Self::encode_decode) for each new step shape.
    pub async fn prepare_cached(&mut self, cache: &mut KvCache, seq: usize) -> Result<()> {
        shape::check_tokens(&self.config, cache.batch, seq)?;
        if cache.layer != self.id {
            return Err(crate::Error::CacheMismatch(
                "the cache was made by another layer (CompositionalAttention::kv_cache)".into(),
            ));
        }
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        self.cached_workspace(cache, seq).await.map(|_| ())
    }

    /// The cache's workspace for steps of `seq` tokens, built if absent.
    async fn cached_workspace<'c>(
        &mut self,
        cache: &'c mut KvCache,
        seq: usize,
    ) -> Result<&'c mut Workspace> {
        let batch = cache.batch;
        self.sync_parameters().await?;
        if cache.weights_version != self.weights_version {
            cache.workspaces.clear();
            cache.weights_version = self.weights_version;
        }
        if cache.workspaces.get(batch, seq, Strategy::Fused).is_none() {
            let plan = ExecutionPlan::resolve_cached(
                &self.ctx,
                &self.config,
                self.precision,
                batch,
                seq,
                cache.capacity,
            )?;
            cache.workspaces.make_room();
            let weights = self.weights.for_plan(&self.ctx, &plan)?;
            let buffers = Some(crate::workspace::StoredKeys::Cache(&cache.buffers));
            let workspace =
                Workspace::build(&self.ctx, &self.config, weights, plan, buffers, &mut |_| {})
                    .await?;
            return Ok(cache.workspaces.insert(workspace));
        }
        cache
            .workspaces
            .get(batch, seq, Strategy::Fused)
            .ok_or(crate::Error::NotPrepared {
                batch,
                seq,
                strategy: "cached",
            })
    }
}
