//! A workspace carries out one [`ExecutionPlan`]: the intermediates and the bound dispatches of
//! one forward shape, built once and recorded into any number of command encoders.
//!
//! Data flows one way: input → (LayerNorm) → projections GEMM → attention core → output GEMM.
//! The input, the key mask and the output are [`IoSlot`]s: a recording names the buffers behind
//! them ([`IoBuffers`]), the workspace's own host-upload buffers for `forward`, the caller's for
//! `encode`. Bind groups for the last io buffers are kept, so recording the same buffers again
//! builds nothing.
//!
//! A layer keeps a few workspaces alive ([`WorkspaceCache`]) so that inputs whose shape
//! alternates do not rebuild them.

use crate::config::Config;
use crate::device_weights::{
    BufferCoreWeights, GemmWeights, PlanBiases, PlanWeights, RouteWeights, TexelGemmWeights,
};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{self, Buf, CompileProgress, Dispatch, IoBuffers, IoSlot};
use crate::gpu::memory;
use crate::gpu::texture::TexelRows;
use crate::gpu::timing::PassTimer;
use crate::ops::decode::CacheBuffers;
use crate::ops::fused_attention::{Carry, FusedIo};
use crate::ops::gemm::{GemmOperands, GemmPrecision, GemmShape};
use crate::ops::key_values::{KeyValues, MemoryKeys};
use crate::ops::retrieval_select::{MlpWeights, Selection};
use crate::ops::{self, ProjectionLayout, Rows};
use crate::plan::{ExecutionPlan, FusedPlan, Strategy, TexelCore, UNFUSED_SIZE_HINT};
use crate::precision::Precision;

/// Keys and values a plan attends that its own input does not project, passed by what owns
/// them (a `KvCache`, a `Memory`): the one pairing the plan's types cannot hold.
#[derive(Clone, Copy)]
pub(crate) enum StoredKeys<'a> {
    /// A KV cache's (the cached core).
    Cache(&'a CacheBuffers),
    /// A memory's: its cache layout (the split-KV and fused cores) and, on CPU drivers, its
    /// texel rows (the blocked core).
    Memory(MemoryKeys<'a>),
}

/// Intermediate buffers and textures the dispatches are bound to.
#[derive(Default)]
struct Held {
    buffers: Vec<wgpu::Buffer>,
    texels: Vec<TexelRows>,
}

impl Held {
    fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.size()).sum::<u64>()
            + self.texels.iter().map(TexelRows::bytes).sum::<u64>()
    }
}

/// The projections a core reads and the concatenation it writes, as buffers.
struct BufferPair {
    proj: wgpu::Buffer,
    concat: wgpu::Buffer,
}

/// The projections a core reads and the concatenation it writes, as texel rows.
struct TexelPair {
    proj: TexelRows,
    concat: TexelRows,
}

/// The plan's route with its weights ([`RouteWeights`]) and the core's operands in the storage
/// of that route: texel rows on the texel route, buffers of the plan's intermediate precision
/// on the buffer route. Every role of the build matches on this one value, so a core, its
/// operands, the GEMMs and the biases can only meet in the pairs the plan's types allow.
// One value per workspace build: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Wiring<'w> {
    Texels {
        gemm: TexelGemmWeights<'w>,
        core: TexelCore,
        operands: TexelPair,
    },
    Buffers {
        gemm: GemmWeights<'w>,
        biases: Option<PlanBiases<'w>>,
        core: BufferCoreWeights<'w>,
        operands: BufferPair,
    },
}

impl<'w> Wiring<'w> {
    /// Allocates the core's operands for `route` in `precision` (the plan's intermediates):
    /// buffers of that element type, or texel rows of that format.
    fn new(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        route: RouteWeights<'w>,
        precision: Precision,
    ) -> Result<Self> {
        let rows = layout.batch * layout.seq;
        let search_width = layout.searches * layout.head;
        Ok(match route {
            RouteWeights::Texels { gemm, core } => Wiring::Texels {
                gemm,
                core,
                operands: TexelPair {
                    proj: TexelRows::new_in(
                        ctx,
                        "projections",
                        rows,
                        layout.row_stride,
                        precision,
                    )?,
                    concat: TexelRows::new_in(
                        ctx,
                        "concatenated searches",
                        rows,
                        search_width,
                        precision,
                    )?,
                },
            },
            RouteWeights::Buffers { gemm, biases, core } => Wiring::Buffers {
                gemm,
                biases,
                core,
                operands: BufferPair {
                    proj: memory::stored(
                        ctx,
                        "projections",
                        &[layout.batch, layout.seq, layout.row_stride],
                        precision,
                        None,
                    )?,
                    concat: memory::stored(
                        ctx,
                        "concatenated searches",
                        &[layout.batch, layout.seq, search_width],
                        precision,
                        None,
                    )?,
                },
            },
        })
    }

