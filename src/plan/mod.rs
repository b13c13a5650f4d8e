//! The execution plan: which kernels run one forward shape on one device, with which tiles, in
//! which storage, over which key ranges, and which weights they read. It is decided here and
//! nowhere else; the layer, the workspace, `compattn bench`, the criterion benches and the kernel
//! tests all take an [`ExecutionPlan`] (or one of its parts) and only carry it out.
//!
//! The inputs are facts: the adapter (device type, backend, limits, the driver's loop cap), the
//! kernel family the context was asked for ([`KernelFamilyRequest`](crate::gpu::KernelFamilyRequest)), the layer's [`Config`], the
//! [`Strategy`] and the shape. Resolution never allocates, so a plan can be inspected
//! ([`CompositionalAttention::plan`](crate::CompositionalAttention::plan)) before anything runs.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::split_for_loop_budget;

use crate::dropout::Dropout;
pub(crate) use crate::ops::kernel_params::vector_width;
pub use crate::ops::kernel_params::{
    BlockedPlan, CachedPlan, FusedPlan, FusedTiling, GemmTiling, OperandStorage, TexelGemmKernel,
};
use crate::ops::{ProjectionLayout, matmul};
use crate::precision::Precision;

pub(crate) mod tuned;

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

/// What to do when the unfused core's `b·s·n²` search logits and weights do not fit: true of a
/// plain unfused forward, of an MLP score network (which only the unfused core runs) and of the
/// attention maps (read from those buffers).
pub(crate) const UNFUSED_SIZE_HINT: &str = "the unfused strategy stores b·s·n² search logits and \
     weights (attention maps and an MLP score network need it): use fewer batch rows or a shorter \
     sequence, or the fused strategy (Strategy::Fused, the default), which needs no such buffer, \
     where the layer allows it";

/// WGSL implementations may cap function-scope memory at 8 KiB per invocation (Tint does);
/// the fused kernel's per-invocation registers (queries, accumulators, scores) stay within it.
const PRIVATE_BUDGET_BYTES: usize = 8192;

/// Which family of kernel variants runs (resolved from [`KernelFamilyRequest`](crate::gpu::KernelFamilyRequest)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFamily {
    /// CPU drivers (lavapipe, llvmpipe, SwiftShader) run invocations as SIMD lanes: register
    /// blocks, lane-uniform loads, texel operands.
    Cpu,
    /// GPUs: workgroup-memory tiles and many small invocations.
    Gpu,
}

impl KernelFamily {
    /// `Cpu` on CPU adapters (or when forced), `Gpu` otherwise.
    pub fn of(ctx: &GpuContext) -> KernelFamily {
        match ctx.cpu_kernels() {
            true => KernelFamily::Cpu,
            false => KernelFamily::Gpu,
        }
    }
}

/// How training computes the attention core (ARCHITECTURE decision 17): its kept activations
/// are the same either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrainingCore {
    /// FlashAttention-2's kernels, one row (or key) per invocation, nothing `n`-sized beyond
    /// the activations (`ops::attention_train`): GPUs.
    PerRow,
    /// The scores of a chunk of query rows as a GEMM, the softmax or its gradient elementwise,
    /// and GEMMs again, through a bounded scratch (`ops::attention_chunks`): CPU drivers, where
    /// a register-blocked GEMM is about 20 times faster than the per-row loops.
    Chunked,
}

impl TrainingCore {
    /// `Chunked` in the CPU kernel family, `PerRow` in the GPU family.
    pub fn of(ctx: &GpuContext) -> TrainingCore {
        match KernelFamily::of(ctx) {
            KernelFamily::Cpu => TrainingCore::Chunked,
            KernelFamily::Gpu => TrainingCore::PerRow,
        }
    }

    /// Where the training forward runs the eval forward's blocked core instead of the chunked
    /// one: a `Chunked` device, the blocked core's conditions ([`BlockedPlan::resolve`]) and no
    /// dropout drawn (`p = 0` or none: the blocked kernel draws no masks), and a texel copy of
    /// the projections that fits the device. It writes the same activations, and ran the
    /// target row's training forward in about half the chunked core's time on lavapipe
    /// (BENCHMARKS.md, Training); the backward is the chunked one either way.
    pub(crate) fn blocked_forward(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        dropout: Option<Dropout>,
    ) -> Option<BlockedPlan> {
        let drawn = dropout.is_some_and(|d| d.p() > 0.0);
        // The kernel reads a texel copy of the projections.
        let tokens = layout.batch * layout.seq;
        let copy_fits = matmul::fits(ctx, tokens, layout.row_stride);
        match (TrainingCore::of(ctx), drawn, copy_fits) {
            (TrainingCore::Chunked, false, true) => BlockedPlan::resolve(ctx, layout),
            _ => None,
        }
    }
}

impl OperandStorage {
    /// The storage of GEMM operands (weights included): texels in the CPU family on every
    /// backend but GL, where `textureLoad` of `rgba32float` array textures in compute shaders
    /// returned zeros on llvmpipe; buffers everywhere else.
    pub fn of_operands(ctx: &GpuContext) -> OperandStorage {
        if KernelFamily::of(ctx) == KernelFamily::Cpu && ctx.texel_loads_work() {
            OperandStorage::Texels
        } else {
            OperandStorage::Buffers
        }
    }
}

/// The name [`OperandStorage`] had before it was renamed (it shared a name with the HDF5
/// reader's data layout).
#[deprecated(note = "renamed plan::OperandStorage")]
pub type Storage = OperandStorage;

/// Which GEMM kernels compute the projections, and the storage of their operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmPlan {
    /// Both operands texel rows; the texel kernel of each GEMM is chosen for its row count.
    Texels {
        /// The input projection's kernel.
        input: TexelGemmKernel,
        /// The output projection's kernel.
        output: TexelGemmKernel,
    },
    /// `gemm.wgsl` or `gemm_tiled.wgsl` on storage buffers.
    Buffers(GemmTiling),
}

impl GemmPlan {
    /// The GEMMs of this device for `rows` rows: texels where operands are texels (an f16
    /// layer's weights as `rgba16float` texels), else the family's buffer kernel. The storage
    /// precision does not change the kernel: texel fetches and buffer loads widen to f32 either
    /// way. `input_k` and `output_k` are the reductions of the input and output projections;
    /// `core` is the storage of the core's operands (texel projections are the input GEMM's
    /// output).
    pub fn of(
        ctx: &GpuContext,
        rows: usize,
        input_k: usize,
        output_k: usize,
        core: OperandStorage,
    ) -> GemmPlan {
        match (OperandStorage::of_operands(ctx), KernelFamily::of(ctx)) {
            (OperandStorage::Texels, _) => GemmPlan::Texels {
                input: texel_gemm_kernel(ctx, rows, input_k, core == OperandStorage::Texels),
                output: texel_gemm_kernel(ctx, rows, output_k, false),
            },
            (OperandStorage::Buffers, _) => GemmPlan::Buffers(buffer_gemm_tiling(ctx)),
        }
    }

