//! The layer on a device: its weights, the workspaces of recent shapes, and the two ways to run
//! it: `encode` into the caller's encoder on the caller's buffers, and `forward` on host slices
//! (upload, the same recording, one submit, one readback).

use crate::config::Config;
use crate::device_weights::DeviceWeights;
use crate::error::Result;
use crate::gpu::dispatch::IoBuffers;
use crate::gpu::timing::TimingSource;
use crate::gpu::{GpuContext, memory};
use crate::io::{self, Input};
use crate::kv_cache::KvCache;
use crate::maps::{AttentionMaps, MapsOptions};
use crate::plan::ExecutionPlan;
use crate::precision::Precision;
use crate::reference;
use crate::shape;
use crate::weights::Weights;
use crate::workspace::{Workspace, WorkspaceCache};

/// How the attention core is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// One flash-style kernel per (batch, search, query tile): online softmax over key tiles,
    /// all retrievals accumulated at once, the retrieval selection in its epilogue. GPU memory
    /// is linear in `n`.
    #[default]
    Fused,
    /// Step by step, each step a kernel of its own: logits, softmax, aggregation, selection.
    /// Materialises the `b·s·n²` search logits and weights; every intermediate can be checked.
    Unfused,
}

impl Strategy {
    /// Every strategy, for tests and benchmarks that cover them all.
    pub const ALL: [Strategy; 2] = [Strategy::Fused, Strategy::Unfused];

    /// The lowercase name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Fused => "fused",
            Strategy::Unfused => "unfused",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == s)
            .ok_or_else(|| crate::Error::InvalidConfig {
                field: "strategy",
                value: s.to_string(),
                reason: "must be `fused` or `unfused`",
            })
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Time of one kernel in a profiled forward.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The pipeline variant's label: kernel name and specialisation.
    pub label: String,
    /// Milliseconds on the GPU.
    pub ms: f64,
}

/// The result and timing of one profiled forward.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `[batch, seq, dim]`.
    pub output: Vec<f32>,
    /// Per-kernel GPU times (empty with [`TimingSource::HostWallClock`]).
    pub kernels: Vec<KernelTime>,
    /// The forward's time: the sum of the kernels' GPU times, or the wall time.
    pub total_ms: f64,
    /// Host wall time from upload to readback, always measured.
    pub wall_ms: f64,
    /// Where `total_ms` comes from.
    pub source: TimingSource,
}

/// A Compositional Attention layer placed on a GPU.
///
/// It holds its weights on the device (uploaded as plans need them) and the workspaces of
/// recently used shapes. Two ways to run it:
/// * [`forward`](Self::forward) (and `forward_blocking`): host slices in, host vector out. It
///   uploads, records, submits once and reads back once.
/// * [`encode`](Self::encode): records the forward into the caller's command encoder on the
///   caller's buffers, for programs that keep tensors on the GPU; nothing runs until the caller
///   submits. `forward` is a thin wrapper over the same recording.
pub struct CompositionalAttention {
    /// Unique per layer: a KV cache records the layer that made it.
    id: u64,
    ctx: GpuContext,
    config: Config,
    precision: Precision,
    weights: DeviceWeights,
    strategy: Strategy,
    workspaces: WorkspaceCache,
}

impl std::fmt::Debug for CompositionalAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompositionalAttention")
            .field("config", &self.config)
            .field("precision", &self.precision)
            .field("strategy", &self.strategy)
            .field("gpu", &self.ctx)
            .field("workspaces", &self.workspaces.shapes())
            .finish()
    }
}

impl CompositionalAttention {
    /// Places `weights` on the device of `ctx` (uploaded on first use by a plan that reads
    /// them), stored in f32. The configuration (including `causal`) is the weights' own.
    pub fn new(ctx: &GpuContext, weights: &Weights) -> Result<Self> {
        Self::with_precision(ctx, weights, Precision::F32)
    }

