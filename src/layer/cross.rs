//! Attention over a memory (ARCHITECTURE decision 19; the memory itself is `crate::cross_memory`):
//! cross-attention of a layer whose keys and values come from other inputs (`Config::memory`),
//! and self-attention of a layer with extra key rows (`Config::extra_keys`), which attends a
//! memory of its own input.

use super::{CompositionalAttention, record_on_callers_buffers, run};
use crate::cross_memory::{self, Memory, MemoryRequest, Visibility};
use crate::error::{Error, Result};
use crate::gpu::memory as buffers;
use crate::io;
use crate::plan::{ExecutionPlan, Strategy, refuse_memory_layer};
use crate::shape;
use crate::workspace::{Workspace, WorkspaceCache};

/// The inputs of a memory made from host slices.
struct HostMemory<'a> {
    keys: &'a [f32],
    values: Option<&'a [f32]>,
    mask: Option<&'a [bool]>,
    batch: usize,
    len: usize,
}

/// Cross-attention: a memory projected once, then queries attending it.
impl CompositionalAttention {
    /// Projects an encoder's output `memory [batch, memory_seq, kdim]` once into GPU-resident
    /// keys and values (fairseq's `encoder_decoder_attention`; keys and values from one input,
    /// so `kdim = vdim`), with `memory_mask [batch, memory_seq]` (`true` = may be attended).
    /// [`forward_cross`](Self::forward_cross) attends it as often as asked.
    pub async fn memory(
        &mut self,
        memory: &[f32],
        batch: usize,
        memory_seq: usize,
        memory_mask: Option<&[bool]>,
    ) -> Result<Memory> {
        self.check_memory_layer("memory")?;
        let (kdim, vdim) = self.config.key_value_dims();
        if kdim != vdim {
            return Err(Error::MemoryMismatch(format!(
                "keys ({kdim} wide) and values ({vdim} wide) come from separate inputs: \
                 call memory_kv"
            )));
        }
        let host = HostMemory {
            keys: memory,
            values: None,
            mask: memory_mask,
            batch,
            len: memory_seq,
        };
        self.memory_from_host(host, Visibility::All, None).await
    }

    /// [`memory`](Self::memory) with separate key and value inputs (fairseq's general
    /// attention): `keys [batch, memory_seq, kdim]`, `values [batch, memory_seq, vdim]`.
    pub async fn memory_kv(
        &mut self,
        keys: &[f32],
        values: &[f32],
        batch: usize,
        memory_seq: usize,
        memory_mask: Option<&[bool]>,
    ) -> Result<Memory> {
        self.check_memory_layer("memory_kv")?;
        let host = HostMemory {
            keys,
            values: Some(values),
            mask: memory_mask,
            batch,
            len: memory_seq,
        };
        self.memory_from_host(host, Visibility::All, None).await
    }

