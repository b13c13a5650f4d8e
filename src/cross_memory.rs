//! A memory: the keys and values that queries attend when they do not come from the queries'
//! own input. An encoder's output (fairseq's `encoder_decoder_attention`), or separate key and
//! value inputs (its general attention with `kdim`/`vdim`), is projected once into GPU-resident
//! search keys and retrieval values, with the layer's extra key rows (`add_bias_kv`,
//! `add_zero_attn`) in front; every later call reads them without projecting again (fairseq's
//! `static_kv`). SPEC.md §9.2 gives the math.
//!
//! A memory is laid out as a KV cache (`crate::kv_cache`): keys per search `[b, s, L, d]`,
//! values once per retrieval `[b, L, r·d]`, the key mask, the first allowed position, with
//! `L = extra rows + memory positions`. So the queries attend it with the cached core's
//! split-KV kernels (`ops::decode::bind_attention`), every query at a position past the last,
//! and the projection writes it with `cache_append`, exactly as a prefill writes a cache:
//! the extra rows at positions `0..e`, the memory's at `e..L`. A query with no allowed position
//! (a fully masked memory and no extra row) attends uniformly to every memory position, as the
//! cached core does for a causal prefix (SPEC.md §6.1).
//!
//! A layer with extra key rows also runs self-attention through a memory of its own input,
//! made per call: every query sees the extra rows and, causal or not, the input's positions
//! it may see (`Visibility`).

use crate::config::Config;
use crate::device_weights::{MemoryProjection, MemoryWeights};
use crate::error::{Error, Result};
use crate::gpu::dispatch::{Dispatch, record_pass};
use crate::gpu::{GpuContext, memory};
use crate::ops::ProjectionLayout;
use crate::ops::decode::CacheBuffers;
use crate::ops::gemm::{GemmPrecision, GemmShape};
use crate::ops::key_values::{MemoryKeys, MemoryRows};
use crate::plan::{BLOCKED_MEMORY_MIN_QUERIES, CorePlan, ExecutionPlan, MemoryCore};
use crate::precision::Precision;
use crate::weights::Weights;
use crate::workspace::StoredKeys;
use crate::workspace::WorkspaceCache;

/// A memory's value mean and, for the blocked core, its texel rows.
pub(crate) struct Attended {
    /// `[b, r·d]` f32: the mean of the values over every position.
    value_mean: wgpu::Buffer,
    rows: Option<MemoryRows>,
    /// `Some(e)`: causal self-attention behind `e` extra rows.
    causal_offset: Option<usize>,
}

impl Attended {
    fn bytes(&self) -> u64 {
        self.value_mean.size() + self.rows.as_ref().map_or(0, MemoryRows::bytes)
    }
}

/// Keys and values projected once from a memory, on the GPU, for
/// [`CompositionalAttention::forward_cross`](crate::CompositionalAttention::forward_cross).
/// See the module documentation.
pub struct Memory {
    pub(crate) layer: u64,
    pub(crate) batch: usize,
    pub(crate) len: usize,
    pub(crate) extra_rows: usize,
    pub(crate) buffers: CacheBuffers,
    /// What the blocked and fused cores read beyond the cache layout, where the layer attends
    /// memories with one of them (`ExecutionPlan::memory_core`).
    pub(crate) attended: Option<Attended>,
    /// The workspaces of the query shapes that attended this memory (they bind its buffers).
    /// An async lock: a call holds it while it builds and records (awaiting pipelines).
    pub(crate) workspaces: futures::lock::Mutex<WorkspaceCache>,
    /// The layer's weights version the memory was projected with.
    pub(crate) weights_version: u64,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("batch", &self.batch)
            .field("len", &self.len)
            .field("extra_rows", &self.extra_rows)
            .field("precision", &self.buffers.precision)
            .finish()
    }
}

/// Which positions of a memory a query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Visibility {
    /// Every position: cross-attention, and non-causal self-attention with extra rows.
    All,
    /// The extra rows and the input's positions up to the query's own: causal self-attention
    /// with extra rows.
    Causal,
}

impl Memory {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Memory positions per sequence (`memory_seq`), the extra key rows not counted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory has no positions (never: a memory holds at least one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The layer's extra key rows in front of the memory's (`add_bias_kv`, `add_zero_attn`).
    pub fn extra_rows(&self) -> usize {
        self.extra_rows
    }

    /// Bytes of GPU memory the memory holds: keys, values, mask and state, and the workspaces of
    /// the query shapes that attended it.
    pub fn gpu_bytes(&self) -> u64 {
        let b = &self.buffers;
        // A call in progress holds the lock: its workspaces are not counted then.
        let workspaces = self
            .workspaces
            .try_lock()
            .map_or(0, |workspaces| workspaces.bytes());
        [&b.keys, &b.values, &b.mask, &b.first_allowed, &b.state]
            .iter()
            .map(|buffer| buffer.size())
            .sum::<u64>()
            + self.attended.as_ref().map_or(0, Attended::bytes)
            + workspaces
    }

    /// The keys and values `plan`'s core reads: with the value mean (and texel rows) for the
    /// blocked and fused cores, the cache layout alone for the split-KV core.
    pub(crate) fn stored_keys(&self, plan: &ExecutionPlan) -> StoredKeys<'_> {
        match (plan.core(), &self.attended) {
            (CorePlan::BlockedMemory(_) | CorePlan::FusedMemory(_), Some(attended)) => {
                StoredKeys::Memory(MemoryKeys {
                    cache: &self.buffers,
                    value_mean: &attended.value_mean,
                    positions: self.positions(),
                    causal_offset: attended.causal_offset,
                    rows: attended.rows.as_ref(),
                })
            }
            _ => StoredKeys::Cache(&self.buffers),
        }
    }