    /// [`new`](Self::new) with the weights, the KV cache and the large intermediates stored
    /// in `precision` ([`Precision`] lists what each stores). Arithmetic stays f32.
    ///
    /// `Precision::F16` needs the device feature `shader-f16`; without it this is
    /// [`Error::MissingFeature`](crate::Error::MissingFeature). Its error against the exact
    /// result is what f16 rounding of the stored tensors alone causes, within a factor of two
    /// (tests/precision.rs), and in the tests within 1e-2 of max|output|; a sharply peaked
    /// softmax amplifies the rounding of the search keys.
    pub fn with_precision(
        ctx: &GpuContext,
        weights: &Weights,
        precision: Precision,
    ) -> Result<Self> {
        let config = *weights.config();
        config.validate()?;
        ctx.check_alive("creating a layer")?;
        precision.check_supported(ctx)?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(CompositionalAttention {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ctx: ctx.clone(),
            config,
            precision,
            weights: DeviceWeights::new(weights),
            // Only the unfused selection runs an MLP score network (ExecutionPlan::resolve).
            strategy: match config.selection_mlp {
                Some(_) => Strategy::Unfused,
                None => Strategy::default(),
            },
            workspaces: WorkspaceCache::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How the weights, KV cache and large intermediates are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device the layer lives on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The strategy the next forward uses.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Chooses how the next forward computes attention.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// The plan a forward at `batch × seq` would run with the current strategy: kernel family,
    /// GEMM, core, tiles, storage and key chunks. Allocates nothing.
    pub fn plan(&self, batch: usize, seq: usize) -> Result<ExecutionPlan> {
        shape::check_tokens(&self.config, batch, seq)?;
        ExecutionPlan::resolve(
            &self.ctx,
            &self.config,
            self.precision,
            self.strategy,
            batch,
            seq,
        )
    }

    /// Bytes of GPU memory the layer holds now: the weights uploaded so far and every workspace
    /// alive.
    pub fn gpu_bytes(&self) -> u64 {
        self.weights.bytes() + self.workspaces.bytes()
    }

    /// How many shapes keep their workspaces alive (default 4); the least recently used goes
    /// first. At least 1.
    pub fn set_workspace_capacity(&mut self, shapes: usize) {
        self.workspaces.set_capacity(shapes);
    }

    /// See [`set_workspace_capacity`](Self::set_workspace_capacity).
    pub fn workspace_capacity(&self) -> usize {
        self.workspaces.capacity()
    }

    /// `(batch, seq, strategy)` of every workspace alive, least recently used first.
    pub fn workspace_shapes(&self) -> Vec<(usize, usize, Strategy)> {
        self.workspaces.shapes()
    }

    /// Frees every workspace (their buffers go when no submitted work uses them any more). The
    /// weights stay; the next forward of a shape builds its workspace again.
    pub fn release_workspaces(&mut self) {
        self.workspaces.clear();
    }

    /// Builds the workspace for `(batch, seq)` and the current strategy, unless it is alive.
    /// In a browser, call this before [`encode`](Self::encode) for each new shape.
    pub async fn prepare(&mut self, batch: usize, seq: usize) -> Result<()> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        self.workspace(batch, seq).await.map(|_| ())
    }

    /// Blocking [`CompositionalAttention::prepare`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_blocking(&mut self, batch: usize, seq: usize) -> Result<()> {
        pollster::block_on(self.prepare(batch, seq))
    }

    /// The workspace for `(batch, seq)` and the current strategy, built if absent.
    async fn workspace(&mut self, batch: usize, seq: usize) -> Result<&mut Workspace> {
        self.workspace_for(batch, seq, self.strategy).await
    }

    /// The workspace for `(batch, seq)` and `strategy`, built if absent.
    async fn workspace_for(
        &mut self,
        batch: usize,
        seq: usize,
        strategy: Strategy,
    ) -> Result<&mut Workspace> {
        shape::check_tokens(&self.config, batch, seq)?;
        if self.workspaces.get(batch, seq, strategy).is_none() {
            let plan = ExecutionPlan::resolve(
                &self.ctx,
                &self.config,
                self.precision,
                strategy,
                batch,
                seq,
            )?;
            // Free the least recently used shape before allocating the new one.
            self.workspaces.make_room();
            let weights = self.weights.for_plan(&self.ctx, &plan)?;
            let workspace = Workspace::build(&self.ctx, &self.config, weights, plan, None).await?;
            return Ok(self.workspaces.insert(workspace));
        }
        self.workspaces
            .get(batch, seq, strategy)
            .ok_or(crate::Error::NotPrepared {
                batch,
                seq,
                strategy: strategy.name(),
            })
    }

    /// Records a forward pass into `encoder`: `input` and `output` are f32, row-major
    /// `[batch, seq, dim]` from offset 0; `mask` is one `u32` per key, `[batch, seq]`, 0 meaning
    /// the key is masked and anything else that it may be attended (`None`: every key).
    ///
    /// Every pass goes into the caller's encoder: no submit, no poll, no readback, no host copy,
    /// and nothing runs until the caller submits. Buffers must have `STORAGE` usage, hold at
    /// least the bytes named above, and belong to this layer's device; otherwise this returns
    /// [`Error::IoBuffer`](crate::Error::IoBuffer) or a validation error
    /// ([`Error::GpuValidation`](crate::Error::GpuValidation)) and records no pass. wgpu tells
    /// devices apart within one `wgpu::Instance` only: never pass a buffer created through
    /// another instance (`GpuContext::new` opens an instance of its own; a program embedding the
    /// layer hands its device to [`GpuContext::from_device`] and keeps one instance).
    ///
    /// Aliasing: `output` may be `input` (the input is fully read before the output
    /// projection writes), so a layer can run in place. `mask` may be neither.
    ///
    /// Reuse: the workspace (intermediates and bind groups) of a shape is built on the first
    /// call and kept; recording the same buffers again builds nothing. Several `encode` calls
    /// may go into one encoder, for one layer or several: passes run in recording order, and a
    /// layer's intermediates are reused by the next recording of the same shape, which is safe
    /// because each recording finishes with them before the next one's passes start. Two
    /// layers never share intermediates.
    ///
    /// On native targets this builds a missing workspace (blocking on pipeline compiles) and
    /// returns the device's validation errors typed. In a browser, `prepare` the shape first;
    /// validation errors there reach the device's uncaptured-error handler.
    ///
    /// ```no_run
    /// use compositional_attention::{CompositionalAttention, GpuContext};
    ///
    /// fn attend(
    ///     adapter: &wgpu::Adapter,
    ///     device: &wgpu::Device,
    ///     queue: &wgpu::Queue,
    ///     weights: &compositional_attention::Weights,
    ///     x: &wgpu::Buffer, // [batch, seq, dim] f32, STORAGE usage
    ///     y: &wgpu::Buffer, // [batch, seq, dim] f32, STORAGE usage
    ///     (batch, seq): (usize, usize),
    /// ) -> compositional_attention::Result<()> {
    ///     let ctx = GpuContext::from_device(adapter, device.clone(), queue.clone())?;
    ///     let mut layer = CompositionalAttention::new(&ctx, weights)?;
    ///     let mut encoder = device.create_command_encoder(&Default::default());
    ///     layer.encode(&mut encoder, x, None, y, batch, seq)?;
    ///     queue.submit([encoder.finish()]);
    ///     Ok(())
    /// }
    /// ```
    pub fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        mask: Option<&wgpu::Buffer>,
        output: &wgpu::Buffer,
        batch: usize,
        seq: usize,
    ) -> Result<()> {
        shape::check_io_buffers(&self.config, input, mask, output, batch, seq)?;
        self.ctx.check_alive("encode")?;
        let ctx = self.ctx.clone();
        #[cfg(not(target_arch = "wasm32"))]
        let _serial = pollster::block_on(ctx.serial());
        #[cfg(not(target_arch = "wasm32"))]
        let workspace = pollster::block_on(self.workspace(batch, seq))?;
        #[cfg(target_arch = "wasm32")]
        let workspace =
            self.workspaces
                .get(batch, seq, self.strategy)
                .ok_or(crate::Error::NotPrepared {
                    batch,
                    seq,
                    strategy: self.strategy.name(),
                })?;
        record_on_callers_buffers(&ctx, workspace, encoder, input, mask, output, "encode")
    }