    /// The projections, as the kernels that read them take them.
    fn proj(&self) -> Rows<'_> {
        match self {
            Wiring::Texels { operands, .. } => Rows::Texels(&operands.proj),
            Wiring::Buffers { operands, .. } => Rows::Buffer((&operands.proj).into()),
        }
    }

    /// Moves the operands into `held`, for the workspace's lifetime.
    fn hold(self, held: &mut Held) {
        match self {
            Wiring::Texels { operands, .. } => held.texels.extend([operands.proj, operands.concat]),
            Wiring::Buffers { operands, .. } => {
                held.buffers.extend([operands.proj, operands.concat])
            }
        }
    }
}

/// Buffers the host `forward` uploads into and reads back from.
#[derive(Clone)]
pub(crate) struct HostIo {
    pub io: IoBuffers,
    pub staging: wgpu::Buffer,
}

impl HostIo {
    fn bytes(&self) -> u64 {
        self.io.input.size() + self.io.mask.size() + self.io.output.size() + self.staging.size()
    }
}

/// The intermediates and dispatches of one plan.
pub(crate) struct Workspace {
    plan: ExecutionPlan,
    dispatches: Vec<Dispatch>,
    held: Held,
    /// The io buffers last recorded with, and the bind groups of the dispatches that bind them
    /// (`None` for a dispatch bound once at build).
    io_groups: Option<(IoBuffers, Vec<Option<wgpu::BindGroup>>)>,
    /// Created by the first host `forward`.
    host: Option<HostIo>,
    /// A mask of ones, for recordings without a mask; created on first need.
    all_keys: Option<wgpu::Buffer>,
    /// Timestamp queries, created by the first profiled recording.
    timer: Option<PassTimer>,
    /// The unfused core's search weights and selection logits (`None` for other cores).
    maps: Option<MapsBuffers>,
}

/// The two intermediates of the unfused core that `forward_with_maps` reads back: the search
/// weights `[b, s, n, n]` (the softmax over keys) and the selection logits `G` `[b, s, n, r]`;
/// and the staging buffers their asked rows are copied into, kept for the next call and grown
/// when a call asks for more rows.
pub(crate) struct MapsBuffers {
    search_weights: wgpu::Buffer,
    selection_logits: wgpu::Buffer,
    readback: Option<[wgpu::Buffer; 2]>,
}

impl Workspace {
    /// Allocates the intermediates of `plan` and binds every dispatch, in data-flow order. The
    /// pipelines not compiled yet are compiled last, after every dispatch is recorded, so that
    /// `progress` can count them out of their total.
    pub(crate) async fn build(
        ctx: &GpuContext,
        config: &Config,
        weights: PlanWeights<'_>,
        plan: ExecutionPlan,
        stored_keys: Option<StoredKeys<'_>>,
        progress: &mut dyn FnMut(CompileProgress),
    ) -> Result<Workspace> {
        let start = crate::time::Instant::now();
        let deferring = ctx.deferring_compiles();
        let ctx = &deferring;
        let c = config;
        let (batch, seq) = (plan.batch(), plan.seq());
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        // The projections and concatenation in the plan's intermediate precision; the input,
        // LayerNorm output and layer output stay f32, the weights are the layer's precision.
        let PlanWeights { norm, route } = weights;
        let wiring = Wiring::new(ctx, &layout, route, plan.intermediates())?;
        let mut recorder = Recorder {
            ctx,
            config,
            plan: &plan,
            layout,
            held: Held::default(),
            dispatches: Vec::new(),
        };
        let normed = recorder.prenorm(norm).await?;
        let input = normed.as_ref().map_or(Buf::Io(IoSlot::Input), Buf::Owned);
        recorder.projections(input, &wiring).await?;
        let (finish, maps) = recorder.core(&wiring, stored_keys).await?;
        recorder.output(&wiring).await?;
        let Recorder {
            mut held,
            mut dispatches,
            ..
        } = recorder;
        dispatches.extend(finish);
        dispatch::compile_pending(ctx, &mut dispatches, progress).await?;

        held.buffers.extend(normed);
        wiring.hold(&mut held);
        let workspace = Workspace {
            plan,
            dispatches,
            held,
            io_groups: None,
            host: None,
            all_keys: None,
            timer: None,
            maps,
        };
        log::info!(
            "workspace for batch {batch} × seq {seq} ({}): {} dispatches, {} bytes, built in {:.1} ms",
            workspace.plan.core().name(),
            workspace.dispatches.len(),
            workspace.bytes(),
            start.elapsed().as_secs_f64() * 1e3
        );
        Ok(workspace)
    }

    /// The plan this workspace carries out.
    pub(crate) fn plan(&self) -> &ExecutionPlan {
        &self.plan
    }

    /// Whether the workspace serves `(batch, seq, strategy)`.
    pub(crate) fn serves(&self, batch: usize, seq: usize, strategy: Strategy) -> bool {
        (self.plan.batch(), self.plan.seq(), self.plan.strategy()) == (batch, seq, strategy)
    }