    /// The storage of the operands.
    pub fn storage(&self) -> OperandStorage {
        match self {
            GemmPlan::Texels { .. } => OperandStorage::Texels,
            GemmPlan::Buffers(_) => OperandStorage::Buffers,
        }
    }
}

/// The buffer GEMM of the device's family: register-blocked for CPU drivers, workgroup tiles
/// for GPUs. Also a memory's projection (`crate::cross_memory`), whose operands are buffers.
pub(crate) fn buffer_gemm_tiling(ctx: &GpuContext) -> GemmTiling {
    match KernelFamily::of(ctx) {
        KernelFamily::Cpu => GemmTiling::REGISTER,
        KernelFamily::Gpu => GemmTiling::TILED,
    }
}

/// Rows up to which the texel GEMV runs instead of the blocked texel GEMM (a buffer output,
/// and `K` within the driver's loop budget in one pass). With it, a one-token decode step at
/// N = 2048 went from 15–18 to 7–10 ms on lavapipe, where the blocked kernel's input projection
/// alone took 5.6 ms (BENCHMARKS.md, decode).
const GEMV_MAX_ROWS: usize = 8;

/// The texel GEMM kernel for `m` rows and a reduction of `k` columns: the GEMV for a few rows
/// with a buffer output and `K` within the driver's loop budget in one pass, else the blocked
/// kernel.
pub(crate) fn texel_gemm_kernel(
    ctx: &GpuContext,
    m: usize,
    k: usize,
    out_texels: bool,
) -> TexelGemmKernel {
    let k_texels = k.div_ceil(4).max(1);
    let fits = ctx
        .loop_budget()
        .is_none_or(|budget| (k_texels as u64) < budget);
    if m <= GEMV_MAX_ROWS && fits && !out_texels {
        TexelGemmKernel::Vector
    } else {
        TexelGemmKernel::Blocked
    }
}

impl FusedTiling {
    fn private_bytes(&self, head: usize, retrievals: usize) -> usize {
        let per_query = head + retrievals * head + 2 * self.bk as usize + 4;
        4 * (self.qpi as usize * per_query + retrievals)
    }

    fn workgroup_bytes(&self, head: usize, retrievals: usize) -> u64 {
        if !self.stage {
            return 0;
        }
        4 * self.bk as u64 * (head as u64 * (1 + retrievals as u64) + 1)
    }

    /// The tiling for this device and head size: in the CPU family, direct reads, one query
    /// per lane (more queries per lane measured no faster on lavapipe, where the per-lane
    /// arrays they need cost what they save, and compiled far slower); in the GPU family,
    /// staged tiles of the largest key count that fits workgroup memory. An explicit tiling
    /// (`COMPATTN_FUSED_TILING=wg,qpi,bk,stage`, for experiments) is checked instead.
    pub fn choose(ctx: &GpuContext, head: usize, retrievals: usize) -> Result<Self> {
        if let Ok(value) = std::env::var("COMPATTN_FUSED_TILING")
            && !value.is_empty()
        {
            return FusedTiling::parse(&value)?.check(ctx, head, retrievals);
        }
        let mut tiling = match KernelFamily::of(ctx) {
            KernelFamily::Cpu => FusedTiling {
                wg: 8,
                qpi: 1,
                bk: 16,
                stage: false,
            },
            KernelFamily::Gpu => FusedTiling {
                wg: 64,
                qpi: 1,
                bk: 32,
                stage: true,
            },
        };
        let workgroup_limit = ctx.limits().max_compute_workgroup_storage_size as u64;
        while tiling.stage && tiling.workgroup_bytes(head, retrievals) > workgroup_limit {
            if tiling.bk > 4 {
                tiling.bk /= 2;
            } else {
                tiling.stage = false;
                tiling.bk = 16;
            }
        }
        while tiling.qpi > 1 && tiling.private_bytes(head, retrievals) > PRIVATE_BUDGET_BYTES {
            tiling.qpi /= 2;
        }
        tiling.check(ctx, head, retrievals)
    }

    /// Fails with [`Error::LimitExceeded`] if the tiling cannot run on this device.
    pub fn check(self, ctx: &GpuContext, head: usize, retrievals: usize) -> Result<Self> {
        let limits = ctx.limits();
        let hint = Some("the unfused strategy (Strategy::Unfused) has no such limit");
        if self.wg > limits.max_compute_invocations_per_workgroup
            || self.wg > limits.max_compute_workgroup_size_x
        {
            return Err(Error::LimitExceeded {
                what: "fused attention workgroup".into(),
                required: self.wg as u64,
                limit: limits
                    .max_compute_invocations_per_workgroup
                    .min(limits.max_compute_workgroup_size_x) as u64,
                limit_name: "max_compute_invocations_per_workgroup",
                hint,
            });
        }
        let workgroup = self.workgroup_bytes(head, retrievals);
        if workgroup > limits.max_compute_workgroup_storage_size as u64 {
            return Err(Error::LimitExceeded {
                what: "fused attention key tile".into(),
                required: workgroup,
                limit: limits.max_compute_workgroup_storage_size as u64,
                limit_name: "max_compute_workgroup_storage_size",
                hint,
            });
        }
        let private = self.private_bytes(head, retrievals);
        if ctx.info().backend == wgpu::Backend::BrowserWebGpu && private > PRIVATE_BUDGET_BYTES {
            return Err(Error::LimitExceeded {
                what: format!(
                    "fused attention registers for dim_head {head}, {retrievals} retrievals"
                ),
                required: private as u64,
                limit: PRIVATE_BUDGET_BYTES as u64,
                limit_name: "WGSL function-scope memory (8 KiB in browsers)",
                hint,
            });
        }
        Ok(self)
    }
}

impl FusedPlan {
    /// Resolves the fused kernel for `layout` with `storage` (the caller's choice: the layer
    /// passes [`CorePlan`]'s, kernel tests pass either).
    pub(crate) fn resolve(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        tiling: FusedTiling,
        storage: OperandStorage,
    ) -> Result<FusedPlan> {
        if storage == OperandStorage::Texels && !layout.head.is_multiple_of(4) {
            return Err(Error::InvalidConfig {
                field: "dim_head",
                value: layout.head.to_string(),
                reason: "texel operands of the fused kernel need dim_head % 4 == 0",
            });
        }
        let v = vector_width(layout.head) as u64;
        let (q, bk, wg) = (tiling.qpi as u64, tiling.bk as u64, tiling.wg as u64);
        let (dv, r) = (layout.head as u64 / v, layout.retrievals as u64);
        let vwv = r * dv;
        // Loop iterations, counting every loop as if the compiler unrolled none of them.
        let per_key = 2 + 2 * q + (dv + vwv) * (1 + q);
        let per_tile = 2 * q + q * (1 + bk + vwv) + (bk * (dv + vwv + 1)).div_ceil(wg) + 3;
        let fixed = q * (2 + dv + 2 * vwv) + q * (r * (1 + dv) + r + dv * (1 + r)) + 16;
        let key_chunks = split_for_loop_budget(
            ctx,
            "fused attention",
            layout.seq,
            per_key + per_tile.div_ceil(bk),
            fixed,
            tiling.bk as usize,
        )?;
        Ok(FusedPlan {
            tiling,
            storage,
            key_chunks,
            stores_retrieved: false,
        })
    }
}

