//! The layer on a device: its weights, the workspaces of recent shapes, and the two ways to run
//! it: `encode` into the caller's encoder on the caller's buffers, and `forward` on host slices
//! (upload, the same recording, one submit, one readback). Attention maps (`maps.rs`) and
//! generation over a KV cache (`generation.rs`) are the layer's other two entry points.

mod cross;
mod generation;
mod maps;
mod tune;

pub use tune::{TuneReport, TunedTime};

use crate::config::Config;
use crate::device_parameters::DeviceParameters;
use crate::device_weights::DeviceWeights;
use crate::error::Result;
use crate::gpu::dispatch::IoBuffers;
use crate::gpu::timing::TimingSource;
use crate::gpu::{CompileProgress, GpuContext, memory};
use crate::io::{self, Input};
use crate::plan::ExecutionPlan;
pub use crate::plan::Strategy;
use crate::precision::Precision;
use crate::shape;
use crate::weights::Weights;
use crate::workspace::{Workspace, WorkspaceCache};

/// Time of one kernel in a timed forward.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The pipeline variant's label: kernel name and specialisation.
    pub label: String,
    /// Milliseconds on the GPU.
    pub ms: f64,
}

/// The result and timing of one timed forward ([`CompositionalAttention::forward_timed`]).
#[derive(Clone, Debug)]
pub struct TimedForward {
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

/// The name [`TimedForward`] had before it was renamed.
#[deprecated(note = "renamed TimedForward")]
pub type Profile = TimedForward;

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
    /// The parameters as training reads and updates them, uploaded on first use by training.
    parameters: Option<DeviceParameters>,
    /// Whether an optimiser step left `parameters` newer than `weights` (read back before the
    /// next inference).
    parameters_ahead: bool,
    /// Counts the optimiser steps applied, so that a KV cache knows its workspaces' weights
    /// are stale.
    weights_version: u64,
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
        weights.check_shapes()?;
        ctx.check_alive("creating a layer")?;
        precision.check_supported(ctx)?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(CompositionalAttention {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ctx: ctx.clone(),
            config,
            precision,
            weights: DeviceWeights::new(weights),
            // The MLP score network selects after the fused kernel in f32 storage only
            // (ExecutionPlan::resolve); in f16 the unfused strategy (f32 intermediates) runs it.
            strategy: match (config.selection_mlp, precision) {
                (Some(_), Precision::F16) => Strategy::Unfused,
                _ => Strategy::default(),
            },
            workspaces: WorkspaceCache::new(),
            parameters: None,
            parameters_ahead: false,
            weights_version: 0,
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
    /// GEMM, core, tiles, storage and key chunks. A layer with extra key rows attends a memory
    /// of its own input: its plan is that memory's ([`ExecutionPlan::resolve_memory`] over
    /// `extra rows + seq` positions). Allocates nothing.
    pub fn plan(&self, batch: usize, seq: usize) -> Result<ExecutionPlan> {
        shape::check_tokens(&self.config, batch, seq)?;
        if self.config.runs_self_attention() && !self.config.plain_self_attention() {
            return ExecutionPlan::resolve_memory(
                &self.ctx,
                &self.config,
                self.precision,
                batch,
                seq,
                self.config.extra_keys.rows() + seq,
            );
        }
        self.plan_for(batch, seq, self.strategy)
    }

    /// The self-attention plan at `batch × seq` with `strategy` (a tuned tiling included).
    fn plan_for(&self, batch: usize, seq: usize, strategy: Strategy) -> Result<ExecutionPlan> {
        ExecutionPlan::resolve(
            &self.ctx,
            &self.config,
            self.precision,
            strategy,
            batch,
            seq,
        )
    }

    /// Bytes of GPU memory the layer holds now: the weights uploaded so far and every workspace
    /// alive.
    pub fn gpu_bytes(&self) -> u64 {
        self.weights.bytes()
            + self.workspaces.bytes()
            + self.parameters.as_ref().map_or(0, DeviceParameters::bytes)
    }

    /// The layer's parameters now: after optimiser steps, read back from the device (one
    /// submit, one wait); otherwise the weights it was made with.
    pub async fn weights(&self) -> Result<Weights> {
        match (&self.parameters, self.parameters_ahead) {
            (Some(parameters), true) => parameters.read(&self.ctx).await,
            _ => Ok(self.weights.host().clone()),
        }
    }

    /// Blocking [`CompositionalAttention::weights`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn weights_blocking(&self) -> Result<Weights> {
        pollster::block_on(self.weights())
    }

    /// The weights the layer was made with, or last read back after optimiser steps.
    pub(crate) fn host_weights(&self) -> &Weights {
        self.weights.host()
    }

    /// A unique number per layer (a KV cache, activations and gradients record their layer's).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The parameters as training reads them, uploaded on first use.
    pub(crate) fn device_parameters(&mut self) -> Result<&DeviceParameters> {
        if self.parameters.is_none() {
            self.parameters = Some(DeviceParameters::upload(&self.ctx, self.weights.host())?);
        }
        self.device_parameters_now()
    }

    /// The parameters, where training has uploaded them.
    pub(crate) fn device_parameters_now(&self) -> Result<&DeviceParameters> {
        self.parameters.as_ref().ok_or_else(|| {
            crate::Error::ConfigMismatch("the layer's parameters are not on the device".into())
        })
    }

    /// Records that an optimiser step changed the device parameters: every inference form of
    /// the weights is stale from now on (workspaces bind them), until [`sync_parameters`].
    pub(crate) fn parameters_updated(&mut self) {
        self.parameters_ahead = true;
        self.weights_version += 1;
        self.workspaces.clear();
    }

    /// Brings the inference weights up to the device parameters after optimiser steps.
    async fn sync_parameters(&mut self) -> Result<()> {
        if let (Some(parameters), true) = (&self.parameters, self.parameters_ahead) {
            let weights = parameters.read(&self.ctx).await?;
            self.weights = DeviceWeights::new(&weights);
            self.workspaces.clear();
            self.parameters_ahead = false;
        }
        Ok(())
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

    /// Builds the workspace for `(batch, seq)` and the current strategy, unless it is alive:
    /// allocates its buffers and compiles its pipelines, so that the first forward of the shape
    /// only records. In a browser, call this before [`encode`](Self::encode) for each new shape.
    pub async fn prepare(&mut self, batch: usize, seq: usize) -> Result<()> {
        self.prepare_with_progress(batch, seq, |_| {}).await
    }

    /// [`prepare`](Self::prepare), calling `progress` with how many of the shape's pipelines
    /// are compiled: once when the count is known (those compiled earlier, by any layer on the
    /// device, count as done), then after each one. A shape whose workspace is alive reports
    /// nothing.
    pub async fn prepare_with_progress(
        &mut self,
        batch: usize,
        seq: usize,
        mut progress: impl FnMut(CompileProgress),
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        self.workspace_for(batch, seq, self.strategy, &mut progress)
            .await
            .map(|_| ())
    }

    /// Blocking [`CompositionalAttention::prepare`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_blocking(&mut self, batch: usize, seq: usize) -> Result<()> {
        pollster::block_on(self.prepare(batch, seq))
    }

    /// The workspace for `(batch, seq)` and the current strategy, built if absent.
    async fn workspace(&mut self, batch: usize, seq: usize) -> Result<&mut Workspace> {
        self.workspace_for(batch, seq, self.strategy, &mut |_| {})
            .await
    }

    /// The workspace for `(batch, seq)` and `strategy`, built if absent (reporting the compiles
    /// to `progress`).
    async fn workspace_for(
        &mut self,
        batch: usize,
        seq: usize,
        strategy: Strategy,
        progress: &mut dyn FnMut(CompileProgress),
    ) -> Result<&mut Workspace> {
        shape::check_tokens(&self.config, batch, seq)?;
        self.sync_parameters().await?;
        if self.workspaces.get(batch, seq, strategy).is_none() {
            // Free the least recently used shape before the tuner's and the new workspace.
            self.workspaces.make_room();
            // Tuning only chooses among tilings: where it fails (out of memory, say), the
            // forward goes on with the built-in one; a lost device stops it. In a browser only
            // `tune` measures (layer::tune).
            #[cfg(not(target_arch = "wasm32"))]
            if let Err(error) = self.tune_if_new(batch, seq, strategy, progress).await {
                self.ctx.check_alive("tuning")?;
                log::warn!("tuning batch {batch} × seq {seq} failed, built-in tiling: {error}");
            }
            let plan = self.plan_for(batch, seq, strategy)?;
            let weights = self.weights.for_plan(&self.ctx, &plan)?;
            let workspace =
                Workspace::build(&self.ctx, &self.config, weights, plan, None, progress).await?;
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
        // After optimiser steps the workspaces were cleared and the weights wait for a
        // readback: `prepare` (async) brings them up to date.
        #[cfg(target_arch = "wasm32")]
        let workspace = self
            .workspaces
            .get(batch, seq, self.strategy)
            .filter(|_| !self.parameters_ahead)
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
    pub async fn forward_timed(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<TimedForward> {
        self.execute(x, batch, seq, mask, true).await
    }

    /// The name [`CompositionalAttention::forward_timed`] had before it was renamed.
    #[deprecated(note = "renamed forward_timed")]
    pub async fn profile(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
    ) -> Result<TimedForward> {
        self.forward_timed(x, batch, seq, mask).await
    }

    /// Checks the input, then [`run`] on the workspace of the shape.
    async fn execute(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        timed: bool,
    ) -> Result<TimedForward> {
        shape::check_input(&self.config, x, batch, seq, mask)?;
        io::check_finite("input", x)?;
        if !self.config.plain_self_attention() {
            // Extra key rows: the input's own memory (one more submit; host wall time).
            let start = crate::time::Instant::now();
            let output = self.forward_over_own_memory(x, batch, seq, mask).await?;
            let wall_ms = start.elapsed().as_secs_f64() * 1e3;
            return Ok(TimedForward {
                output,
                kernels: Vec::new(),
                total_ms: wall_ms,
                wall_ms,
                source: TimingSource::HostWallClock,
            });
        }
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let _serial = ctx.serial().await;
        let workspace = self.workspace(batch, seq).await?;
        Ok(run(&ctx, workspace, dim, x, mask, timed, None).await?.0)
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

/// What [`run`] records after the forward (before the output's readback copy), and the
/// `MAP_READ` buffers (with their lengths in `f32`s) it then reads back with the output, in the
/// same wait.
struct AfterForward<'a> {
    record: &'a dyn Fn(&Workspace, &mut wgpu::CommandEncoder),
    read: Vec<(&'a wgpu::Buffer, usize)>,
}

/// Upload, [`Workspace::record`] (what `encode` records), `after`, one submit, one readback
/// (of the output and of `after.read`, returned in that order after the output); with `timed`,
/// per-kernel timestamps where the device has them.
async fn run(
    ctx: &GpuContext,
    workspace: &mut Workspace,
    dim: usize,
    x: &[f32],
    mask: Option<&[bool]>,
    timed: bool,
    after: Option<AfterForward<'_>>,
) -> Result<(TimedForward, Vec<Vec<f32>>)> {
    let (batch, seq) = (workspace.plan().batch(), workspace.plan().seq());
    let host = workspace.host_io(ctx, dim)?;
    let mut mask_words: Vec<u32> = crate::host_memory::try_with_capacity("mask", batch * seq)?;
    match mask {
        Some(mask) => mask_words.extend(mask.iter().map(|&allowed| allowed as u32)),
        None => mask_words.resize(batch * seq, 1),
    }
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
        if let Some(after) = &after {
            (after.record)(workspace, &mut encoder);
        }
        encoder.copy_buffer_to_buffer(&host.io.output, 0, &host.staging, 0, host.io.output.size());
        ctx.queue().submit([encoder.finish()]);
        Ok(())
    })
    .await?;
    let mut reads = vec![(&host.staging, batch * seq * dim)];
    reads.extend(after.map(|after| after.read).unwrap_or_default());
    let mut read = memory::read_f32_all(ctx, &reads).await?.into_iter();
    let output = read.next().expect("the output is read first");
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
    let timed = TimedForward {
        output,
        kernels,
        total_ms,
        wall_ms,
        source,
    };
    Ok((timed, read.collect()))
}