    /// Bytes of GPU memory the workspace holds.
    pub(crate) fn bytes(&self) -> u64 {
        let params: u64 = self.dispatches.iter().map(Dispatch::bytes).sum();
        let host = self.host.as_ref().map_or(0, HostIo::bytes);
        let all_keys = self.all_keys.as_ref().map_or(0, wgpu::Buffer::size);
        let timer = self.timer.as_ref().map_or(0, PassTimer::bytes);
        let maps_readback: u64 = self
            .maps
            .iter()
            .flat_map(|maps| maps.readback.iter().flatten())
            .map(wgpu::Buffer::size)
            .sum();
        self.held.bytes() + params + host + all_keys + timer + maps_readback
    }

    /// The host forward's upload and readback buffers, created on first use.
    pub(crate) fn host_io(&mut self, ctx: &GpuContext, dim: usize) -> Result<HostIo> {
        let (batch, seq) = (self.plan.batch(), self.plan.seq());
        let host = match self.host.take() {
            Some(host) => host,
            None => {
                let output = memory::storage(ctx, "output", &[batch, seq, dim], None)?;
                HostIo {
                    staging: memory::staging(ctx, "output readback", output.size()),
                    io: IoBuffers {
                        input: memory::storage(ctx, "input", &[batch, seq, dim], None)?,
                        mask: memory::storage(ctx, "mask", &[batch, seq], None)?,
                        output,
                    },
                }
            }
        };
        Ok(self.host.insert(host).clone())
    }

    /// A mask that allows every key, for recordings without a mask; created on first use.
    pub(crate) fn all_keys(&mut self, ctx: &GpuContext) -> Result<wgpu::Buffer> {
        let mask = match self.all_keys.take() {
            Some(mask) => mask,
            None => memory::storage_init(
                ctx,
                "mask (every key allowed)",
                &vec![1u32; self.plan.batch() * self.plan.seq()],
            )?,
        };
        Ok(self.all_keys.insert(mask).clone())
    }

    /// Builds the bind groups of the dispatches that bind io slots for `io`, unless the last
    /// recording used the same buffers. Call inside an error scope: a buffer of another device
    /// fails validation here (then [`Workspace::forget_io`]).
    pub(crate) fn bind_io(&mut self, ctx: &GpuContext, io: &IoBuffers) {
        io_bind_groups(&mut self.io_groups, &self.dispatches, ctx, io);
    }

    /// Drops the io bind groups (after a failed [`Workspace::bind_io`]).
    pub(crate) fn forget_io(&mut self) {
        self.io_groups = None;
    }