    /// `x [batch, seq, dim]`, `mask [batch, seq]` (`true` = the key may be attended) →
    /// `[batch, seq, dim]`. Shapes and values are checked first; the workspace of a shape is
    /// built on its first call and reused after.
    pub async fn forward(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        Ok(self.execute(x, batch, seq, mask, false).await?.output)
    }

    /// A forward pass that also times each kernel: with GPU timestamps where the adapter has
    /// them (each kernel in a compute pass of its own), else the host wall time of the whole
    /// submit-and-readback. For benchmarks; [`CompositionalAttention::forward`] records all
    /// kernels in one pass.
    pub async fn profile(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Profile> {
        self.execute(x, batch, seq, mask, true).await
    }

    /// Checks the input, then [`run`] on the workspace of the shape.
    async fn execute(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        timed: bool,
    ) -> Result<Profile> {
        reference::check_input(&self.config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let workspace = self.workspace(batch, seq).await?;
        run(&ctx, workspace, dim, x, mask, timed, None).await
    }

    /// Blocking [`CompositionalAttention::forward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.forward(x, batch, seq, mask))
    }

    /// [`CompositionalAttention::forward`] on an [`Input`]; checks its `dim` too.
    pub async fn forward_input(&mut self, input: &Input) -> Result<Vec<f32>> {
        if input.dim != self.config.dim {
            return Err(crate::Error::shape(
                "input",
                &[input.batch, input.seq, self.config.dim],
                &[input.batch, input.seq, input.dim],
            ));
        }
        self.forward(&input.x, input.batch, input.seq, input.mask.as_deref())
            .await
    }
}

/// Records `workspace` into the caller's `encoder` on the caller's buffers (`mask` `None`: every
/// key). The buffers are bound first, in an error scope of their own, so a buffer wgpu refuses
/// leaves no pass recorded.
fn record_on_callers_buffers(
    ctx: &GpuContext,
    workspace: &mut Workspace,
    encoder: &mut wgpu::CommandEncoder,
    input: &wgpu::Buffer,
    mask: Option<&wgpu::Buffer>,
    output: &wgpu::Buffer,
    operation: &str,
) -> Result<()> {
    let mask = match mask {
        Some(mask) => mask.clone(),
        None => workspace.all_keys(ctx)?,
    };
    let io = IoBuffers {
        input: input.clone(),
        mask,
        output: output.clone(),
    };
    let bound = ctx.scoped_now("binding the caller's buffers", || {
        workspace.bind_io(ctx, &io);
        Ok(())
    });
    if let Err(error) = bound {
        workspace.forget_io();
        return Err(error);
    }
    ctx.scoped_now(operation, || {
        workspace.record(ctx, encoder, &io, false);
        Ok(())
    })
}

/// What [`run`] records after the forward, before the output's readback copy.
type AfterForward<'a> = &'a dyn Fn(&Workspace, &mut wgpu::CommandEncoder);

/// Upload, [`Workspace::record`] (what `encode` records), `after`, one submit, one readback;
/// with `timed`, per-kernel timestamps where the device has them.
async fn run(
    ctx: &GpuContext,
    workspace: &mut Workspace,
    dim: usize,
    x: &[f32],
    mask: Option<&[bool]>,
    timed: bool,
    after: Option<AfterForward<'_>>,
) -> Result<Profile> {
    let (batch, seq) = (workspace.plan().batch(), workspace.plan().seq());
    let host = workspace.host_io(ctx, dim)?;
    let mask_words: Vec<u32> = match mask {
        Some(mask) => mask.iter().map(|&allowed| allowed as u32).collect(),
        None => vec![1; batch * seq],
    };
    let start = crate::time::Instant::now();
    ctx.scoped("forward", || {
        ctx.queue()
            .write_buffer(&host.io.input, 0, bytemuck::cast_slice(x));
        ctx.queue()
            .write_buffer(&host.io.mask, 0, bytemuck::cast_slice(&mask_words));
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            });
        workspace.record(ctx, &mut encoder, &host.io, timed);
        if let Some(after) = after {
            after(workspace, &mut encoder);
        }
        encoder.copy_buffer_to_buffer(&host.io.output, 0, &host.staging, 0, host.io.output.size());
        ctx.queue().submit([encoder.finish()]);
        Ok(())
    })
    .await?;
    let output = memory::read_f32(ctx, &host.staging, batch * seq * dim).await?;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let (kernels, total_ms, source) = match workspace.timer().filter(|_| timed) {
        Some(timer) => {
            let times = timer.read_ms(ctx).await?;
            let kernels: Vec<KernelTime> = workspace
                .labels()
                .zip(times)
                .map(|(label, ms)| KernelTime {
                    label: label.to_string(),
                    ms,
                })
                .collect();
            let total = kernels.iter().map(|k| k.ms).sum();
            (kernels, total, TimingSource::GpuTimestamps)
        }
        None => (Vec::new(), wall_ms, TimingSource::HostWallClock),
    };
    Ok(Profile {
        output,
        kernels,
        total_ms,
        wall_ms,
        source,
    })
}