    /// Positions a query attends over: the extra rows and the memory's.
    pub(crate) fn positions(&self) -> usize {
        self.extra_rows + self.len
    }

    /// Fails unless the memory is `layer`'s and its weights are those of `weights_version`.
    pub(crate) fn check_layer(&self, layer: u64, weights_version: u64) -> Result<()> {
        if layer != self.layer {
            return Err(Error::MemoryMismatch(
                "the memory was made by another layer (CompositionalAttention::memory)".into(),
            ));
        }
        if weights_version != self.weights_version {
            return Err(Error::MemoryMismatch(
                "the layer's weights changed since the memory was projected: make it again".into(),
            ));
        }
        Ok(())
    }
}

/// How a memory is projected: its sizes, and where its inputs are.
pub(crate) struct MemoryRequest<'a> {
    pub batch: usize,
    pub len: usize,
    /// `[batch, len, kdim]` f32.
    pub keys: &'a wgpu::Buffer,
    /// `[batch, len, vdim]` f32; `None`: the keys' input (`kdim = vdim`).
    pub values: Option<&'a wgpu::Buffer>,
    /// `[batch, len]` u32, 0 = masked; `None`: every position.
    pub mask: Option<&'a wgpu::Buffer>,
    pub visibility: Visibility,
    /// The query rows per sequence that will attend the memory, where known (self-attention
    /// over its own input): below `BLOCKED_MEMORY_MIN_QUERIES` only the split-KV core reads it,
    /// so the blocked and fused cores' extras are not made.
    pub queries: Option<usize>,
}

/// Refuses, before anything is allocated, a memory whose buffers the device cannot hold.
pub(crate) fn check_sizes(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    batch: usize,
    len: usize,
) -> Result<()> {
    use crate::shape::elements;
    let (kdim, vdim) = config.key_value_dims();
    for (what, width) in [("memory keys input", kdim), ("memory values input", vdim)] {
        let bytes = elements(what, &[batch, len, width])?.saturating_mul(4);
        memory::check_storage_size(ctx, what, bytes, None)?;
    }
    let projection = config.search_width() + config.value_width();
    let bytes =
        elements("memory projection", &[batch, len, projection])?.saturating_mul(precision.bytes());
    memory::check_storage_size(ctx, "memory projection", bytes, None)
}

