//! Attention over a KV cache (`shaders/cache_append.wgsl`, `decode_attention.wgsl`,
//! `decode_reduce.wgsl`, `cache_advance.wgsl`): the core of prefill and decode.
//!
//! A step appends the new tokens' keys, values and mask to the cache from the projection GEMM's
//! output, runs split-KV attention for the new queries over every cached key up to each query's
//! position (each split an invocation with its own online softmax, as onnxruntime-web's and
//! llama.cpp's WebGPU decode paths do), combines the splits and selects the retrieval, and then
//! advances the cache's length on the GPU. The length lives in a GPU buffer so that steps
//! recorded back to back into one encoder each see their own.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Buf, Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;
use crate::ops::kernel_params::{CachedPlan, vector_width};
use crate::precision::Precision;

static CACHE_APPEND: Kernel = kernel!("cache_append");
static DECODE_ATTENTION: Kernel = kernel!("decode_attention", bounds_checks: Proven);
static DECODE_REDUCE: Kernel = kernel!("decode_reduce");
static CACHE_ADVANCE: Kernel = kernel!("cache_advance");

/// Invocations per workgroup of the append, attention and reduce kernels.
const WG: u32 = 64;

uniform! {
    struct AppendParams {
        batch: u32,
        seq: u32,
        searches: u32,
        head: u32,
        value_width: u32,
        row_stride: u32,
        k_offset: u32,
        v_offset: u32,
        capacity: u32,
        _pad: [u32; 3],
    }
}

uniform! {
    struct AttentionParams {
        batch: u32,
        seq: u32,
        searches: u32,
        capacity: u32,
        row_stride: u32,
        q_offset: u32,
        scale: f32,
        splits: u32,
        keys_per_split: u32,
        _pad: [u32; 3],
    }
}

uniform! {
    struct ReduceParams {
        batch: u32,
        seq: u32,
        searches: u32,
        splits: u32,
        row_stride: u32,
        qt_offset: u32,
        scale: f32,
        _pad: u32,
    }
}

uniform! {
    struct AdvanceParams {
        seq: u32,
        _pad: [u32; 3],
    }
}

/// The cache's buffers, as the kernels bind them.
pub(crate) struct CacheBuffers {
    /// How keys and values are stored; a step's projections and concatenation are stored the
    /// same way (`ExecutionPlan::intermediates`).
    pub precision: Precision,
    /// `[b, s, capacity, d]` search keys.
    pub keys: wgpu::Buffer,
    /// `[b, capacity, r·d]` retrieval values.
    pub values: wgpu::Buffer,
    /// `[b, capacity]` u32 key mask.
    pub mask: wgpu::Buffer,
    /// `[b]` u32: the first allowed position (`u32::MAX`: none yet).
    pub first_allowed: wgpu::Buffer,
    /// `[1]` u32: tokens cached.
    pub state: wgpu::Buffer,
}

/// The four kernels of a step whose cache, projections and concatenation are stored in
/// `precision`; the reduce selects the retrieval (`select`, the dot product) or stores the
/// retrieved values for an MLP score network.
pub(crate) fn variants(
    layout: &ProjectionLayout,
    precision: Precision,
    select: bool,
) -> [ShaderVariant; 4] {
    let vec = vector_width(layout.head) as u32;
    let heads = |kernel: &'static Kernel| {
        ShaderVariant::new(kernel)
            .u32("WG", WG)
            .u32("D", layout.head as u32)
            .u32("R", layout.retrievals as u32)
            .vector(vec)
            .stored("Proj", precision)
            .stored("Cache", precision)
    };
    [
        ShaderVariant::new(&CACHE_APPEND)
            .u32("WG", WG)
            .stored("Proj", precision)
            .stored("Cache", precision),
        heads(&DECODE_ATTENTION),
        heads(&DECODE_REDUCE).bool("SELECT", select),
        ShaderVariant::new(&CACHE_ADVANCE),
    ]
}