impl BlockedPlan {
    /// The blocked core where it can run: texel operands, heads on texel boundaries, and the
    /// whole key range in one dispatch under the driver's loop budget (the key loop has one
    /// iteration per 16 keys plus the head loop for the key blocks a slice scores, so this holds
    /// below tens of thousands of keys). Its block width and slices are the built-in ones; a
    /// tuned choice replaces them in [`ExecutionPlan::resolve`] (`plan::tuned`).
    pub(crate) fn resolve(ctx: &GpuContext, layout: &ProjectionLayout) -> Option<BlockedPlan> {
        let block_texels = blocked_block_texels(layout);
        let blocks = (layout.retrievals * layout.head).div_ceil(4 * block_texels);
        Self::fitting(ctx, layout, block_texels, blocked_slices(blocks))
    }

    /// The blocked core with `block_texels` value texels per lane and `slices` slices, where it
    /// can run (see [`BlockedPlan::resolve`]).
    pub(crate) fn fitting(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        block_texels: usize,
        slices: usize,
    ) -> Option<BlockedPlan> {
        // A slice scores its key blocks of a tile in one head loop (two with three slices).
        let head_loops = match slices {
            3 => 2,
            _ => 1,
        };
        let dv = layout.head as u64 / 4;
        let fits = OperandStorage::of_operands(ctx) == OperandStorage::Texels
            && layout.head.is_multiple_of(4)
            && [4, 8, 16].contains(&block_texels)
            && (1..=BLOCKED_MAX_SLICES).contains(&slices)
            && split_for_loop_budget(
                ctx,
                "blocked attention",
                layout.seq,
                1 + (dv * head_loops).div_ceil(16),
                // Outside the key loop: the stores' loops, four rows for each of 4 query blocks
                // × up to 16 value texels, and the statistics' (4 × 4).
                272,
                16,
            )
            .is_ok_and(|chunks| chunks.len() == 1);
        fits.then_some(BlockedPlan {
            block_texels,
            slices,
        })
    }
}

/// Most slices (groups of 8 lanes) of one blocked-core workgroup: 8 × 64 value columns, so the
/// paper's 8 × 8 layer at `d = 64` (`r·d = 512`) scores each key once. 64 invocations and
/// 8 KiB of workgroup memory (scores of 16 queries per lane), within WebGPU's 16 KiB default.
pub(crate) const BLOCKED_MAX_SLICES: usize = 8;

/// Slices of the blocked core for `blocks` blocks of value columns: all of them, up to
/// [`BLOCKED_MAX_SLICES`]; past that, as few groups as that allows, balanced (9 blocks: two
/// groups of 5 slices, not 8 and 1 with 7 slices on no columns). `COMPATTN_BLOCKED_SLICES=N`
/// caps them instead, for experiments (`1` is the core before slices: one workgroup per block,
/// scores recomputed per block).
fn blocked_slices(blocks: usize) -> usize {
    balanced_slices(blocks, blocked_slices_cap().unwrap_or(BLOCKED_MAX_SLICES))
}

/// `COMPATTN_BLOCKED_SLICES`, where set to a positive number: an experiment's cap, which also
/// turns tuning of the blocked core off (`plan::tuned`).
pub(crate) fn blocked_slices_cap() -> Option<usize> {
    std::env::var("COMPATTN_BLOCKED_SLICES")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|&cap| cap >= 1)
        .map(|cap| cap.min(BLOCKED_MAX_SLICES))
}

/// Slices for `blocks` blocks of value columns with at most `cap` per group, the groups
/// balanced (see [`blocked_slices`]).
pub(crate) fn balanced_slices(blocks: usize, cap: usize) -> usize {
    let blocks = blocks.max(1);
    blocks.div_ceil(blocks.div_ceil(cap.clamp(1, BLOCKED_MAX_SLICES)))
}

/// Value texels per block (per lane) of the blocked core. Before blocks shared their scores
/// (slices), scores were recomputed once per block, so wider blocks did less arithmetic: at
/// `r·d = 128` a block of 16 texels (64 columns) ran the scores twice where 8 texels ran them
/// four times, and measured 1.6× faster on lavapipe despite holding twice the accumulators.
/// Narrow values take the smallest block that covers them.
pub(crate) fn blocked_block_texels(layout: &ProjectionLayout) -> usize {
    match layout.retrievals * layout.head {
        64.. => 16,
        32.. => 8,
        _ => 4,
    }
}

impl CachedPlan {
    /// Splits for `layout.seq` new queries over a cache of `capacity` positions. Each split
    /// holds as many keys as fit the driver's loop budget at most; within that, a decode step
    /// (few query rows) takes enough splits for the device to run them in parallel (256
    /// invocations in the CPU family, 4096 on a GPU; at least 32 keys per split), while a
    /// prefill chunk (many query rows, already parallel) takes as few as the budget allows, so
    /// its partials stay small.
    pub(crate) fn resolve(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        capacity: usize,
    ) -> Result<Self> {
        let v = vector_width(layout.head) as u64;
        let (dv, vwv) = (
            layout.head as u64 / v,
            (layout.retrievals * layout.head) as u64 / v,
        );
        let per_key = 2 + dv + vwv;
        let budget_keys = match ctx.loop_budget() {
            Some(budget) => (budget.saturating_sub(dv + 2 * vwv + 8) / per_key) as usize,
            None => usize::MAX,
        };
        if budget_keys == 0 {
            return Err(Error::LimitExceeded {
                what: "decode attention: loop iterations per key".into(),
                required: per_key,
                limit: ctx.loop_budget().unwrap_or(0),
                limit_name: "the driver's loop-iteration cap (GpuContext::loop_budget)",
                hint: Some("a smaller dim_head · num_retrievals"),
            });
        }
        let capacity = capacity.max(1);
        let rows = layout.batch * layout.searches * layout.seq;
        let target: usize = match KernelFamily::of(ctx) {
            KernelFamily::Cpu => 256,
            KernelFamily::Gpu => 4096,
        };
        let fewest = capacity.div_ceil(budget_keys.min(capacity));
        let wanted = target.div_ceil(rows.max(1)).min(capacity.div_ceil(32));
        let keys_per_split = capacity.div_ceil(fewest.max(wanted).max(1));
        Ok(CachedPlan {
            capacity,
            keys_per_split,
            splits: capacity.div_ceil(keys_per_split),
        })
    }
}