    /// Records every dispatch into `encoder` with `io` behind the slots: in one compute pass, or
    /// with `timed` in one pass per dispatch between timestamps (where the device has them).
    /// Bind groups for `io` are built only when it differs from the last recording's. Call
    /// inside an error scope: a buffer of another device fails validation here.
    pub(crate) fn record(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        io: &IoBuffers,
        timed: bool,
    ) {
        if timed && self.timer.is_none() {
            self.timer = PassTimer::new(ctx, self.dispatches.len());
        }
        let groups = io_bind_groups(&mut self.io_groups, &self.dispatches, ctx, io);
        match self.timer.as_ref().filter(|_| timed) {
            // One pass per kernel, bracketed by timestamps.
            Some(timer) => {
                for (index, (dispatch, group)) in
                    self.dispatches.iter().zip(groups.iter()).enumerate()
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(dispatch.label()),
                        timestamp_writes: Some(timer.writes(index)),
                    });
                    dispatch.record(&mut pass, group.as_ref());
                }
                timer.resolve(encoder);
            }
            // Everything in one pass: no pass boundaries for the driver to synchronise.
            None => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("compositional attention"),
                    timestamp_writes: None,
                });
                for (dispatch, group) in self.dispatches.iter().zip(groups.iter()) {
                    dispatch.record(&mut pass, group.as_ref());
                }
            }
        }
    }

    /// The timer of profiled recordings, if the device has timestamps and one was recorded.
    pub(crate) fn timer(&self) -> Option<&PassTimer> {
        self.timer.as_ref()
    }

    /// Staging buffers for the maps of `queries` query rows (`[b, s, q, n]` search attention and
    /// `[b, s, q, r]` selection logits, f32), kept from the last call when large enough; an error
    /// for a plan without the unfused core, whose intermediates the maps are.
    pub(crate) fn maps_readback(
        &mut self,
        ctx: &GpuContext,
        queries: usize,
        (searches, retrievals): (usize, usize),
    ) -> Result<[wgpu::Buffer; 2]> {
        let core = self.plan.core().name();
        let planes = (self.plan.batch() * searches * queries) as u64;
        let maps = self
            .maps
            .as_mut()
            .ok_or_else(|| crate::Error::InvalidConfig {
                field: "execution plan",
                value: core.to_string(),
                reason: "attention maps are read from the unfused core, which this plan lacks",
            })?;
        let bytes = [
            4 * planes * self.plan.seq() as u64,
            4 * planes * retrievals as u64,
        ];
        let fits = |kept: &[wgpu::Buffer; 2]| (0..2).all(|k| kept[k].size() >= bytes[k]);
        let readback = match maps.readback.take() {
            Some(kept) if fits(&kept) => kept,
            _ => [
                memory::staging(ctx, "search attention readback", bytes[0]),
                memory::staging(ctx, "selection logits readback", bytes[1]),
            ],
        };
        Ok(maps.readback.insert(readback).clone())
    }

    /// Records copies of the maps of `query_rows` (in every batch row) into `[search, selection]`
    /// (from [`Workspace::maps_readback`]): one copy per batch row, search and run of consecutive
    /// rows. Records nothing without the unfused core's buffers.
    pub(crate) fn record_maps_copies(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        query_rows: &[usize],
        (searches, retrievals): (usize, usize),
        [search, selection]: &[wgpu::Buffer; 2],
    ) {
        let Some(maps) = &self.maps else {
            return;
        };
        let (batch, seq) = (self.plan.batch(), self.plan.seq());
        let q = query_rows.len() as u64;
        // Runs of consecutive rows: (first row, its position in query_rows, length).
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (k, &row) in query_rows.iter().enumerate() {
            match runs.last_mut() {
                Some((first, _, len)) if *first + *len == row => *len += 1,
                _ => runs.push((row, k, 1)),
            }
        }
        for plane in 0..(batch * searches) as u64 {
            for &(first, at, len) in &runs {
                for (from, to, width) in [
                    (&maps.search_weights, search, seq as u64),
                    (&maps.selection_logits, selection, retrievals as u64),
                ] {
                    let source = (plane * seq as u64 + first as u64) * width * 4;
                    let destination = (plane * q + at as u64) * width * 4;
                    encoder.copy_buffer_to_buffer(
                        from,
                        source,
                        to,
                        destination,
                        len as u64 * width * 4,
                    );
                }
            }
        }
    }

    /// The dispatches' labels, in recording order.
    pub(crate) fn labels(&self) -> impl Iterator<Item = &str> {
        self.dispatches.iter().map(Dispatch::label)
    }
}

/// The bind groups for `io` of the `dispatches` that bind io slots (`None` for the others):
/// those in `slot` when it holds the same buffers, else new ones, stored in `slot`.
fn io_bind_groups<'a>(
    slot: &'a mut Option<(IoBuffers, Vec<Option<wgpu::BindGroup>>)>,
    dispatches: &[Dispatch],
    ctx: &GpuContext,
    io: &IoBuffers,
) -> &'a [Option<wgpu::BindGroup>] {
    let (last, groups) = match slot.take() {
        Some((last, groups)) if &last == io => (last, groups),
        _ => {
            log::debug!("binding {} dispatches to new io buffers", dispatches.len());
            let groups = dispatches
                .iter()
                .map(|d| match d.binds_io() {
                    true => d.create_bind_group(ctx, Some(io)),
                    false => None,
                })
                .collect();
            (io.clone(), groups)
        }
    };
    &slot.insert((last, groups)).1
}

/// Workspaces of recently used shapes, most recent last, up to a count.
pub(crate) struct WorkspaceCache {
    workspaces: Vec<Workspace>,
    capacity: usize,
}

impl WorkspaceCache {
    /// Shapes kept by default: enough for a prefill shape, a decode shape and a couple of
    /// alternating batch shapes without rebuilding.
    pub(crate) const DEFAULT_CAPACITY: usize = 4;

    pub(crate) fn new() -> Self {
        WorkspaceCache {
            workspaces: Vec::new(),
            capacity: Self::DEFAULT_CAPACITY,
        }
    }

    /// The workspace for `(batch, seq, strategy)`, moved to the most-recent end; `None` if absent.
    pub(crate) fn get(
        &mut self,
        batch: usize,
        seq: usize,
        strategy: Strategy,
    ) -> Option<&mut Workspace> {
        let index = self
            .workspaces
            .iter()
            .position(|w| w.serves(batch, seq, strategy))?;
        let workspace = self.workspaces.remove(index);
        self.workspaces.push(workspace);
        self.workspaces.last_mut()
    }

    /// Frees least recently used workspaces until one more fits, before it is allocated.
    pub(crate) fn make_room(&mut self) {
        while self.workspaces.len() >= self.capacity.max(1) {
            let evicted = self.workspaces.remove(0);
            log::debug!(
                "evicting the workspace for batch {} × seq {}",
                evicted.plan.batch(),
                evicted.plan.seq()
            );
        }
    }