/// Binds one step for the `layout.seq` new tokens of `proj` (`[b·seq, row_stride]`, RQ block
/// holding `RQ·W_rk`) with key mask `new_mask` (`[b, seq]` u32): append, split attention, reduce
/// into `concat` (`[b·seq, s·d]`), and — as `advance`, to be recorded after everything that
/// reads the length — the length update. The split partials are allocated here and returned.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn bind(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: &CachedPlan,
    scale: f32,
    proj: &wgpu::Buffer,
    new_mask: impl Into<Buf<'_>>,
    cache: &CacheBuffers,
    out: AttentionOut<'_>,
) -> Result<BoundStep> {
    let append = bind_append(
        ctx,
        layout,
        plan.capacity,
        proj,
        new_mask,
        cache,
        &cache.state,
    )
    .await?;
    let attended = bind_attention(ctx, layout, plan, scale, proj, cache, out).await?;
    let [.., advance] = variants(layout, cache.precision, true);
    let advance = Dispatch::new(
        ctx,
        &advance,
        bytemuck::bytes_of(&AdvanceParams {
            seq: layout.seq as u32,
            _pad: [0; 3],
        }),
        &[(&cache.state).into()],
        1,
    )
    .await?;
    let mut dispatches = vec![append];
    dispatches.extend(attended.dispatches);
    Ok(BoundStep {
        dispatches,
        advance,
        partials: attended.partials,
    })
}

/// Binds `cache_append` for the `layout.seq` tokens of `proj` (search keys at
/// `layout.search_keys`, retrieval values at `layout.retrieval_values`, `row_stride` wide) with
/// key mask `new_mask`, written at positions `at[0] + i` of a cache of `capacity` positions
/// (`at`: the cache's length for a step, a memory's first position after its extra rows).
pub(crate) async fn bind_append(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    capacity: usize,
    proj: &wgpu::Buffer,
    new_mask: impl Into<Buf<'_>>,
    cache: &CacheBuffers,
    at: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (b, n, s, r, d) = (
        layout.batch,
        layout.seq,
        layout.searches,
        layout.retrievals,
        layout.head,
    );
    let [append, ..] = variants(layout, cache.precision, true);
    let params = AppendParams {
        batch: b as u32,
        seq: n as u32,
        searches: s as u32,
        head: d as u32,
        value_width: (r * d) as u32,
        row_stride: layout.row_stride as u32,
        k_offset: layout.search_keys as u32,
        v_offset: layout.retrieval_values as u32,
        capacity: capacity as u32,
        _pad: [0; 3],
    };
    let elements = (b * n * (s * d + r * d + 1)) as u64;
    Dispatch::new(
        ctx,
        &append,
        bytemuck::bytes_of(&params),
        &[
            proj.into(),
            new_mask.into().into(),
            at.into(),
            (&cache.keys).into(),
            (&cache.values).into(),
            (&cache.mask).into(),
            (&cache.first_allowed).into(),
        ],
        elements.div_ceil(WG as u64),
    )
    .await
}

