//! The attention core of training (`shaders/search_statistics.wgsl`, `search_retrieve.wgsl`,
//! `selection_forward.wgsl`, `selection_backward.wgsl`, `search_query_backward.wgsl`,
//! `search_key_value_backward.wgsl`, with `common/train_params.wgsl` and
//! `common/search_weights.wgsl`).
//!
//! The training forward keeps per query row only the search softmax's statistics `(m, l)` and
//! the retrieved values `Ret [b·s·n, r·d]` (what FlashAttention-2 keeps: its log-sum-exp and its
//! output), never the `b·s·n²` weights; the backward recomputes each weight from them. Its
//! passes follow FlashAttention-2 generalised to searches × retrievals: one per-row pass for the
//! selection and the row term `D`, a dQ kernel over the keys, and a dK/dV kernel over the
//! queries whose value gradient sums every search in registers (see its WGSL header for why not
//! atomics). Each invocation owns one row (or one key), so the kernels read alike on CPU
//! drivers and GPUs; every pass over keys or queries is split into dispatches where the driver
//! caps loop iterations per invocation (lavapipe, llvmpipe), the later ones adding to the first.
//!
//! All six kernels read one parameter block, [`Params`], declared once in WGSL
//! (`common/train_params.wgsl`).

use crate::dropout::Dropout;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, check_loop_budget, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;
use crate::ops::gemm::EpilogueFields;

static SEARCH_STATISTICS: Kernel = kernel!(
    "search_statistics",
    includes: ["philox", "train_params", "train_dropout", "search_weights", "search_rows"]
);
static SEARCH_RETRIEVE: Kernel = kernel!(
    "search_retrieve",
    includes: ["philox", "train_params", "train_dropout", "search_weights", "search_rows"]
);
static SELECTION_FORWARD: Kernel =
    kernel!("selection_forward", includes: ["philox", "train_params", "train_dropout"]);
static SELECTION_BACKWARD: Kernel =
    kernel!("selection_backward", includes: ["philox", "train_params", "train_dropout"]);
static SEARCH_QUERY_BACKWARD: Kernel = kernel!(
    "search_query_backward",
    includes: ["philox", "train_params", "train_dropout", "search_weights", "search_rows"]
);
static SEARCH_KEY_VALUE_BACKWARD: Kernel = kernel!(
    "search_key_value_backward",
    includes: ["philox", "train_params", "train_dropout", "search_weights", "search_rows"]
);

/// Invocations per workgroup: one row (or key) each.
const WG: u32 = 64;

/// Loop iterations of one Philox draw (its ten rounds).
const DRAW: u64 = 10;