/// How the attention core (search, retrieval, selection) runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorePlan {
    /// The fused core in 4 × 4 blocks for CPU drivers, then a selection kernel.
    Blocked(BlockedPlan),
    /// The general fused kernel: online softmax, selection in its epilogue.
    Fused(FusedPlan),
    /// Logits, softmax, aggregation and selection, each a kernel; `b·s·n²` logits stored.
    Unfused,
    /// New queries over a KV cache, split-KV (prefill and decode); an MLP score network's
    /// selection (`Config::selection_mlp`) runs after it (`retrieval_select`).
    Cached(SplitKvPlan),
    /// Queries over a [`Memory`](crate::Memory) with the blocked core, where the layer's
    /// self-attention runs it (an unbiased layer without the MLP score network, heads of whole
    /// texels, on a CPU driver, the memory within the core's loop budget) and at least
    /// [`BLOCKED_MEMORY_MIN_QUERIES`] query rows attend: the memory also holds its keys and
    /// values as texel rows (`ops::key_values::MemoryRows`), made once.
    BlockedMemory(BlockedPlan),
    /// Queries over a [`Memory`](crate::Memory) with the general fused kernel reading its cache
    /// buffers, where the core reads buffers (the GPU family; biased layers on CPU drivers),
    /// the selection is the dot product and at least [`BLOCKED_MEMORY_MIN_QUERIES`] query rows
    /// attend. Its key chunks cover the memory's positions.
    FusedMemory(FusedPlan),
    /// Queries over a [`Memory`](crate::Memory) (cross-attention, or self-attention with extra
    /// key rows) everywhere else: the cached core's split-KV attention over the memory's projected keys and
    /// values, which nothing appends to; an MLP score network's selection
    /// (`Config::selection_mlp`) runs after it (`retrieval_select`).
    Memory(SplitKvPlan),
}

/// Query rows per sequence from which a memory is attended with the blocked core
/// ([`CorePlan::BlockedMemory`]) or the fused kernel ([`CorePlan::FusedMemory`]); fewer rows (a
/// decode step) take the split-KV core, whose splits spread a few rows over the device while
/// the other cores' query tiles would stand mostly idle. Measured on lavapipe over a memory of 512 (dim 512, d 64, s 8, r 2; `compattn
/// bench --cross --seq N --memory-seq 512 --no-bias`): at 1 row 2.9 ms split-KV against 7.7
/// blocked, at 8 rows about 12 ms both, at 16 rows 13.3 against 9.6, at 64 rows 42.7 against
/// 12.9.
pub const BLOCKED_MEMORY_MIN_QUERIES: usize = 8;

/// The core that attends a memory from [`BLOCKED_MEMORY_MIN_QUERIES`] query rows
/// ([`ExecutionPlan::memory_core`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemoryCore {
    /// The blocked core over the memory's texel rows.
    Blocked(BlockedPlan),
    /// The fused kernel over the memory's cache buffers (key chunks over its positions).
    Fused(FusedPlan),
}

/// The split-KV core's parameters (over a KV cache or a memory): the splits over the stored
/// positions, and whether an MLP score network selects after it (`decode_reduce` stores the
/// retrieved values, `retrieval_select` reads them with the plain retrieval queries, not
/// `RQ·W_rk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitKvPlan {
    pub splits: CachedPlan,
    pub mlp_selection: bool,
}

/// The name [`SplitKvPlan`] had while only a memory's core used it.
#[deprecated(note = "renamed plan::SplitKvPlan")]
pub type MemoryPlan = SplitKvPlan;

/// The error for a layer with a memory or extra key rows asked for a plan of self-attention
/// without them (`what`: the operation).
pub(crate) fn refuse_memory_layer(c: &Config, what: &str) -> Error {
    let problem = match c.runs_self_attention() {
        false => {
            "a cross-attention layer (encoder-decoder attention, or key and value inputs not as \
             wide as its queries') attends a memory: make one with \
             CompositionalAttention::memory (or memory_kv) and call forward_cross"
        }
        true => {
            "a layer with extra key rows (add_bias_kv, add_zero_attn) runs forward (and, with \
             Config::memory, forward_cross) only"
        }
    };
    Error::MemoryMismatch(format!("{what}: {problem}"))
}

impl CorePlan {
    /// A short name for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            CorePlan::Blocked(_) => "blocked",
            CorePlan::Fused(_) => "fused",
            CorePlan::Unfused => "unfused",
            CorePlan::Cached(_) => "cached",
            CorePlan::BlockedMemory(_) => "blocked memory",
            CorePlan::FusedMemory(_) => "fused memory",
            CorePlan::Memory(_) => "memory",
        }
    }
}

/// The GEMMs and the core of a plan, paired by where the core's operands (the projections it
/// reads, the concatenation it writes) live. Only the pairs the kernels accept can be written:
///
/// * texel operands come with texel GEMMs on both sides (the input GEMM writes them, the output
///   GEMM reads them) and never with biases ([`ops::bias_add`](crate::ops) adds to buffers), and
///   only the blocked core and the fused core on texels read them;
/// * buffer operands are read by the fused, unfused and cached cores, with buffer GEMMs or with
///   texel GEMMs whose operands are copied into texel rows.
///
/// The workspace and the device weights match on this one value, so a core is never paired with
/// a GEMM or storage it cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Projections and concatenation in texel rows (an unbiased layer on a texel device: f32,
    /// or f16 for the blocked cores).
    Texels {
        /// The input projection's texel kernel (it writes texel rows, so never the GEMV).
        input: TexelGemmKernel,
        /// The output projection's texel kernel.
        output: TexelGemmKernel,
        core: TexelCore,
    },
    /// Projections and concatenation in buffers of the plan's intermediate precision.
    Buffers { gemm: GemmPlan, core: BufferCore },
}

/// A core that reads texel operands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TexelCore {
    Blocked(BlockedPlan),
    /// The blocked core over a memory's texel rows.
    BlockedMemory(BlockedPlan),
    /// The fused core with `storage` [`OperandStorage::Texels`].
    Fused(FusedPlan),
}

/// A core that reads buffer operands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BufferCore {
    /// The fused core with `storage` [`OperandStorage::Buffers`].
    Fused(FusedPlan),
    /// The fused core over a memory's cache buffers.
    FusedMemory(FusedPlan),
    Unfused,
    Cached(SplitKvPlan),
    Memory(SplitKvPlan),
}

impl Route {
    /// The texel route of `core` for `rows` rows of `config`.
    fn texels(ctx: &GpuContext, config: &Config, rows: usize, core: TexelCore) -> Route {
        Route::Texels {
            input: texel_gemm_kernel(ctx, rows, config.dim, true),
            output: texel_gemm_kernel(ctx, rows, config.search_width(), false),
            core,
        }
    }