    /// Blocking [`memory`](Self::memory) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn memory_blocking(
        &mut self,
        memory: &[f32],
        batch: usize,
        memory_seq: usize,
        memory_mask: Option<&[bool]>,
    ) -> Result<Memory> {
        pollster::block_on(self.memory(memory, batch, memory_seq, memory_mask))
    }

    /// Blocking [`memory_kv`](Self::memory_kv) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn memory_kv_blocking(
        &mut self,
        keys: &[f32],
        values: &[f32],
        batch: usize,
        memory_seq: usize,
        memory_mask: Option<&[bool]>,
    ) -> Result<Memory> {
        pollster::block_on(self.memory_kv(keys, values, batch, memory_seq, memory_mask))
    }

    /// Records a memory's projection into the caller's encoder from the caller's buffers:
    /// `keys [batch, memory_seq, kdim]` and `values [batch, memory_seq, vdim]` f32 (`None`: the
    /// keys' buffer, with `kdim = vdim`), `mask [batch, memory_seq]` u32 (0 = masked; `None`:
    /// every position). The memory is ready once the caller submits the encoder; it may be
    /// attended in the same encoder ([`encode_cross`](Self::encode_cross)) or later. Native
    /// only: in a browser, whose GPU work cannot be waited on synchronously, it is
    /// [`Error::NotPrepared`]; make the memory with [`memory`](Self::memory) there.
    pub fn encode_memory(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        keys: &wgpu::Buffer,
        values: Option<&wgpu::Buffer>,
        mask: Option<&wgpu::Buffer>,
        batch: usize,
        memory_seq: usize,
    ) -> Result<Memory> {
        self.check_memory_layer("encode_memory")?;
        shape::check_memory_buffers(&self.config, keys, values, mask, batch, memory_seq)?;
        self.check_two_inputs(values.is_some())?;
        self.check_memory_sizes(batch, memory_seq)?;
        self.ctx.check_alive("encode_memory")?;
        let request = MemoryRequest {
            batch,
            len: memory_seq,
            keys,
            values,
            mask,
            visibility: Visibility::All,
            queries: None,
        };
        let ctx = self.ctx.clone();
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _serial = pollster::block_on(ctx.serial());
            pollster::block_on(self.record_memory(encoder, request))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (ctx, encoder, request);
            Err(Error::NotPrepared {
                batch,
                seq: memory_seq,
                strategy: "memory (encode_memory records synchronously only on native targets)",
            })
        }
    }

    /// `x [memory.batch(), seq, dim]` → `[memory.batch(), seq, dim]`: every query row attends
    /// every memory position its mask allows and the extra key rows (SPEC.md §9.2; `causal`
    /// does not apply). Only the queries are projected: a decode step of an encoder-decoder
    /// model is `seq = 1` over the same memory.
    pub async fn forward_cross(
        &mut self,
        x: &[f32],
        memory: &Memory,
        seq: usize,
    ) -> Result<Vec<f32>> {
        self.check_memory_layer("forward_cross")?;
        let batch = memory.batch;
        shape::check_input(&self.config, x, batch, seq, None)?;
        io::check_finite("input", x)?;
        memory.check_layer(self.id, self.weights_version)?;
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let mut workspaces = memory.workspaces.lock().await;
        let workspace = self.memory_workspace(&mut workspaces, memory, seq).await?;
        let (result, _) = run(&ctx, workspace, dim, x, None, false, None).await?;
        Ok(result.output)
    }

    /// Blocking [`forward_cross`](Self::forward_cross) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_cross_blocking(
        &mut self,
        x: &[f32],
        memory: &Memory,
        seq: usize,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_cross(x, memory, seq))
    }

    /// Records [`forward_cross`](Self::forward_cross) into the caller's encoder on the caller's
    /// buffers, as [`encode`](Self::encode) records a forward: `input` and `output`
    /// `[memory.batch(), seq, dim]` f32. In a browser, [`prepare_cross`](Self::prepare_cross)
    /// the query shape first.
    pub fn encode_cross(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        memory: &Memory,
        output: &wgpu::Buffer,
        seq: usize,
    ) -> Result<()> {
        self.check_memory_layer("encode_cross")?;
        let batch = memory.batch;
        shape::check_io_buffers(&self.config, input, None, output, batch, seq)?;
        memory.check_layer(self.id, self.weights_version)?;
        self.ctx.check_alive("encode_cross")?;
        let ctx = self.ctx.clone();
        // The device's lock first, then the memory's, as every other call takes them.
        #[cfg(not(target_arch = "wasm32"))]
        let _serial = pollster::block_on(ctx.serial());
        #[cfg(not(target_arch = "wasm32"))]
        let mut workspaces = pollster::block_on(memory.workspaces.lock());
        // In a browser nothing else runs while this synchronous call does.
        #[cfg(target_arch = "wasm32")]
        let mut workspaces = memory.workspaces.try_lock().ok_or(Error::MemoryMismatch(
            "encode_cross: another call on this memory is in progress".into(),
        ))?;
        #[cfg(not(target_arch = "wasm32"))]
        let workspace = pollster::block_on(self.memory_workspace(&mut workspaces, memory, seq))?;
        #[cfg(target_arch = "wasm32")]
        let workspace =
            workspaces
                .get(batch, seq, Strategy::Fused)
                .ok_or(crate::Error::NotPrepared {
                    batch,
                    seq,
                    strategy: "memory",
                })?;
        record_on_callers_buffers(
            &ctx,
            workspace,
            encoder,
            input,
            None,
            output,
            "encode_cross",
        )
    }

    /// The plan [`forward_cross`](Self::forward_cross) of `seq` query rows over `memory` runs:
    /// from [`BLOCKED_MEMORY_MIN_QUERIES`](crate::plan::BLOCKED_MEMORY_MIN_QUERIES) rows, the
    /// blocked core over the memory's texel rows where the layer's self-attention runs it (an
    /// unbiased layer on a CPU driver), else the fused kernel over its cache buffers; the
    /// split-KV core for fewer rows and for the MLP score network. Allocates nothing.
    pub fn cross_plan(&self, memory: &Memory, seq: usize) -> Result<ExecutionPlan> {
        self.check_memory_layer("cross_plan")?;
        memory.check_layer(self.id, self.weights_version)?;
        self.plan_over(memory, seq)
    }

    /// The plan of `seq` query rows over `memory`.
    fn plan_over(&self, memory: &Memory, seq: usize) -> Result<ExecutionPlan> {
        ExecutionPlan::resolve_memory(
            &self.ctx,
            &self.config,
            self.precision,
            memory.batch,
            seq,
            memory.positions(),
        )
    }

    /// Builds the workspace of `seq` query rows over `memory`, unless it is alive. In a
    /// browser, call this before [`encode_cross`](Self::encode_cross) for each query shape.
    pub async fn prepare_cross(&mut self, memory: &Memory, seq: usize) -> Result<()> {
        self.check_memory_layer("prepare_cross")?;
        shape::check_tokens(&self.config, memory.batch, seq)?;
        memory.check_layer(self.id, self.weights_version)?;
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        let mut workspaces = memory.workspaces.lock().await;
        self.memory_workspace(&mut workspaces, memory, seq)
            .await
            .map(|_| ())
    }

    /// Self-attention of a layer with extra key rows: a memory of `x` itself (its keys and
    /// values, the extra rows in front, `mask` on the input's positions), attended by `x`'s
    /// queries, causal or not.
    pub(super) async fn forward_over_own_memory(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        if !self.config.runs_self_attention() {
            return Err(refuse_memory_layer(&self.config, "forward"));
        }
        let visibility = match self.config.causal {
            true => Visibility::Causal,
            false => Visibility::All,
        };
        let host = HostMemory {
            keys: x,
            values: None,
            mask,
            batch,
            len: seq,
        };
        let own = self.memory_from_host(host, visibility, Some(seq)).await?;
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let mut workspaces = own.workspaces.lock().await;
        let workspace = self.memory_workspace(&mut workspaces, &own, seq).await?;
        let (result, _) = run(&ctx, workspace, dim, x, None, false, None).await?;
        Ok(result.output)
    }

    /// Fails unless the layer attends a memory: a cross-attention layer, for `operation`.
    fn check_memory_layer(&self, operation: &str) -> Result<()> {
        match self.config.memory {
            Some(_) => Ok(()),
            None => Err(Error::MemoryMismatch(format!(
                "{operation}: a self-attention layer has no memory to attend (a cross-attention \
                 layer has Config::memory: fairseq's encoder_decoder_attention, or kdim/vdim)"
            ))),
        }
    }

    /// Fails where one input is given for keys and values of different widths, or two for
    /// encoder-decoder attention (whose keys and values are one encoder's output).
    fn check_two_inputs(&self, two_inputs: bool) -> Result<()> {
        if two_inputs && self.config.memory.is_some_and(|m| m.encoder_decoder) {
            return Err(Error::MemoryMismatch(
                "encoder-decoder attention projects keys and values from one memory (an \
                 encoder's output): call memory, with no separate value input"
                    .into(),
            ));
        }
        let (kdim, vdim) = self.config.key_value_dims();
        if !two_inputs && kdim != vdim {
            return Err(Error::MemoryMismatch(format!(
                "keys ({kdim} wide) and values ({vdim} wide) come from separate inputs: pass the \
                 value input"
            )));
        }
        Ok(())
    }

    /// Checks, uploads and projects a memory from host slices (one submit, no wait).
    async fn memory_from_host(
        &mut self,
        host: HostMemory<'_>,
        visibility: Visibility,
        queries: Option<usize>,
    ) -> Result<Memory> {
        let HostMemory {
            keys,
            values,
            mask,
            batch,
            len,
        } = host;
        shape::check_memory_input(&self.config, keys, values, mask, batch, len)?;
        self.check_two_inputs(values.is_some())?;
        io::check_finite("memory keys", keys)?;
        if let Some(values) = values {
            io::check_finite("memory values", values)?;
        }
        self.check_memory_sizes(batch, len)?;
        let ctx = self.ctx.clone();
        let keys = buffers::storage_init(&ctx, "memory keys input", keys)?;
        let values = values
            .map(|values| buffers::storage_init(&ctx, "memory values input", values))
            .transpose()?;
        let mask = mask
            .map(|mask| {
                let words: Vec<u32> = mask.iter().map(|&allowed| allowed as u32).collect();
                buffers::storage_init(&ctx, "memory mask input", &words)
            })
            .transpose()?;
        let request = MemoryRequest {
            batch,
            len,
            keys: &keys,
            values: values.as_ref(),
            mask: mask.as_ref(),
            visibility,
            queries,
        };
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("memory"),
            });
        let _serial = ctx.serial().await;
        let memory = self.record_memory(&mut encoder, request).await?;
        ctx.scoped("memory", || {
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        Ok(memory)
    }

    /// Refuses, before anything is allocated, a memory the device cannot hold.
    fn check_memory_sizes(&self, batch: usize, len: usize) -> Result<()> {
        let positions = self.config.extra_keys.rows() + len;
        ExecutionPlan::resolve_memory(
            &self.ctx,
            &self.config,
            self.precision,
            batch,
            1,
            positions,
        )?;
        cross_memory::check_sizes(&self.ctx, &self.config, self.precision, batch, len)
    }

    /// Records the projection of `request` into `encoder` (the caller checked the sizes,
    /// [`check_memory_sizes`](Self::check_memory_sizes)).
    async fn record_memory(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        request: MemoryRequest<'_>,
    ) -> Result<Memory> {
        self.sync_parameters().await?;
        let ctx = self.ctx.clone();
        let precision = self.precision;
        let two_inputs = request.values.is_some();
        let host = self.weights.host().clone();
        let weights = self.weights.for_memory(&ctx, precision, two_inputs)?;
        cross_memory::record(
            &ctx,
            encoder,
            (self.id, self.weights_version),
            &host,
            precision,
            weights,
            request,
        )
        .await
    }

    /// The workspace of `seq` query rows over `memory`, built if absent.
    async fn memory_workspace<'w>(
        &mut self,
        workspaces: &'w mut WorkspaceCache,
        memory: &Memory,
        seq: usize,
    ) -> Result<&'w mut Workspace> {
        let batch = memory.batch;
        self.sync_parameters().await?;
        if workspaces.get(batch, seq, Strategy::Fused).is_none() {
            let plan = self.plan_over(memory, seq)?;
            workspaces.make_room();
            let weights = self.weights.for_plan(&self.ctx, &plan)?;
            let stored_keys = memory.stored_keys(&plan);
            let workspace = Workspace::build(
                &self.ctx,
                &self.config,
                weights,
                plan,
                Some(stored_keys),
                &mut |_| {},
            )
            .await?;
            return Ok(workspaces.insert(workspace));
        }
        workspaces
            .get(batch, seq, Strategy::Fused)
            .ok_or(Error::NotPrepared {
                batch,
                seq,
                strategy: "memory",
            })
    }
}