uniform! {
    struct Params {
        batch: u32,
        seq: u32,
        searches: u32,
        retrievals: u32,
        head: u32,
        row_stride: u32,
        q_offset: u32,
        k_offset: u32,
        v_offset: u32,
        causal: u32,
        begin: u32,
        end: u32,
        first: u32,
        dropout: u32,
        seed_lo: u32,
        seed_hi: u32,
        threshold: u32,
        scale: f32,
        keep_scale: f32,
        batch_index: u32,
        search_index: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// One training problem of the attention core: the packed projection's layout, the rule for
/// keys, the score scale and the step's dropout (`None` or `p = 0`: none drawn).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreProblem {
    pub layout: ProjectionLayout,
    pub causal: bool,
    pub scale: f32,
    pub dropout: Option<Dropout>,
}

impl CoreProblem {
    /// Every `(batch, search, rows)` chunk of the problem, `step` query rows at most, in order
    /// (the chunked cores, `ops::attention_chunks` and `ops::attention_chunk_texels`).
    pub(crate) fn chunks(
        &self,
        step: usize,
    ) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> + use<> {
        let l = self.layout;
        let step = step.max(1);
        (0..l.batch).flat_map(move |b| {
            (0..l.searches).flat_map(move |sigma| {
                (0..l.seq)
                    .step_by(step)
                    .map(move |begin| (b, sigma, begin..(begin + step).min(l.seq)))
            })
        })
    }

    /// Where the projections of `(batch b, search σ)` start in `proj` (or `d_proj`), in
    /// elements: `(SQ of query row i0, SK of key 0, RV of key 0)`.
    pub(crate) fn chunk_offsets(&self, b: usize, sigma: usize, i0: usize) -> (usize, usize, usize) {
        let l = &self.layout;
        let token0 = b * l.seq;
        (
            (token0 + i0) * l.row_stride + l.search_queries + sigma * l.head,
            token0 * l.row_stride + l.search_keys + sigma * l.head,
            token0 * l.row_stride + l.retrieval_values,
        )
    }

    fn rows(&self) -> u64 {
        (self.layout.batch * self.layout.searches * self.layout.seq) as u64
    }

    fn tokens(&self) -> u64 {
        (self.layout.batch * self.layout.seq) as u64
    }

    pub(crate) fn value_width(&self) -> usize {
        self.layout.retrievals * self.layout.head
    }

    /// The parameter block of a chunked kernel: query rows `rows` of `(batch, search)`.
    pub(crate) fn chunk_params(
        &self,
        (batch, search): (usize, usize),
        rows: std::ops::Range<usize>,
    ) -> Params {
        Params {
            batch_index: batch as u32,
            search_index: search as u32,
            ..self.params(rows, true)
        }
    }

    /// [`chunk_params`](Self::chunk_params) as the texel GEMM's epilogue reads them
    /// (`ops::attention_chunk_texels`).
    pub(crate) fn epilogue_fields(
        &self,
        chunk: (usize, usize),
        rows: std::ops::Range<usize>,
    ) -> EpilogueFields {
        let p = self.chunk_params(chunk, rows);
        EpilogueFields {
            seq: p.seq,
            searches: p.searches,
            causal: p.causal,
            begin: p.begin,
            batch_index: p.batch_index,
            search_index: p.search_index,
            dropout: p.dropout,
            seed_lo: p.seed_lo,
            seed_hi: p.seed_hi,
            threshold: p.threshold,
            scale: p.scale,
            keep_scale: p.keep_scale,
        }
    }

    /// Whether the problem drops search weights (dropout with `p > 0`).
    pub(crate) fn drops(&self) -> bool {
        self.dropout.is_some_and(|d| d.p() > 0.0)
    }

    fn params(&self, range: std::ops::Range<usize>, first: bool) -> Params {
        let l = &self.layout;
        let dropout = self.dropout.filter(|d| d.p() > 0.0);
        Params {
            batch: l.batch as u32,
            seq: l.seq as u32,
            searches: l.searches as u32,
            retrievals: l.retrievals as u32,
            head: l.head as u32,
            row_stride: l.row_stride as u32,
            q_offset: l.search_queries as u32,
            k_offset: l.search_keys as u32,
            v_offset: l.retrieval_values as u32,
            causal: self.causal as u32,
            begin: range.start as u32,
            end: range.end as u32,
            first: first as u32,
            dropout: dropout.is_some() as u32,
            seed_lo: dropout.map_or(0, |d| d.seed() as u32),
            seed_hi: dropout.map_or(0, |d| (d.seed() >> 32) as u32),
            threshold: dropout.map_or(0, |d| d.threshold()),
            scale: self.scale,
            keep_scale: dropout.map_or(1.0, |d| d.scale()),
            batch_index: 0,
            search_index: 0,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }

    /// One dispatch per slice of `0..seq` that fits the loop budget at `per_item` iterations
    /// per key (or query) and `fixed` more, each over `groups` workgroups.
    async fn sliced(
        &self,
        ctx: &GpuContext,
        what: &str,
        variant: &ShaderVariant,
        (per_item, fixed): (u64, u64),
        binds: &[crate::gpu::dispatch::Bind<'_>],
        groups: u64,
    ) -> Result<Vec<Dispatch>> {
        let slices = split_for_loop_budget(ctx, what, self.layout.seq, per_item, fixed, 1)?;
        let mut dispatches = Vec::with_capacity(slices.len());
        for (index, slice) in slices.into_iter().enumerate() {
            let params = self.params(slice, index == 0);
            dispatches.push(
                Dispatch::new(ctx, variant, bytemuck::bytes_of(&params), binds, groups).await?,
            );
        }
        Ok(dispatches)
    }

    /// One dispatch over every row, its loops checked against the budget.
    async fn per_row(
        &self,
        ctx: &GpuContext,
        what: &str,
        variant: &ShaderVariant,
        iterations: u64,
        binds: &[crate::gpu::dispatch::Bind<'_>],
    ) -> Result<Dispatch> {
        check_loop_budget(
            ctx,
            what,
            iterations,
            "a smaller head size or fewer retrievals",
        )?;
        let params = self.params(0..self.layout.seq, true);
        let groups = self.rows().div_ceil(WG as u64);
        Dispatch::new(ctx, variant, bytemuck::bytes_of(&params), binds, groups).await
    }
}

pub(crate) fn statistics_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SEARCH_STATISTICS)
        .u32("WG", WG)
        .u32("D", layout.head as u32)
}

pub(crate) fn retrieve_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SEARCH_RETRIEVE)
        .u32("WG", WG)
        .u32("D", layout.head as u32)
        .u32("VW", (layout.retrievals * layout.head) as u32)
}

pub(crate) fn selection_forward_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SELECTION_FORWARD)
        .u32("WG", WG)
        .u32("R", layout.retrievals as u32)
}

pub(crate) fn selection_backward_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SELECTION_BACKWARD)
        .u32("WG", WG)
        .u32("R", layout.retrievals as u32)
}