    /// The buffer route of `core` for `rows` rows of `config`: the device's GEMM.
    fn buffers(ctx: &GpuContext, config: &Config, rows: usize, core: BufferCore) -> Route {
        Route::Buffers {
            gemm: GemmPlan::of(
                ctx,
                rows,
                config.dim,
                config.search_width(),
                OperandStorage::Buffers,
            ),
            core,
        }
    }
}

/// The input projection weights a plan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProjectionWeights {
    /// `[W_sq; W_sk; W_rq; W_rv]`: the projections as SPEC writes them (unfused core).
    Plain,
    /// `[W_sq; W_sk; W_q̃; W_rv]` with `W_q̃ = W_rkᵀ·W_rq` per search, so that the GEMM yields
    /// `Q̃ = RQ·W_rk` directly and the fused cores' retrieval logits are `Q̃·Ret` (SPEC §2.4).
    RetrievalFolded,
}

/// Everything one forward of one shape runs, decided from the device, the configuration and
/// the shape. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionPlan {
    /// Batch size.
    batch: usize,
    /// Sequence length.
    seq: usize,
    /// The strategy asked for.
    strategy: Strategy,
    /// The layer's storage precision: of its weights, its KV cache and, in the fused and
    /// cached cores, of the projections and the concatenated searches
    /// ([`ExecutionPlan::intermediates`]).
    precision: Precision,
    /// The kernel family.
    family: KernelFamily,
    /// The GEMMs of both projections and the attention core, paired by the storage of the
    /// core's operands.
    route: Route,
}

impl ExecutionPlan {
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Sequence length (new tokens, for a cached plan).
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The strategy asked for.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The layer's storage precision: of its weights, its KV cache and, in the fused and cached
    /// cores, of the projections and the concatenated searches
    /// ([`ExecutionPlan::intermediates`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The kernel family.
    pub fn family(&self) -> KernelFamily {
        self.family
    }

    /// The GEMMs of both projections, and the storage of their operands and weights.
    pub fn gemm(&self) -> GemmPlan {
        match &self.route {
            Route::Texels { input, output, .. } => GemmPlan::Texels {
                input: *input,
                output: *output,
            },
            Route::Buffers { gemm, .. } => *gemm,
        }
    }

    /// The attention core.
    pub fn core(&self) -> CorePlan {
        match &self.route {
            Route::Texels { core, .. } => match core {
                TexelCore::Blocked(blocked) => CorePlan::Blocked(*blocked),
                TexelCore::BlockedMemory(blocked) => CorePlan::BlockedMemory(*blocked),
                TexelCore::Fused(fused) => CorePlan::Fused(fused.clone()),
            },
            Route::Buffers { core, .. } => match core {
                BufferCore::Fused(fused) => CorePlan::Fused(fused.clone()),
                BufferCore::FusedMemory(fused) => CorePlan::FusedMemory(fused.clone()),
                BufferCore::Unfused => CorePlan::Unfused,
                BufferCore::Cached(cached) => CorePlan::Cached(*cached),
                BufferCore::Memory(memory) => CorePlan::Memory(*memory),
            },
        }
    }

    /// The GEMMs and the core, paired by the storage of the core's operands.
    pub(crate) fn route(&self) -> &Route {
        &self.route
    }

    /// Resolves the plan for `config` at `batch × seq` with `strategy` on `ctx`. Fails with a
    /// typed error when no kernel of the strategy can run the problem here. Where the context
    /// holds a tiling measured for the shape class ([`GpuContext::tune_mode`], ARCHITECTURE
    /// decision 20) and it is still one of the class's candidates, the plan takes it; the same
    /// call can therefore give another tiling after a layer on this context has tuned.
    pub fn resolve(
        ctx: &GpuContext,
        config: &Config,
        precision: Precision,
        strategy: Strategy,
        batch: usize,
        seq: usize,
    ) -> Result<ExecutionPlan> {
        Self::resolve_tiled(
            ctx,
            config,
            precision,
            strategy,
            (batch, seq),
            tuned::Tiling::Stored,
        )
    }

    /// [`ExecutionPlan::resolve`] with the core's tiling from `tiling`: the context's stored
    /// choice, or a candidate the tuner is timing (which the store never sees, so other layers
    /// on the context do not run it).
    pub(crate) fn resolve_tiled(
        ctx: &GpuContext,
        config: &Config,
        precision: Precision,
        strategy: Strategy,
        shape: (usize, usize),
        tiling: tuned::Tiling<'_>,
    ) -> Result<ExecutionPlan> {
        let resolve = |tiling| Self::resolve_with(ctx, config, precision, strategy, shape, tiling);
        match (resolve(tiling), tiling) {
            (Ok(plan), _) => Ok(plan),
            (Err(error), tuned::Tiling::BuiltIn) => Err(error),
            // A class spans shapes up to the next powers of two: a tiling measured on a shorter
            // one may split keys, or need a buffer, that the built-in one does not here.
            (Err(_), _) => resolve(tuned::Tiling::BuiltIn),
        }
    }