    /// Adds a workspace as the most recent.
    pub(crate) fn insert(&mut self, workspace: Workspace) -> &mut Workspace {
        self.make_room();
        self.workspaces.push(workspace);
        let last = self.workspaces.len() - 1;
        &mut self.workspaces[last]
    }

    /// Keeps at most `capacity` (at least 1) workspaces, evicting the least recently used.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        let excess = self.workspaces.len().saturating_sub(self.capacity);
        self.workspaces.drain(..excess);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frees the workspaces whose plan `stale` says no longer holds.
    pub(crate) fn drop_where(&mut self, stale: impl Fn(&ExecutionPlan) -> bool) {
        self.workspaces.retain(|w| !stale(&w.plan));
    }

    /// Frees every workspace.
    pub(crate) fn clear(&mut self) {
        self.workspaces.clear();
    }

    /// The shapes held, least recently used first.
    pub(crate) fn shapes(&self) -> Vec<(usize, usize, Strategy)> {
        self.workspaces
            .iter()
            .map(|w| (w.plan.batch(), w.plan.seq(), w.plan.strategy()))
            .collect()
    }

    /// Bytes of every workspace.
    pub(crate) fn bytes(&self) -> u64 {
        self.workspaces.iter().map(Workspace::bytes).sum()
    }
}

/// The unfused attention core: logits, softmax, aggregation, selection. Returns the
/// intermediate buffers the dispatches are bound to, and those the attention maps are read from.
async fn unfused_core(
    ctx: &GpuContext,
    c: &Config,
    layout: &ProjectionLayout,
    proj: &wgpu::Buffer,
    selection: Selection<'_>,
    concat: &wgpu::Buffer,
    dispatches: &mut Vec<Dispatch>,
) -> Result<(Vec<wgpu::Buffer>, MapsBuffers)> {
    let (batch, seq) = (layout.batch, layout.seq);
    let scale = c.scale() as f32;
    let scores = [batch, c.num_searches, seq, seq];
    let logits = memory::storage(ctx, "search logits", &scores, Some(UNFUSED_SIZE_HINT))?;
    let weights = memory::storage(ctx, "search weights", &scores, Some(UNFUSED_SIZE_HINT))?;
    let retrieved = memory::storage(
        ctx,
        "retrieved",
        &[batch, c.num_searches, seq, c.value_width()],
        None,
    )?;
    let g_scratch = memory::storage(
        ctx,
        "retrieval logits",
        &[batch, c.num_searches, seq, c.num_retrievals],
        None,
    )?;
    dispatches.push(ops::search_scores::dispatch(ctx, layout, scale, proj, &logits).await?);
    dispatches.push(
        ops::masked_softmax::dispatch(
            ctx,
            batch,
            c.num_searches,
            seq,
            c.causal,
            &logits,
            IoSlot::Mask,
            &weights,
        )
        .await?,
    );
    dispatches
        .extend(ops::search_values::dispatches(ctx, layout, &weights, proj, &retrieved).await?);
    dispatches.push(
        ops::retrieval_select::dispatch(
            ctx, layout, selection, &retrieved, proj, &g_scratch, concat,
        )
        .await?,
    );
    let maps = MapsBuffers {
        search_weights: weights.clone(),
        selection_logits: g_scratch.clone(),
        readback: None,
    };
    Ok((vec![logits, weights, retrieved, g_scratch], maps))
}

/// What `Workspace::build` records into: the plan's inputs, the intermediates it allocates and
/// the dispatches in data-flow order. Each method records one role.
struct Recorder<'a> {
    ctx: &'a GpuContext,
    config: &'a Config,
    plan: &'a ExecutionPlan,
    layout: ProjectionLayout,
    held: Held,
    dispatches: Vec<Dispatch>,
}