pub(crate) fn query_backward_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SEARCH_QUERY_BACKWARD)
        .u32("WG", WG)
        .u32("D", layout.head as u32)
        .u32("VW", (layout.retrievals * layout.head) as u32)
}

pub(crate) fn key_value_backward_variant(layout: &ProjectionLayout) -> ShaderVariant {
    ShaderVariant::new(&SEARCH_KEY_VALUE_BACKWARD)
        .u32("WG", WG)
        .u32("D", layout.head as u32)
        .u32("VW", (layout.retrievals * layout.head) as u32)
}

/// Every variant a problem of `layout` compiles, in the order a step runs them.
#[cfg(test)]
pub(crate) fn variants(layout: &ProjectionLayout) -> [ShaderVariant; 6] {
    [
        statistics_variant(layout),
        retrieve_variant(layout),
        selection_forward_variant(layout),
        selection_backward_variant(layout),
        query_backward_variant(layout),
        key_value_backward_variant(layout),
    ]
}

/// The forward's passes over the keys: `stats [b·s·n] vec4` (m, l), then `ret [b·s·n, r·d]`.
pub(crate) async fn forward_core(
    ctx: &GpuContext,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    ret: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let (d, vw) = (problem.layout.head as u64, problem.value_width() as u64);
    let groups = problem.rows().div_ceil(WG as u64);
    let mut dispatches = problem
        .sliced(
            ctx,
            "search statistics",
            &statistics_variant(&problem.layout),
            (d + 2, 4),
            &[proj.into(), mask.into(), stats.into()],
            groups,
        )
        .await?;
    dispatches.extend(
        problem
            .sliced(
                ctx,
                "search retrieve",
                &retrieve_variant(&problem.layout),
                (d + vw + DRAW + 3, 2 * vw + 4),
                &[proj.into(), mask.into(), stats.into(), ret.into()],
                groups,
            )
            .await?,
    );
    Ok(dispatches)
}

/// The forward's selection: `selection [b·s·n, r]` (before dropout) and `concat [b·n, s·d]`
/// from `ret` and `qt = RQ·W_rk [b·n, s·d]`.
pub(crate) async fn selection_forward(
    ctx: &GpuContext,
    problem: &CoreProblem,
    ret: &wgpu::Buffer,
    qt: &wgpu::Buffer,
    selection: &wgpu::Buffer,
    concat: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (d, r) = (problem.layout.head as u64, problem.layout.retrievals as u64);
    problem
        .per_row(
            ctx,
            "selection forward",
            &selection_forward_variant(&problem.layout),
            2 * r * d + r * (3 + DRAW) + 4,
            &[ret.into(), qt.into(), selection.into(), concat.into()],
        )
        .await
}

/// The backward's per-row pass: `d_ret`, `d_qt` and the row term `D` into `stats.z`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn selection_backward(
    ctx: &GpuContext,
    problem: &CoreProblem,
    d_concat: &wgpu::Buffer,
    ret: &wgpu::Buffer,
    selection: &wgpu::Buffer,
    qt: &wgpu::Buffer,
    d_ret: &wgpu::Buffer,
    d_qt: &wgpu::Buffer,
    stats: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (d, r) = (problem.layout.head as u64, problem.layout.retrievals as u64);
    problem
        .per_row(
            ctx,
            "selection backward",
            &selection_backward_variant(&problem.layout),
            2 * r * d + r * (3 + DRAW) + d + 4,
            &[
                d_concat.into(),
                ret.into(),
                selection.into(),
                qt.into(),
                d_ret.into(),
                d_qt.into(),
                stats.into(),
            ],
        )
        .await
}

/// The backward's passes over the keys (dSQ into `d_proj`'s SQ columns) and over the queries
/// (dSK and dRV into its SK and RV columns).
pub(crate) async fn search_backward(
    ctx: &GpuContext,
    problem: &CoreProblem,
    proj: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    d_ret: &wgpu::Buffer,
    d_proj: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let (d, vw) = (problem.layout.head as u64, problem.value_width() as u64);
    let s = problem.layout.searches as u64;
    let binds = [
        proj.into(),
        mask.into(),
        stats.into(),
        d_ret.into(),
        d_proj.into(),
    ];
    let mut dispatches = problem
        .sliced(
            ctx,
            "search query backward",
            &query_backward_variant(&problem.layout),
            (2 * d + vw + DRAW + 3, 2 * d + 4),
            &binds,
            problem.rows().div_ceil(WG as u64),
        )
        .await?;
    dispatches.extend(
        problem
            .sliced(
                ctx,
                "search key/value backward",
                &key_value_backward_variant(&problem.layout),
                (s * (2 * d + vw + DRAW + 3), 2 * vw + s * (2 * d + 1) + 4),
                &binds,
                problem.tokens().div_ceil(WG as u64),
            )
            .await?,
    );
    Ok(dispatches)
}