    fn resolve_with(
        ctx: &GpuContext,
        config: &Config,
        precision: Precision,
        strategy: Strategy,
        (batch, seq): (usize, usize),
        tiling: tuned::Tiling<'_>,
    ) -> Result<ExecutionPlan> {
        config.validate()?;
        // Before any product of the sizes: batch · seq · dim must be representable here.
        crate::shape::check_tokens(config, batch, seq)?;
        precision.check_supported(ctx)?;
        let c = config;
        if !c.plain_self_attention() {
            return Err(refuse_memory_layer(c, "this plan"));
        }
        let mlp = c.selection_mlp.is_some();
        if mlp && strategy == Strategy::Fused && precision != Precision::F32 {
            return Err(Error::InvalidConfig {
                field: "strategy",
                value: "fused".into(),
                reason: "the MLP score network selects after the fused kernel in f32 storage \
                         only (retrieval_select reads f32 projections); an f16 layer with one \
                         runs Strategy::Unfused, which it starts with",
            });
        }
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        // Biases are added to buffers (ops::bias_add): a biased layer's core reads buffers. An
        // MLP score network selects after the fused kernel on buffers (retrieval_select). The
        // blocked core writes texel rows in the layer's precision (rgba16float for f16, so f16
        // storage runs the CPU family's fast core); the general fused kernel's texel variant
        // writes f32 texels only, so an f16 layer it would run reads f16 buffers instead.
        let texel_core =
            OperandStorage::of_operands(ctx) == OperandStorage::Texels && !c.bias && !mlp;
        // A tiling measured on this adapter for the shape class (plan::tuned) replaces the
        // built-in one where it is still one of the class's candidates.
        let blocked = match (strategy, texel_core) {
            (Strategy::Fused, true) => tuned::blocked(ctx, c, precision, &layout, tiling)
                .or_else(|| BlockedPlan::resolve(ctx, &layout)),
            _ => None,
        };
        let rows = batch * seq;
        let route = match strategy {
            Strategy::Unfused => Route::buffers(ctx, c, rows, BufferCore::Unfused),
            Strategy::Fused => match blocked {
                Some(blocked) => Route::texels(ctx, c, rows, TexelCore::Blocked(blocked)),
                None => {
                    let texels =
                        texel_core && precision == Precision::F32 && c.dim_head.is_multiple_of(4);
                    let storage = match texels {
                        true => OperandStorage::Texels,
                        false => OperandStorage::Buffers,
                    };
                    // A tuned tiling the key chunks cannot hold falls back to the built-in one.
                    let tuned = tuned::fused(ctx, c, precision, &layout, texels, tiling)
                        .and_then(|t| FusedPlan::resolve(ctx, &layout, t, storage).ok());
                    let fused = match tuned {
                        Some(fused) => fused,
                        None => FusedPlan::resolve(
                            ctx,
                            &layout,
                            FusedTiling::choose(ctx, c.dim_head, c.num_retrievals)?,
                            storage,
                        )?,
                    };
                    if texels {
                        Route::texels(ctx, c, rows, TexelCore::Fused(fused))
                    } else {
                        let fused = FusedPlan {
                            stores_retrieved: mlp,
                            ..fused
                        };
                        Route::buffers(ctx, c, rows, BufferCore::Fused(fused))
                    }
                }
            },
        };
        let plan = ExecutionPlan {
            batch,
            seq,
            strategy,
            precision,
            family: KernelFamily::of(ctx),
            route,
        };
        plan.check_sizes(ctx, c, &layout)?;
        log::debug!("plan for batch {batch} × seq {seq}: {}", plan.describe());
        if let CorePlan::Fused(fused) = plan.core()
            && fused.splits_keys()
        {
            log::info!(
                "fused attention splits {seq} keys into {} dispatches (driver loop cap)",
                fused.key_chunks.len()
            );
        }
        Ok(plan)
    }

    /// The shape class of this plan's core and its candidate tilings, the built-in one first,
    /// where the core has more than one (`plan::tuned`): the blocked core and the general fused
    /// kernel of a forward.
    pub(crate) fn tuning_candidates(
        &self,
        ctx: &GpuContext,
        config: &Config,
    ) -> Option<(String, Vec<tuned::TunedChoice>)> {
        let layout = ProjectionLayout::new(
            self.batch,
            self.seq,
            config.num_searches,
            config.num_retrievals,
            config.dim_head,
        );
        let (core, candidates) = match &self.route {
            Route::Texels {
                core: TexelCore::Blocked(_),
                ..
            } => (
                tuned::TunedCore::Blocked,
                tuned::blocked_candidates(ctx, &layout),
            ),
            Route::Texels {
                core: TexelCore::Fused(_),
                ..
            } => (
                tuned::TunedCore::Fused { texels: true },
                tuned::fused_candidates(ctx, config.dim_head, config.num_retrievals),
            ),
            Route::Buffers {
                core: BufferCore::Fused(_),
                ..
            } => (
                tuned::TunedCore::Fused { texels: false },
                tuned::fused_candidates(ctx, config.dim_head, config.num_retrievals),
            ),
            _ => return None,
        };
        let class = tuned::shape_class(ctx, config, self.precision, &layout, core);
        (candidates.len() > 1).then_some((class, candidates))
    }

    /// Whether this plan's core runs `choice` (the tuner checks that a candidate it stored was
    /// taken).
    pub(crate) fn runs(&self, choice: &tuned::TunedChoice) -> bool {
        match (self.core(), choice) {
            (
                CorePlan::Blocked(plan),
                tuned::TunedChoice::Blocked {
                    block_texels,
                    slices,
                },
            ) => plan.block_texels == *block_texels && plan.slices == *slices,
            (CorePlan::Fused(plan), tuned::TunedChoice::Fused(tiling)) => plan.tiling == *tiling,
            _ => false,
        }
    }

    /// Host bytes a [`forward`](crate::CompositionalAttention::forward) of this plan holds: the
    /// input and the output `[batch, seq, dim]` (f32) and the mask `[batch, seq]` (one byte
    /// each), in checked `u64` (`u64::MAX` if the product overflows). A program asks this (and
    /// [`ExecutionPlan::resolve`], which refuses what the device cannot hold) before it makes
    /// or allocates a problem of a user's size.
    pub fn host_bytes(&self, config: &Config) -> u64 {
        use crate::host_memory::bytes_of;
        let tensor = bytes_of(&[self.batch, self.seq, config.dim], 4);
        let mask = bytes_of(&[self.batch, self.seq], 1);
        tensor.saturating_mul(2).saturating_add(mask)
    }

    /// Refuses, before anything is allocated, a plan whose largest buffers or texel matrices
    /// exceed the device's limits, naming the buffer and the limit.
    fn check_sizes(&self, ctx: &GpuContext, c: &Config, layout: &ProjectionLayout) -> Result<()> {
        use crate::gpu::memory::check_storage_size;
        use crate::shape::elements;
        let (b, n) = (self.batch, self.seq);
        let tokens = b * n;
        let bytes_in = |precision: Precision, what: &str, dims: &[usize]| -> Result<u64> {
            elements(what, dims).map(|e| e.saturating_mul(precision.bytes()))
        };
        let bytes = |what: &str, dims: &[usize]| bytes_in(Precision::F32, what, dims);
        check_storage_size(ctx, "input", bytes("input", &[b, n, c.dim])?, None)?;
        let core_texels = self.core_storage() == OperandStorage::Texels;
        if core_texels {
            crate::gpu::texture::TexelShape::new(ctx, "projections", tokens, layout.row_stride)?;
        } else {
            let proj = bytes_in(
                self.intermediates(),
                "projections",
                &[b, n, layout.row_stride],
            )?;
            check_storage_size(ctx, "projections", proj, None)?;
        }
        if matches!(self.gemm(), GemmPlan::Texels { .. }) {
            crate::gpu::texture::TexelShape::new(ctx, "GEMM operand", tokens, c.dim)?;
        }
        match self.core() {
            CorePlan::Unfused => {
                let logits = bytes("search logits", &[b, c.num_searches, n, n])?;
                check_storage_size(ctx, "search logits", logits, Some(UNFUSED_SIZE_HINT))?;
            }
            CorePlan::Fused(fused) | CorePlan::FusedMemory(fused) if fused.splits_keys() => {
                let carry = bytes("fused carry", &[b, c.num_searches, n, c.value_width()])?;
                check_storage_size(ctx, "fused carry (accumulators)", carry, None)?;
            }
            CorePlan::Blocked(_) | CorePlan::BlockedMemory(_) => {
                crate::gpu::texture::TexelShape::new(
                    ctx,
                    "retrieved",
                    b * c.num_searches * n,
                    c.value_width(),
                )?;
            }
            CorePlan::Cached(SplitKvPlan { splits: cached, .. })
            | CorePlan::Memory(SplitKvPlan { splits: cached, .. }) => {
                let keys = bytes_in(
                    self.precision,
                    "KV cache keys",
                    &[b, c.num_searches, cached.capacity, c.dim_head],
                )?;
                check_storage_size(ctx, "KV cache keys", keys, None)?;
                let values = bytes_in(
                    self.precision,
                    "KV cache values",
                    &[b, cached.capacity, c.value_width()],
                )?;
                check_storage_size(ctx, "KV cache values", values, None)?;
                let partials = bytes(
                    "decode partials",
                    &[b, c.num_searches, n, cached.splits, c.value_width()],
                )?;
                check_storage_size(ctx, "decode partial accumulators", partials, None)?;
            }
            CorePlan::Fused(_) | CorePlan::FusedMemory(_) => {}
        }
        // An MLP score network after the split-KV or fused core selects from the retrieved
        // values, stored.
        let stores_retrieved = match self.core() {
            CorePlan::Cached(split) | CorePlan::Memory(split) => split.mlp_selection,
            CorePlan::Fused(fused) => fused.stores_retrieved,
            _ => false,
        };
        if stores_retrieved {
            let retrieved = bytes("retrieved", &[b, c.num_searches, n, c.value_width()])?;
            check_storage_size(ctx, "retrieved", retrieved, None)?;
        }
        Ok(())
    }