/// Attention maps: the search attention and the retrieval selection (see `src/maps.rs`).
impl CompositionalAttention {
    /// [`forward`](Self::forward), also returning what the layer attended to: for the query rows
    /// `options` names (every row by default) of every batch row, the search attention `[batch,
    /// s, q, n]` and the retrieval selection `[batch, s, q, r]` ([`AttentionMaps`]).
    ///
    /// The maps are intermediates of the unfused strategy, so this runs the unfused strategy
    /// whatever [`strategy`](Self::strategy) is set (its output matches the fused one's to f32
    /// rounding), and its `b·s·n²` search weights must fit the device's storage buffers. Only
    /// the asked rows are copied back. Maps larger than [`MapsOptions::max_bytes`] are refused
    /// with [`Error::MapsTooLarge`](crate::Error::MapsTooLarge) before anything runs.
    pub async fn forward_with_maps(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        options: &MapsOptions,
    ) -> Result<(Vec<f32>, AttentionMaps)> {
        let c = self.config;
        let (searches, retrievals) = (c.num_searches, c.num_retrievals);
        reference::check_input(&c, x, batch, seq, mask)?;
        let query_rows = options.resolve(batch, seq, searches, retrievals)?;
        io::check_finite("input", x)?;
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        let workspace = self.workspace_for(batch, seq, Strategy::Unfused).await?;
        let rows = query_rows.len();
        let readback = workspace.maps_readback(&ctx, rows, (searches, retrievals))?;
        let copy = |workspace: &Workspace, encoder: &mut wgpu::CommandEncoder| {
            workspace.record_maps_copies(encoder, &query_rows, (searches, retrievals), &readback);
        };
        let profile = run(&ctx, workspace, c.dim, x, mask, false, Some(&copy)).await?;
        let planes = batch * searches * rows;
        let search = memory::read_f32(&ctx, &readback[0], planes * seq).await?;
        let logits = memory::read_f32(&ctx, &readback[1], planes * retrievals).await?;
        let maps = AttentionMaps {
            batch,
            searches,
            retrievals,
            seq,
            query_rows,
            search,
            selection: logits.chunks_exact(retrievals).flat_map(softmax).collect(),
        };
        Ok((profile.output, maps))
    }

    /// Blocking [`forward_with_maps`](Self::forward_with_maps) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_with_maps_blocking(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        options: &MapsOptions,
    ) -> Result<(Vec<f32>, AttentionMaps)> {
        pollster::block_on(self.forward_with_maps(x, batch, seq, mask, options))
    }
}

/// The retrieval selection from its logits `G`: `softmax_ρ(G − max G)`, as the kernel mixes.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|g| (g - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

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
        reference::check_input(&self.config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        cache.check_append(self.id, batch, seq)?;
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let workspace = self.cached_workspace(cache, seq).await?;
        let profile = run(&ctx, workspace, dim, x, mask, false, None).await?;
        cache.len += seq;
        Ok(profile.output)
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
        #[cfg(target_arch = "wasm32")]
        let workspace =
            cache
                .workspaces
                .get(batch, seq, Strategy::Fused)
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
            let workspace =
                Workspace::build(&self.ctx, &self.config, weights, plan, Some(&cache.buffers))
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