/// Allocates a memory of `request`'s sizes for `config` and records its projection into
/// `encoder`: the key (and value) GEMMs into `[SK | RV]` rows, their biases, then
/// `cache_append` of the extra rows at positions `0..e` and of the projected rows at `e..L`.
/// The caller checked the sizes ([`check_sizes`], the memory plan) and the input buffers.
pub(crate) async fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    (layer, weights_version): (u64, u64),
    host: &Weights,
    precision: Precision,
    weights: MemoryWeights<'_>,
    request: MemoryRequest<'_>,
) -> Result<Memory> {
    let c = host.config();
    let (batch, len) = (request.batch, request.len);
    let (s, r, d) = (c.num_searches, c.num_retrievals, c.dim_head);
    let extra_rows = c.extra_keys.rows();
    let positions = extra_rows + len;
    let buffers = CacheBuffers {
        precision,
        keys: memory::stored(
            ctx,
            "memory keys",
            &[batch, s, positions, d],
            precision,
            None,
        )?,
        values: memory::stored(
            ctx,
            "memory values",
            &[batch, positions, c.value_width()],
            precision,
            None,
        )?,
        mask: memory::storage(ctx, "memory mask", &[batch, positions], None)?,
        first_allowed: memory::storage_init(
            ctx,
            "memory first allowed position",
            &vec![u32::MAX; batch],
        )?,
        // Where the queries stand: past every position, or (causal) just before the input's.
        state: memory::storage_init(
            ctx,
            "memory visible positions",
            &[match request.visibility {
                Visibility::All => positions as u32,
                Visibility::Causal => extra_rows as u32,
            }],
        )?,
    };
    let layout = ProjectionLayout::keys_values(batch, len, s, r, d);
    let projected = memory::stored(
        ctx,
        "memory projection",
        &[batch, len, layout.row_stride],
        precision,
        None,
    )?;
    let (kdim, vdim) = c.key_value_dims();
    let tiling = crate::plan::buffer_gemm_tiling(ctx);
    let gemm_precision = GemmPrecision {
        lhs: Precision::F32,
        rhs: precision,
        out: precision,
    };
    let shape = |k: usize| GemmShape {
        m: batch * len,
        n: layout.row_stride,
        k,
    };
    let mut dispatches: Vec<Dispatch> = Vec::new();
    match (weights.projection, request.values) {
        (MemoryProjection::OneInput(both), None) => {
            dispatches.extend(
                crate::ops::gemm::buffer_dispatches(
                    ctx,
                    tiling,
                    shape(kdim),
                    gemm_precision,
                    request.keys,
                    both,
                    &projected,
                )
                .await?,
            );
        }
        (MemoryProjection::TwoInputs { keys, values }, Some(value_input)) => {
            for (input, weight, k, add) in [
                (request.keys, keys, kdim, false),
                (value_input, values, vdim, true),
            ] {
                dispatches.extend(
                    crate::ops::gemm::buffer_dispatches_onto(
                        ctx,
                        tiling,
                        shape(k),
                        gemm_precision,
                        input,
                        weight,
                        &projected,
                        add,
                    )
                    .await?,
                );
            }
        }
        _ => {
            return Err(Error::InvalidConfig {
                field: "memory",
                value: String::new(),
                reason: "the memory's weights were uploaded for another number of inputs",
            });
        }
    }
    if let Some(bias) = weights.bias {
        dispatches.push(
            crate::ops::bias_add::dispatch(
                ctx,
                batch * len,
                layout.row_stride,
                bias,
                &projected,
                precision,
            )
            .await?,
        );
    }
    // The extra rows, the same for every sequence, at positions 0..e, always attendable.
    let mut held = vec![projected];
    if extra_rows > 0 {
        let rows = extra_key_rows(host);
        let mut data = Vec::with_capacity(batch * rows.len());
        for _ in 0..batch {
            data.extend_from_slice(&rows);
        }
        let extra = memory::stored_init(ctx, "memory extra rows", &data, precision)?;
        let extra_mask = memory::storage_init(
            ctx,
            "memory extra rows' mask",
            &vec![1u32; batch * extra_rows],
        )?;
        let at = memory::storage_init(ctx, "memory extra rows' position", &[0u32])?;
        let extra_layout = ProjectionLayout::keys_values(batch, extra_rows, s, r, d);
        dispatches.push(
            crate::ops::decode::bind_append(
                ctx,
                &extra_layout,
                positions,
                &extra,
                &extra_mask,
                &buffers,
                &at,
            )
            .await?,
        );
        held.extend([extra, extra_mask, at]);
    }
    let all = match request.mask {
        Some(_) => None,
        None => Some(memory::storage_init(
            ctx,
            "memory mask (every position)",
            &vec![1u32; batch * len],
        )?),
    };
    let mask = request.mask.or(all.as_ref()).ok_or(Error::InvalidConfig {
        field: "memory mask",
        value: String::new(),
        reason: "no mask buffer",
    })?;
    let at = memory::storage_init(ctx, "memory first position", &[extra_rows as u32])?;
    dispatches.push(
        crate::ops::decode::bind_append(ctx, &layout, positions, &held[0], mask, &buffers, &at)
            .await?,
    );
    // Where the layer attends memories with the blocked or fused core, the value mean (and the
    // blocked core's texel rows).
    let core = match request.queries {
        Some(queries) if queries < BLOCKED_MEMORY_MIN_QUERIES => None,
        _ => ExecutionPlan::memory_core(ctx, c, batch, positions),
    };
    let attended = match core {
        Some(core) => {
            let keys = ProjectionLayout::new(batch, positions, s, r, d);
            let (value_mean, mean) =
                crate::ops::key_values::memory_value_mean(ctx, &keys, &buffers).await?;
            dispatches.push(mean);
            let rows = match core {
                MemoryCore::Blocked(_) => {
                    let (rows, keys_copy, values_copy) =
                        crate::ops::key_values::memory_rows(ctx, &keys, &buffers).await?;
                    dispatches.extend([keys_copy, values_copy]);
                    Some(rows)
                }
                MemoryCore::Fused(_) => None,
            };
            Some(Attended {
                value_mean,
                rows,
                causal_offset: match request.visibility {
                    Visibility::All => None,
                    Visibility::Causal => Some(extra_rows),
                },
            })
        }
        None => None,
    };
    // The recorded commands keep the buffers they use (`held`, `all`, `at`) alive.
    record_pass(encoder, "memory projection", &dispatches);
    Ok(Memory {
        layer,
        batch,
        len,
        extra_rows,
        buffers,
        attended,
        workspaces: futures::lock::Mutex::new(WorkspaceCache::new()),
        weights_version,
    })
}

/// The extra rows of one sequence as `[SK | RV]` rows `[e, (s + r)·d]`: the learned row
/// (`bias_k` per search, `bias_v` per retrieval), then the zero row.
fn extra_key_rows(host: &Weights) -> Vec<f32> {
    let c = host.config();
    let mut rows = Vec::new();
    if let (true, Some((bias_k, bias_v))) = (c.extra_keys.bias_kv, &host.bias_kv) {
        rows.extend_from_slice(bias_k);
        rows.extend_from_slice(bias_v);
    }
    if c.extra_keys.zero_attn {
        rows.resize(rows.len() + c.search_width() + c.value_width(), 0.0);
    }
    rows
}