    /// The plan of a prefill chunk or decode step: `seq` new tokens per sequence appended to a
    /// KV cache of `capacity` positions and attended over it.
    pub fn resolve_cached(
        ctx: &GpuContext,
        config: &Config,
        precision: Precision,
        batch: usize,
        seq: usize,
        capacity: usize,
    ) -> Result<ExecutionPlan> {
        config.validate()?;
        crate::shape::check_tokens(config, batch, seq)?;
        crate::shape::check_tokens(config, batch, capacity)?;
        precision.check_supported(ctx)?;
        let c = config;
        if !c.plain_self_attention() {
            return Err(refuse_memory_layer(c, "a KV cache"));
        }
        if c.selection_mlp.is_some() && precision != Precision::F32 {
            return Err(Error::InvalidConfig {
                field: "selection_mlp",
                value: format!("{:?}", c.selection_mlp),
                reason: "the MLP score network's selection (retrieval_select) reads f32 \
                         projections: generate with it in f32 storage",
            });
        }
        let mlp_selection = c.selection_mlp.is_some();
        let core = |splits| {
            BufferCore::Cached(SplitKvPlan {
                splits,
                mlp_selection,
            })
        };
        Self::over_positions(ctx, c, precision, (batch, seq, capacity), core, "cached")
    }

    /// The plan of `seq` query rows per sequence attending a [`Memory`](crate::Memory) of
    /// `positions` key rows (its extra rows included), every query seeing every position the
    /// memory lets it see: cross-attention, or self-attention with extra key rows.
    pub fn resolve_memory(
        ctx: &GpuContext,
        config: &Config,
        precision: Precision,
        batch: usize,
        seq: usize,
        positions: usize,
    ) -> Result<ExecutionPlan> {
        config.validate()?;
        crate::shape::check_tokens(config, batch, seq)?;
        crate::shape::check_tokens(config, batch, positions)?;
        precision.check_supported(ctx)?;
        let c = config;
        if c.selection_mlp.is_some() && precision != Precision::F32 {
            return Err(Error::InvalidConfig {
                field: "selection_mlp",
                value: format!("{:?}", c.selection_mlp),
                reason: "the MLP score network's selection (retrieval_select) reads f32 \
                         projections: attend a memory with it in f32 storage",
            });
        }
        let core = Self::memory_core(ctx, c, batch, positions)
            .filter(|_| seq >= BLOCKED_MEMORY_MIN_QUERIES);
        if let Some(core) = core {
            let rows = batch * seq;
            let route = match core {
                MemoryCore::Blocked(blocked) => {
                    Route::texels(ctx, c, rows, TexelCore::BlockedMemory(blocked))
                }
                MemoryCore::Fused(fused) => {
                    Route::buffers(ctx, c, rows, BufferCore::FusedMemory(fused))
                }
            };
            return Self::checked(ctx, c, precision, (batch, seq), route, "memory");
        }
        let mlp_selection = c.selection_mlp.is_some();
        let core = |splits| {
            BufferCore::Memory(SplitKvPlan {
                splits,
                mlp_selection,
            })
        };
        Self::over_positions(ctx, c, precision, (batch, seq, positions), core, "memory")
    }

    /// The core a layer of `config` attends a memory of `batch × positions` rows with, from
    /// [`BLOCKED_MEMORY_MIN_QUERIES`] query rows: the blocked core over texel-row copies of its
    /// keys and values where the layer's self-attention reads texels (no biases, on a CPU
    /// driver; the rows are `rgba16float` for an f16 layer), else the fused kernel over its
    /// cache buffers; `None` for the MLP score network (its selection runs after the split-KV
    /// core). A memory holds texel rows exactly when this is [`MemoryCore::Blocked`].
    pub(crate) fn memory_core(
        ctx: &GpuContext,
        config: &Config,
        batch: usize,
        positions: usize,
    ) -> Option<MemoryCore> {
        use crate::gpu::texture::TexelShape;
        let c = config;
        // The MLP score network selects after the split-KV core; the others read the memory's
        // value mean, one reduction over its positions.
        if c.selection_mlp.is_some() || crate::ops::value_mean::check_fits(ctx, positions).is_err()
        {
            return None;
        }
        let keys = ProjectionLayout::new(
            batch,
            positions,
            c.num_searches,
            c.num_retrievals,
            c.dim_head,
        );
        // An f16 layer's rows are rgba16float, as its cache is f16 (exact copies).
        let texels = OperandStorage::of_operands(ctx) == OperandStorage::Texels && !c.bias;
        // The rows as textures: keys [b·s·L, d], values [b·L, r·d] (the caller checked that
        // b·L fits; these products are then representable).
        let rows = batch.checked_mul(positions)?;
        let fits = |rows: Option<usize>, cols| {
            rows.is_some_and(|rows| TexelShape::new(ctx, "memory rows", rows, cols).is_ok())
        };
        let blocked = texels
            && fits(rows.checked_mul(c.num_searches), c.dim_head)
            && fits(Some(rows), c.value_width());
        if let Some(blocked) = blocked.then(|| BlockedPlan::resolve(ctx, &keys)).flatten() {
            return Some(MemoryCore::Blocked(blocked));
        }
        let tiling = FusedTiling::choose(ctx, c.dim_head, c.num_retrievals).ok()?;
        FusedPlan::resolve(ctx, &keys, tiling, OperandStorage::Buffers)
            .ok()
            .map(MemoryCore::Fused)
    }