impl Recorder<'_> {
    /// Step 1, prenorm: the normalised input the GEMM reads (`None`: it reads the caller's).
    async fn prenorm(
        &mut self,
        norm: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    ) -> Result<Option<wgpu::Buffer>> {
        let (ctx, c) = (self.ctx, self.config);
        let (batch, seq) = (self.layout.batch, self.layout.seq);
        Ok(match norm {
            Some((gamma, beta)) => {
                let normed = memory::storage(ctx, "layer norm", &[batch, seq, c.dim], None)?;
                self.dispatches.push(
                    ops::layer_norm::dispatch(
                        ctx,
                        batch * seq,
                        c.dim,
                        c.layer_norm_eps,
                        IoSlot::Input,
                        (gamma, beta),
                        &normed,
                    )
                    .await?,
                );
                Some(normed)
            }
            None => None,
        })
    }

    /// An f32 texel copy of `[rows, cols]` `buffer` (stored in `precision`) for a texel GEMM,
    /// made by a `texture_copy` dispatch and held by the workspace; its index in `held.texels`.
    async fn texel_copy(
        &mut self,
        (buffer, precision): (Buf<'_>, Precision),
        rows: usize,
        cols: usize,
    ) -> Result<usize> {
        let copy = TexelRows::new(self.ctx, "GEMM operand", rows, cols)?;
        self.dispatches
            .push(ops::texture_copy::dispatch(self.ctx, buffer, precision, &copy).await?);
        self.held.texels.push(copy);
        Ok(self.held.texels.len() - 1)
    }

    /// Step 2, projections `[SQ | SK | RQ or Q̃ | RV]` of `input`, in the storage the core reads,
    /// and their biases.
    async fn projections(&mut self, input: Buf<'_>, wiring: &Wiring<'_>) -> Result<()> {
        let (ctx, c, plan) = (self.ctx, self.config, self.plan);
        let layout = self.layout;
        let tokens = layout.batch * layout.seq;
        let stored = plan.intermediates();
        let operands = match wiring {
            // A texel GEMM reads its input as texel rows: a copy of the (normalised) input. It
            // writes the core's operands, texel rows or buffers.
            Wiring::Texels { gemm, .. }
            | Wiring::Buffers {
                gemm: GemmWeights::Texels(gemm),
                ..
            } => {
                let copy = self
                    .texel_copy((input, Precision::F32), tokens, c.dim)
                    .await?;
                GemmOperands::Texels {
                    kernel: gemm.input,
                    lhs: &self.held.texels[copy],
                    rhs: gemm.projection,
                    out: wiring.proj(),
                    out_precision: stored,
                }
            }
            Wiring::Buffers {
                gemm:
                    GemmWeights::Buffers {
                        tiling, projection, ..
                    },
                operands,
                ..
            } => GemmOperands::Buffers {
                tiling: *tiling,
                shape: GemmShape {
                    m: tokens,
                    n: layout.row_stride,
                    k: c.dim,
                },
                precision: GemmPrecision {
                    lhs: Precision::F32,
                    rhs: plan.precision(),
                    out: stored,
                },
                lhs: input,
                rhs: projection,
                out: (&operands.proj).into(),
            },
        };
        self.dispatches
            .extend(ops::gemm::dispatches(ctx, operands).await?);
        if let Wiring::Buffers {
            biases: Some(biases),
            operands,
            ..
        } = wiring
        {
            self.dispatches.push(
                ops::bias_add::dispatch(
                    ctx,
                    tokens,
                    layout.row_stride,
                    biases.projection,
                    &operands.proj,
                    stored,
                )
                .await?,
            );
        }
        Ok(())
    }

    /// Step 3, the attention core: search, retrieval and selection into the concatenation. Returns
    /// the dispatch that must run last (a cached core's length update) and the unfused core's
    /// map buffers.
    async fn core(
        &mut self,
        wiring: &Wiring<'_>,
        stored_keys: Option<StoredKeys<'_>>,
    ) -> Result<(Option<Dispatch>, Option<MapsBuffers>)> {
        let cache = match stored_keys {
            Some(StoredKeys::Cache(cache)) => Some(cache),
            Some(StoredKeys::Memory(memory)) => Some(memory.cache),
            None => None,
        };
        // A memory plan's memory is passed by the `Memory` that resolved it (`layer::cross`).
        let memory_keys = || match stored_keys {
            Some(StoredKeys::Memory(memory)) => Ok(memory),
            _ => Err(crate::Error::InvalidConfig {
                field: "execution plan",
                value: String::new(),
                reason: "a memory plan is built with the memory it was resolved for",
            }),
        };
        let (ctx, c, plan) = (self.ctx, self.config, self.plan);
        let layout = self.layout;
        let scale = c.scale() as f32;
        let stored = plan.intermediates();
        let mut finish = None;
        let mut maps = None;
        match wiring {
            Wiring::Texels {
                core: TexelCore::Blocked(blocked),
                operands: TexelPair { proj, concat },
                ..
            } => {
                let value_mean = self.value_mean(wiring).await?;
                let bound = ops::blocked_attention::bind(
                    ctx,
                    &layout,
                    *blocked,
                    scale,
                    proj,
                    self.own_keys(&value_mean),
                    concat,
                )
                .await?;
                self.dispatches.extend(bound.dispatches);
                self.held.buffers.push(value_mean);
                self.held.texels.push(bound.retrieved);
            }
            Wiring::Texels {
                core: TexelCore::BlockedMemory(blocked),
                operands: TexelPair { proj, concat },
                ..
            } => {
                let bound = ops::blocked_attention::bind(
                    ctx,
                    &layout,
                    *blocked,
                    scale,
                    proj,
                    KeyValues::Memory(memory_keys()?),
                    concat,
                )
                .await?;
                self.dispatches.extend(bound.dispatches);
                self.held.texels.push(bound.retrieved);
            }
            Wiring::Texels {
                core: TexelCore::Fused(fused),
                operands: TexelPair { proj, concat },
                ..
            } => {
                let value_mean = self.value_mean(wiring).await?;
                let own = self.own_keys(&value_mean);
                self.fused(fused, FusedIo::Texels { proj, concat }, own)
                    .await?;
                self.held.buffers.push(value_mean);
            }
            Wiring::Buffers {
                core: BufferCoreWeights::Fused { plan: fused, mlp },
                operands: BufferPair { proj, concat },
                ..
            } => {
                let value_mean = self.value_mean(wiring).await?;
                // With an MLP score network the kernel stores the retrieved vectors, and the
                // network selects after it.
                let retrieved = self.retrieved_for_mlp(mlp.as_ref())?;
                let io = FusedIo::Buffers {
                    proj,
                    concat: retrieved.as_ref().unwrap_or(concat),
                    precision: stored,
                };
                let own = self.own_keys(&value_mean);
                self.fused(fused, io, own).await?;
                self.held.buffers.push(value_mean);
                self.mlp_selection(mlp.as_ref(), retrieved, proj, concat)
                    .await?;
            }
            Wiring::Buffers {
                core: BufferCoreWeights::FusedMemory(fused),
                operands: BufferPair { proj, concat },
                ..
            } => {
                let io = FusedIo::Buffers {
                    proj,
                    concat,
                    precision: stored,
                };
                self.fused(fused, io, KeyValues::Memory(memory_keys()?))
                    .await?;
            }
            Wiring::Buffers {
                core: BufferCoreWeights::Unfused(selection),
                operands: BufferPair { proj, concat },
                ..
            } => {
                let (buffers, core_maps) = unfused_core(
                    ctx,
                    c,
                    &layout,
                    proj,
                    *selection,
                    concat,
                    &mut self.dispatches,
                )
                .await?;
                self.held.buffers.extend(buffers);
                maps = Some(core_maps);
            }
            Wiring::Buffers {
                core: BufferCoreWeights::Cached { plan: cached, mlp },
                operands: BufferPair { proj, concat },
                ..
            } => {
                // The one pairing the plan cannot type: its KV cache's buffers belong to the
                // `KvCache` that resolved it, which passes them (`layer::generation`).
                let cache = cache.ok_or(crate::Error::InvalidConfig {
                    field: "execution plan",
                    value: String::new(),
                    reason: "a cached plan is built with the KV cache it was resolved for",
                })?;
                let retrieved = self.retrieved_for_mlp(mlp.as_ref())?;
                let out = ops::decode::AttentionOut::of(retrieved.as_ref(), concat);
                let step =
                    ops::decode::bind(ctx, &layout, cached, scale, proj, IoSlot::Mask, cache, out)
                        .await?;
                self.dispatches.extend(step.dispatches);
                self.held.buffers.extend(step.partials);
                self.mlp_selection(mlp.as_ref(), retrieved, proj, concat)
                    .await?;
                // The length update goes after everything that reads the length.
                finish = Some(step.advance);
            }
            Wiring::Buffers {
                core: BufferCoreWeights::Memory { plan: memory, mlp },
                operands: BufferPair { proj, concat },
                ..
            } => {
                // As a cached plan's cache, a memory plan's memory is passed by the `Memory`
                // that resolved it (`layer::cross`).
                let memory_buffers = cache.ok_or(crate::Error::InvalidConfig {
                    field: "execution plan",
                    value: String::new(),
                    reason: "a memory plan is built with the memory it was resolved for",
                })?;
                let retrieved = self.retrieved_for_mlp(mlp.as_ref())?;
                let out = ops::decode::AttentionOut::of(retrieved.as_ref(), concat);
                let attended = ops::decode::bind_attention(
                    ctx,
                    &layout,
                    memory,
                    scale,
                    proj,
                    memory_buffers,
                    out,
                )
                .await?;
                self.dispatches.extend(attended.dispatches);
                self.held.buffers.extend(attended.partials);
                self.mlp_selection(mlp.as_ref(), retrieved, proj, concat)
                    .await?;
            }
        }
        Ok((finish, maps))
    }

    /// Where the split-KV or fused core stores its retrieved values `[b, s, n, r·d]` for an MLP
    /// score network to select from (`None`: it selects by the dot product itself).
    fn retrieved_for_mlp(&self, mlp: Option<&MlpWeights<'_>>) -> Result<Option<wgpu::Buffer>> {
        let (c, layout) = (self.config, self.layout);
        mlp.map(|_| {
            memory::storage(
                self.ctx,
                "retrieved",
                &[layout.batch, c.num_searches, layout.seq, c.value_width()],
                None,
            )
        })
        .transpose()
    }

    /// The MLP score network's selection from `retrieved` into the concatenation, after the
    /// split-KV or fused core (nothing without one).
    async fn mlp_selection(
        &mut self,
        mlp: Option<&MlpWeights<'_>>,
        retrieved: Option<wgpu::Buffer>,
        proj: &wgpu::Buffer,
        concat: &wgpu::Buffer,
    ) -> Result<()> {
        let (Some(mlp), Some(retrieved)) = (mlp, retrieved) else {
            return Ok(());
        };
        let (ctx, c, layout) = (self.ctx, self.config, self.layout);
        let g_scratch = memory::storage(
            ctx,
            "retrieval logits",
            &[layout.batch, c.num_searches, layout.seq, c.num_retrievals],
            None,
        )?;
        self.dispatches.push(
            ops::retrieval_select::dispatch(
                ctx,
                &layout,
                ops::retrieval_select::Selection::Mlp(*mlp),
                &retrieved,
                proj,
                &g_scratch,
                concat,
            )
            .await?,
        );
        self.held.buffers.extend([retrieved, g_scratch]);
        Ok(())
    }

    /// The mean of the values `[b, r·d]`, which the fused and blocked cores' fully masked rows
    /// read.
    async fn value_mean(&mut self, wiring: &Wiring<'_>) -> Result<wgpu::Buffer> {
        let (ctx, c, layout) = (self.ctx, self.config, self.layout);
        let value_mean =
            memory::storage(ctx, "value mean", &[layout.batch, c.value_width()], None)?;
        let stored = self.plan.intermediates();
        self.dispatches.push(
            ops::value_mean::dispatch(ctx, &layout, wiring.proj(), stored, &value_mean).await?,
        );
        Ok(value_mean)
    }

    /// The keys and values of the queries' own projections, with the layer's mask and
    /// `causal`.
    fn own_keys<'v>(&self, value_mean: &'v wgpu::Buffer) -> KeyValues<'v> {
        KeyValues::Own {
            causal: self.config.causal,
            mask: IoSlot::Mask.into(),
            value_mean,
        }
    }

    /// The fused core's dispatches (with the carry between key chunks where the plan splits
    /// the keys).
    async fn fused(
        &mut self,
        fused: &FusedPlan,
        io: FusedIo<'_>,
        keys_values: KeyValues<'_>,
    ) -> Result<()> {
        let (ctx, c) = (self.ctx, self.config);
        let layout = self.layout;
        let carry = Carry::for_plan(ctx, &layout, fused)?;
        self.dispatches.extend(
            ops::fused_attention::dispatches(
                ctx,
                &layout,
                fused,
                c.scale() as f32,
                io,
                keys_values,
                carry.as_ref(),
            )
            .await?,
        );
        self.held.buffers.extend(
            carry
                .map(|carry| [carry.acc, carry.stats])
                .into_iter()
                .flatten(),
        );
        Ok(())
    }

    /// Step 4, the output projection of the concatenation into the caller's output, and its bias.
    async fn output(&mut self, wiring: &Wiring<'_>) -> Result<()> {
        let (ctx, c, plan) = (self.ctx, self.config, self.plan);
        let layout = self.layout;
        let tokens = layout.batch * layout.seq;
        let stored = plan.intermediates();
        let output = Rows::Buffer(Buf::Io(IoSlot::Output));
        let operands = match wiring {
            Wiring::Texels { gemm, operands, .. } => GemmOperands::Texels {
                kernel: gemm.output,
                lhs: &operands.concat,
                rhs: gemm.out,
                out: output,
                out_precision: Precision::F32,
            },
            // A texel GEMM of buffer operands reads a texel copy of the concatenation.
            Wiring::Buffers {
                gemm: GemmWeights::Texels(gemm),
                operands,
                ..
            } => {
                let copy = self
                    .texel_copy(
                        ((&operands.concat).into(), stored),
                        tokens,
                        c.search_width(),
                    )
                    .await?;
                GemmOperands::Texels {
                    kernel: gemm.output,
                    lhs: &self.held.texels[copy],
                    rhs: gemm.out,
                    out: output,
                    out_precision: Precision::F32,
                }
            }
            Wiring::Buffers {
                gemm: GemmWeights::Buffers { tiling, out, .. },
                operands,
                ..
            } => GemmOperands::Buffers {
                tiling: *tiling,
                shape: GemmShape {
                    m: tokens,
                    n: c.dim,
                    k: c.search_width(),
                },
                precision: GemmPrecision {
                    lhs: stored,
                    rhs: plan.precision(),
                    out: Precision::F32,
                },
                lhs: (&operands.concat).into(),
                rhs: out,
                out: Buf::Io(IoSlot::Output),
            },
        };
        self.dispatches
            .extend(ops::gemm::dispatches(ctx, operands).await?);
        if let Wiring::Buffers {
            biases: Some(biases),
            ..
        } = wiring
        {
            self.dispatches.push(
                ops::bias_add::dispatch(
                    ctx,
                    tokens,
                    c.dim,
                    biases.out,
                    IoSlot::Output,
                    Precision::F32,
                )
                .await?,
            );
        }
        Ok(())
    }
}