/// What the reduce writes.
pub(crate) enum AttentionOut<'a> {
    /// The concatenated searches `[b·seq, s·d]`, the retrieval selected by the dot product.
    Concat(&'a wgpu::Buffer),
    /// The normalised retrieved values `[b, s, seq, r·d]` (f32), for an MLP score network
    /// (`retrieval_select`) to select from.
    Retrieved(&'a wgpu::Buffer),
}

impl<'a> AttentionOut<'a> {
    /// Into `retrieved` where an MLP score network selects afterwards, else into `concat`.
    pub(crate) fn of(retrieved: Option<&'a wgpu::Buffer>, concat: &'a wgpu::Buffer) -> Self {
        match retrieved {
            Some(retrieved) => AttentionOut::Retrieved(retrieved),
            None => AttentionOut::Concat(concat),
        }
    }
}

/// `decode_attention` runs without runtime bounds checks (`BoundsChecks::Proven`): its header
/// proves every index in range of buffers at least as large as the plan's shapes, so those sizes
/// are checked here, where a mismatch is a typed error rather than an access out of range.
fn check_attention_bindings(
    layout: &ProjectionLayout,
    plan: &CachedPlan,
    proj: &wgpu::Buffer,
    cache: &CacheBuffers,
) -> Result<()> {
    let l = layout;
    let (b, cap, bytes) = (
        l.batch as u64,
        plan.capacity as u64,
        cache.precision.bytes(),
    );
    let search_width = (l.searches * l.head) as u64;
    let value_width = (l.retrievals * l.head) as u64;
    let queries_end = l.search_queries as u64 + search_width;
    let needed = [
        (
            "projections",
            proj,
            b * (l.seq * l.row_stride) as u64 * bytes,
        ),
        ("keys", &cache.keys, b * cap * search_width * bytes),
        ("values", &cache.values, b * cap * value_width * bytes),
        ("key mask", &cache.mask, b * cap * 4),
        ("first allowed positions", &cache.first_allowed, b * 4),
        ("length", &cache.state, 4),
    ];
    let short: Vec<String> = needed
        .iter()
        .filter(|(_, buffer, bytes)| buffer.size() < *bytes)
        .map(|(name, buffer, bytes)| format!("{name}: {} bytes, needs {bytes}", buffer.size()))
        .collect();
    if !short.is_empty() || queries_end > layout.row_stride as u64 {
        return Err(Error::CacheMismatch(format!(
            "the decode kernel's buffers do not match its plan (capacity {cap}, {} splits of {}, \
             queries end at column {queries_end} of {}){}",
            plan.splits,
            plan.keys_per_split,
            layout.row_stride,
            if short.is_empty() {
                String::new()
            } else {
                format!(": {}", short.join(", "))
            }
        )));
    }
    Ok(())
}

/// Binds the split attention of the `layout.seq` queries of `proj` over `cache` (each query at
/// position `cache.state[0] + i` sees the positions up to its own) and the reduce into `out`;
/// allocates the split partials.
pub(crate) async fn bind_attention(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: &CachedPlan,
    scale: f32,
    proj: &wgpu::Buffer,
    cache: &CacheBuffers,
    out: AttentionOut<'_>,
) -> Result<BoundAttention> {
    let (b, n, s, r, d) = (
        layout.batch,
        layout.seq,
        layout.searches,
        layout.retrievals,
        layout.head,
    );
    let v = vector_width(d);
    let (dv, vwv) = ((d / v) as u64, (r * d / v) as u64);
    check_loop_budget(
        ctx,
        "decode attention",
        plan.keys_per_split as u64 * (2 + dv + vwv) + dv + 2 * vwv + 8,
        "a smaller dim_head · num_retrievals",
    )?;
    check_loop_budget(
        ctx,
        "decode reduce",
        plan.splits as u64 * (2 + vwv) + r as u64 * (2 + dv) + dv * (1 + r as u64) + vwv,
        "a smaller cache (fewer splits)",
    )?;
    check_attention_bindings(layout, plan, proj, cache)?;
    let rows = b * s * n;
    let stats = crate::gpu::memory::storage(
        ctx,
        "decode partial (max, sum)",
        &[rows, plan.splits, 2],
        None,
    )?;
    let acc = crate::gpu::memory::storage(
        ctx,
        "decode partial accumulators",
        &[rows, plan.splits, r * d],
        None,
    )?;
    let (select, out_buffer) = match out {
        AttentionOut::Concat(buffer) => (true, buffer),
        AttentionOut::Retrieved(buffer) => (false, buffer),
    };
    let [_, attention, reduce, _] = variants(layout, cache.precision, select);
    let attention_params = AttentionParams {
        batch: b as u32,
        seq: n as u32,
        searches: s as u32,
        capacity: plan.capacity as u32,
        row_stride: (layout.row_stride / v) as u32,
        q_offset: (layout.search_queries / v) as u32,
        scale,
        splits: plan.splits as u32,
        keys_per_split: plan.keys_per_split as u32,
        _pad: [0; 3],
    };
    let reduce_params = ReduceParams {
        batch: b as u32,
        seq: n as u32,
        searches: s as u32,
        splits: plan.splits as u32,
        row_stride: (layout.row_stride / v) as u32,
        qt_offset: (layout.retrieval_queries / v) as u32,
        scale,
        _pad: 0,
    };
    let dispatches = vec![
        Dispatch::new(
            ctx,
            &attention,
            bytemuck::bytes_of(&attention_params),
            &[
                proj.into(),
                (&cache.state).into(),
                (&cache.keys).into(),
                (&cache.values).into(),
                (&cache.mask).into(),
                (&cache.first_allowed).into(),
                (&stats).into(),
                (&acc).into(),
            ],
            ((rows * plan.splits) as u64).div_ceil(WG as u64),
        )
        .await?,
        Dispatch::new(
            ctx,
            &reduce,
            bytemuck::bytes_of(&reduce_params),
            &[
                proj.into(),
                (&stats).into(),
                (&acc).into(),
                out_buffer.into(),
            ],
            (rows as u64).div_ceil(WG as u64),
        )
        .await?,
    ];
    Ok(BoundAttention {
        dispatches,
        partials: [stats, acc],
    })
}

/// The split attention and reduce of [`bind_attention`], and the partials they write.
pub(crate) struct BoundAttention {
    pub dispatches: Vec<Dispatch>,
    pub partials: [wgpu::Buffer; 2],
}

/// A bound step: the core's dispatches, the length update to record last, and the split
/// partials the dispatches write.
pub(crate) struct BoundStep {
    pub dispatches: Vec<Dispatch>,
    pub advance: Dispatch,
    pub partials: [wgpu::Buffer; 2],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::BoundsCheckPolicy;
    use crate::gpu::pipelines::BoundsChecks;
    use crate::gpu::test_device::{context, upload};

    /// The guard in front of the unchecked kernel fails on a buffer one element short and on a
    /// query block past the row, naming what is wrong, and passes the plan's own sizes.
    #[test]
    fn attention_bindings_are_checked_against_the_plan() {
        let ctx = context();
        let layout = ProjectionLayout::new(2, 3, 2, 3, 4);
        let plan = CachedPlan::resolve(ctx, &layout, 40).unwrap();
        let cap = plan.capacity;
        let zeros = |len: usize| upload(&vec![0f32; len]);
        let proj = zeros(2 * 3 * layout.row_stride);
        let cache = |keys: usize| CacheBuffers {
            precision: Precision::F32,
            keys: zeros(keys),
            values: zeros(2 * cap * 3 * 4),
            mask: upload(&vec![1u32; 2 * cap]),
            first_allowed: upload(&[0u32; 2]),
            state: upload(&[0u32]),
        };
        let full = 2 * 2 * cap * 4;
        check_attention_bindings(&layout, &plan, &proj, &cache(full)).unwrap();
        match check_attention_bindings(&layout, &plan, &proj, &cache(full - 1)) {
            Err(Error::CacheMismatch(message)) => assert!(message.contains("keys"), "{message}"),
            other => panic!("a short keys buffer passed: {other:?}"),
        }
        let shifted = ProjectionLayout {
            search_queries: layout.row_stride - 1,
            ..layout
        };
        match check_attention_bindings(&shifted, &plan, &proj, &cache(full)) {
            Err(Error::CacheMismatch(message)) => {
                assert!(message.contains("queries end"), "{message}")
            }
            other => panic!("queries past the row passed: {other:?}"),
        }
    }

    /// Only the proven kernel runs unchecked, only natively, only under the default policy.
    #[test]
    fn only_the_proven_kernel_runs_without_bounds_checks() {
        let ctx = context();
        let layout = ProjectionLayout::new(1, 1, 2, 2, 8);
        let [append, attention, reduce, advance] = variants(&layout, Precision::F32, true);
        assert_eq!(attention.bounds_checks(), BoundsChecks::Proven);
        let native = ctx.info().backend != wgpu::Backend::BrowserWebGpu;
        let policy = BoundsCheckPolicy::from_env().unwrap();
        let expected = if native && policy == BoundsCheckPolicy::ProvenUnchecked {
            BoundsChecks::Proven
        } else {
            BoundsChecks::Checked
        };
        assert_eq!(ctx.bounds_checks(&attention), expected);
        for checked in [append, reduce, advance] {
            assert_eq!(ctx.bounds_checks(&checked), BoundsChecks::Checked);
        }
    }
}