    /// The plan of `seq` new query rows per sequence over `positions` stored keys (a KV cache or
    /// a memory): the split-KV core `core` makes of its splits, on the buffer route.
    fn over_positions(
        ctx: &GpuContext,
        c: &Config,
        precision: Precision,
        (batch, seq, positions): (usize, usize, usize),
        core: impl FnOnce(CachedPlan) -> BufferCore,
        what: &str,
    ) -> Result<ExecutionPlan> {
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        let splits = CachedPlan::resolve(ctx, &layout, positions)?;
        let route = Route::buffers(ctx, c, batch * seq, core(splits));
        Self::checked(ctx, c, precision, (batch, seq), route, what)
    }

    /// The fused strategy's plan of `route` at `batch × seq`, its sizes checked against the
    /// device's limits.
    fn checked(
        ctx: &GpuContext,
        c: &Config,
        precision: Precision,
        (batch, seq): (usize, usize),
        route: Route,
        what: &str,
    ) -> Result<ExecutionPlan> {
        let layout =
            ProjectionLayout::new(batch, seq, c.num_searches, c.num_retrievals, c.dim_head);
        let plan = ExecutionPlan {
            batch,
            seq,
            strategy: Strategy::Fused,
            precision,
            family: KernelFamily::of(ctx),
            route,
        };
        plan.check_sizes(ctx, c, &layout)?;
        log::debug!(
            "{what} plan for batch {batch} × seq {seq}: {}",
            plan.describe()
        );
        Ok(plan)
    }

    /// The projection weights the plan reads.
    pub fn projection_weights(&self) -> ProjectionWeights {
        match self.core() {
            CorePlan::Unfused => ProjectionWeights::Plain,
            CorePlan::Fused(fused) if fused.stores_retrieved => ProjectionWeights::Plain,
            CorePlan::Blocked(_)
            | CorePlan::BlockedMemory(_)
            | CorePlan::Fused(_)
            | CorePlan::FusedMemory(_)
            | CorePlan::Cached(SplitKvPlan {
                mlp_selection: false,
                ..
            })
            | CorePlan::Memory(SplitKvPlan {
                mlp_selection: false,
                ..
            }) => ProjectionWeights::RetrievalFolded,
            CorePlan::Cached(SplitKvPlan {
                mlp_selection: true,
                ..
            })
            | CorePlan::Memory(SplitKvPlan {
                mlp_selection: true,
                ..
            }) => ProjectionWeights::Plain,
        }
    }

    /// Whether the plan reads the selection's own weights: `W_rk` (only the unfused selection
    /// does; the fused cores read it folded into the projection), or the MLP score network.
    pub fn reads_retrieval_keys(&self) -> bool {
        matches!(
            self.route,
            Route::Buffers {
                core: BufferCore::Unfused,
                ..
            }
        )
    }

    /// The precision of the projections the core reads and the concatenation it writes: the
    /// layer's in the fused, blocked and cached cores (buffers of that type, or `rgba16float`
    /// texel rows for f16), f32 in the unfused core (its kernels, a debugging path, read and
    /// write f32).
    pub fn intermediates(&self) -> Precision {
        match self.core() {
            CorePlan::Fused(_)
            | CorePlan::FusedMemory(_)
            | CorePlan::Blocked(_)
            | CorePlan::BlockedMemory(_)
            | CorePlan::Cached(_)
            | CorePlan::Memory(_) => self.precision,
            CorePlan::Unfused => Precision::F32,
        }
    }

    /// Storage of the projections the core reads and the concatenation it writes.
    pub fn core_storage(&self) -> OperandStorage {
        match self.route {
            Route::Texels { .. } => OperandStorage::Texels,
            Route::Buffers { .. } => OperandStorage::Buffers,
        }
    }

    /// One line for logs: family, GEMM, core and its tiles.
    pub fn describe(&self) -> String {
        let core = match self.core() {
            CorePlan::Blocked(b) => format!(
                "blocked ({} value texels per block, {} slice(s) sharing scores)",
                b.block_texels, b.slices
            ),
            CorePlan::BlockedMemory(b) => format!(
                "blocked over a memory's texel rows ({} value texels per block, {} slice(s))",
                b.block_texels, b.slices
            ),
            CorePlan::Fused(f) => format!(
                "fused {:?} on {:?}, {} key chunk(s)",
                f.tiling,
                f.storage,
                f.key_chunks.len()
            ),
            CorePlan::FusedMemory(f) => format!(
                "fused over a memory {:?}, {} key chunk(s)",
                f.tiling,
                f.key_chunks.len()
            ),
            CorePlan::Unfused => "unfused".to_string(),
            CorePlan::Cached(SplitKvPlan {
                splits: c,
                mlp_selection,
            }) => format!(
                "cached ({} splits of {} keys over {} positions{})",
                c.splits,
                c.keys_per_split,
                c.capacity,
                if mlp_selection { ", MLP selection" } else { "" }
            ),
            CorePlan::Memory(SplitKvPlan {
                splits: c,
                mlp_selection,
            }) => format!(
                "memory ({} splits of {} keys over {} positions{})",
                c.splits,
                c.keys_per_split,
                c.capacity,
                if mlp_selection { ", MLP selection" } else { "" }
            ),
        };
        format!(
            "{:?} family, {} storage, GEMM {:?}, core {core}",
            self.family,
            self.precision,
            self.gemm()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::context;

    /// The training forward takes the blocked core exactly where the eval forward's can run on a
    /// chunked device, no mask is drawn and the projections' texel copy fits (it does at this
    /// size); a drawn mask keeps the chunked core.
    #[test]
    fn training_forward_runs_the_blocked_core_only_without_dropout() {
        let ctx = context();
        let layout = ProjectionLayout::new(2, 37, 3, 2, 8);
        let eligible = match TrainingCore::of(ctx) {
            TrainingCore::Chunked => BlockedPlan::resolve(ctx, &layout),
            TrainingCore::PerRow => None,
        };
        let none = Dropout::new(0.0, 7).unwrap();
        let drawn = Dropout::new(0.25, 7).unwrap();
        assert_eq!(TrainingCore::blocked_forward(ctx, &layout, None), eligible);
        assert_eq!(
            TrainingCore::blocked_forward(ctx, &layout, Some(none)),
            eligible
        );
        assert_eq!(
            TrainingCore::blocked_forward(ctx, &layout, Some(drawn)),
            None
        );
        // Heads off texel boundaries never reach the blocked core.
        let odd = ProjectionLayout::new(1, 16, 2, 2, 7);
        assert_eq!(TrainingCore::blocked_forward(ctx, &odd, None), None);
    }
}
