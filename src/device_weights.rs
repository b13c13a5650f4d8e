//! The layer's parameters on the device, uploaded on first use by a plan that reads them.
//!
//! Which matrices exist depends on the plan: the unfused core reads the projections as SPEC
//! writes them and `W_rk` on its own; the fused cores read `W_q̃ = W_rkᵀ·W_rq` folded into the
//! projection instead; texel-operand GEMMs read every matrix as texel rows. Uploading only what
//! a plan reads keeps a fused-only layer from holding a second packed projection it never uses.

use crate::error::Result;
use crate::gpu::texture::TexelRows;
use crate::gpu::{GpuContext, memory};
use crate::ops::retrieval_select::{MlpWeights, Selection};
use crate::plan::{
    BufferCore, CachedPlan, ExecutionPlan, FusedPlan, GemmPlan, GemmTiling, ProjectionWeights,
    Route, TexelCore, TexelGemmKernel,
};
use crate::weights::Weights;

/// One weight matrix in every storage it was asked for.
#[derive(Default)]
struct Stored {
    buffer: Option<wgpu::Buffer>,
    texels: Option<TexelRows>,
}

impl Stored {
    fn bytes(&self) -> u64 {
        self.buffer.as_ref().map_or(0, wgpu::Buffer::size)
            + self.texels.as_ref().map_or(0, TexelRows::bytes)
    }
}

/// Takes the value out of `slot` or makes it, and puts it back: a fallible `get_or_insert_with`.
fn filled<T>(slot: &mut Option<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    let value = match slot.take() {
        Some(value) => value,
        None => make()?,
    };
    Ok(slot.insert(value))
}

/// The texel GEMMs' kernels (the plan's, chosen per GEMM for its row count) and their weights as
/// texel rows.
pub(crate) struct TexelGemmWeights<'a> {
    pub input: TexelGemmKernel,
    pub output: TexelGemmKernel,
    pub projection: &'a TexelRows,
    pub out: &'a TexelRows,
}

/// The two GEMM weights of a buffer-route plan, in the storage of its GEMM.
pub(crate) enum GemmWeights<'a> {
    Buffers {
        tiling: GemmTiling,
        projection: &'a wgpu::Buffer,
        out: &'a wgpu::Buffer,
    },
    /// Texel GEMMs whose buffer operands are copied into texel rows.
    Texels(TexelGemmWeights<'a>),
}

/// The biases of a biased layer, f32: the packed projection's `[SQ | SK | RQ or Q̃ | RV]`
/// (matching the plan's projection weights) and the output's.
pub(crate) struct PlanBiases<'a> {
    pub projection: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

/// A buffer core with the weights it reads on its own.
pub(crate) enum BufferCoreWeights<'a> {
    /// The fused core, and the MLP score network that selects after it (`plan.stores_retrieved`).
    Fused {
        plan: FusedPlan,
        mlp: Option<MlpWeights<'a>>,
    },
    /// The fused core over a memory's cache buffers, passed when the workspace is built.
    FusedMemory(FusedPlan),
    /// The unfused core and its selection: `W_rk`, or the MLP score network.
    Unfused(Selection<'a>),
    /// The split-KV core over a KV cache (its buffers passed when the workspace is built), and
    /// the MLP score network that selects after it (with `Config::selection_mlp`).
    Cached {
        plan: CachedPlan,
        mlp: Option<MlpWeights<'a>>,
    },
    /// Queries over a memory, whose buffers the workspace is built with, and the MLP score
    /// network that selects after it (with `Config::selection_mlp`).
    Memory {
        plan: CachedPlan,
        mlp: Option<MlpWeights<'a>>,
    },
}

/// The plan's [`Route`] with the weights each part reads: the one value the workspace builds
/// from, so that a core never meets a GEMM or storage it does not read.
pub(crate) enum RouteWeights<'a> {
    /// Texel operands: texel GEMMs on both sides, and no biases (a biased layer's plans take
    /// the buffer route).
    Texels {
        gemm: TexelGemmWeights<'a>,
        core: TexelCore,
    },
    Buffers {
        gemm: GemmWeights<'a>,
        /// With `Config::bias`.
        biases: Option<PlanBiases<'a>>,
        core: BufferCoreWeights<'a>,
    },
}

/// Everything a plan reads, uploaded.
pub(crate) struct PlanWeights<'a> {
    /// LayerNorm `(γ, β)` with `prenorm`.
    pub norm: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    /// The GEMMs' weights (packed input projections `[(3s + r)·d, dim]` and `W_o [dim, s·d]`),
    /// the biases and the core, as the plan's route pairs them.
    pub route: RouteWeights<'a>,
}

/// Parameters on the device, and the host copy they are uploaded from.
pub(crate) struct DeviceWeights {
    host: Weights,
    plain: Stored,
    folded: Stored,
    out: Stored,
    retrieval_keys: Option<wgpu::Buffer>,
    norm: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Packed projection biases, plain and folded (as the weights), and the output bias.
    plain_bias: Option<wgpu::Buffer>,
    folded_bias: Option<wgpu::Buffer>,
    out_bias: Option<wgpu::Buffer>,
    /// `(W_h, w_s)` of the MLP score network.
    selection_mlp: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// The memory's projections (`crate::cross_memory`), uploaded when a layer first makes one.
    memory: MemorySlots,
}

/// The memory projection's weights as [`DeviceWeights::for_memory`] uploads them.
#[derive(Default)]
struct MemorySlots {
    /// `[W_sk; W_rv]` `[(s + r)·d, kdim]`: one GEMM over one input (`kdim = vdim`).
    both: Option<wgpu::Buffer>,
    /// `[W_sk; 0]` `[(s + r)·d, kdim]` and `[0; W_rv]` `[(s + r)·d, vdim]`: two GEMMs over
    /// separate key and value inputs, the second adding to the first's output.
    keys: Option<wgpu::Buffer>,
    values: Option<wgpu::Buffer>,
    /// `[b_sk; b_rv]` (with `Config::bias`).
    bias: Option<wgpu::Buffer>,
}

impl MemorySlots {
    fn bytes(&self) -> u64 {
        [&self.both, &self.keys, &self.values, &self.bias]
            .iter()
            .filter_map(|b| b.as_ref().map(wgpu::Buffer::size))
            .sum()
    }
}

/// The weights that project a memory's inputs into `[SK | RV]` rows, uploaded in the layer's
/// precision (biases f32).
pub(crate) struct MemoryWeights<'a> {
    pub projection: MemoryProjection<'a>,
    /// `[b_sk; b_rv]` (with `Config::bias`).
    pub bias: Option<&'a wgpu::Buffer>,
}

/// How a memory's keys and values are projected: from one input, or from two.
pub(crate) enum MemoryProjection<'a> {
    /// `[W_sk; W_rv]` over the one input.
    OneInput(&'a wgpu::Buffer),
    /// `[W_sk; 0]` over the key input, then `[0; W_rv]` over the value input, accumulated.
    TwoInputs {
        keys: &'a wgpu::Buffer,
        values: &'a wgpu::Buffer,
    },
}

impl DeviceWeights {
    /// Keeps the host weights; uploads nothing yet.
    pub(crate) fn new(weights: &Weights) -> DeviceWeights {
        DeviceWeights {
            host: weights.clone(),
            plain: Stored::default(),
            folded: Stored::default(),
            out: Stored::default(),
            retrieval_keys: None,
            norm: None,
            plain_bias: None,
            folded_bias: None,
            out_bias: None,
            selection_mlp: None,
            memory: MemorySlots::default(),
        }
    }

    /// The memory projection's weights for keys and values from one input (`two_inputs`
    /// false; needs `kdim = vdim`) or from two, uploaded in `precision` on first use.
    pub(crate) fn for_memory(
        &mut self,
        ctx: &GpuContext,
        precision: crate::precision::Precision,
        two_inputs: bool,
    ) -> Result<MemoryWeights<'_>> {
        let DeviceWeights { host, memory, .. } = self;
        let c = *host.config();
        let (kdim, vdim) = c.key_value_dims();
        let (sw, vw) = (c.search_width(), c.value_width());
        let upload =
            |label: &str, data: Vec<f32>| memory::stored_init(ctx, label, &data, precision);
        let MemorySlots {
            both,
            keys,
            values,
            bias,
        } = memory;
        let projection = if two_inputs {
            let keys = filled(keys, || {
                let mut data = host.search_keys.clone();
                data.resize((sw + vw) * kdim, 0.0);
                upload("memory projection [W_sk; 0]", data)
            })?;
            let values = filled(values, || {
                let mut data = vec![0.0; sw * vdim];
                data.extend_from_slice(&host.retrieval_values);
                upload("memory projection [0; W_rv]", data)
            })?;
            MemoryProjection::TwoInputs { keys, values }
        } else {
            MemoryProjection::OneInput(filled(both, || {
                upload(
                    "memory projection [W_sk; W_rv]",
                    [&host.search_keys[..], &host.retrieval_values[..]].concat(),
                )
            })?)
        };
        let bias = match &host.biases {
            Some(b) => Some(filled(bias, || {
                memory::storage_init(
                    ctx,
                    "memory projection biases",
                    &[&b.search_keys[..], &b.retrieval_values[..]].concat(),
                )
            })?),
            None => None,
        };
        Ok(MemoryWeights { projection, bias })
    }

    /// The host weights the device forms are made from.
    pub(crate) fn host(&self) -> &Weights {
        &self.host
    }

    /// Bytes on the device.
    pub(crate) fn bytes(&self) -> u64 {
        let norm = self
            .norm
            .as_ref()
            .map_or(0, |(gamma, beta)| gamma.size() + beta.size());
        let biases: u64 = [&self.plain_bias, &self.folded_bias, &self.out_bias]
            .iter()
            .filter_map(|b| b.as_ref().map(wgpu::Buffer::size))
            .sum();
        let mlp = self
            .selection_mlp
            .as_ref()
            .map_or(0, |(h, s)| h.size() + s.size());
        self.plain.bytes()
            + self.folded.bytes()
            + self.out.bytes()
            + self.retrieval_keys.as_ref().map_or(0, wgpu::Buffer::size)
            + norm
            + biases
            + mlp
            + self.memory.bytes()
    }

    /// Uploads what `plan` reads that is not on the device yet, and returns all of it, paired
    /// as the plan's route pairs it. A plan resolved for another configuration (a texel route
    /// for a biased layer) is an error.
    pub(crate) fn for_plan(
        &mut self,
        ctx: &GpuContext,
        plan: &ExecutionPlan,
    ) -> Result<PlanWeights<'_>> {
        let DeviceWeights {
            host,
            plain,
            folded,
            out,
            retrieval_keys,
            norm,
            plain_bias,
            folded_bias,
            out_bias,
            selection_mlp,
            memory: _,
        } = self;
        let host = &*host;
        let c = *host.config();
        // The input projection as the core reads it: plain (unfused) or with W_rk folded in.
        let (projection, projection_bias, packed): (_, _, Packed) = match plan.projection_weights()
        {
            ProjectionWeights::Plain => (
                plain,
                plain_bias,
                Packed {
                    label: "packed input projections",
                    weight: plain_projection,
                    bias: plain_projection_bias,
                },
            ),
            ProjectionWeights::RetrievalFolded => (
                folded,
                folded_bias,
                Packed {
                    label: "packed input projections (W_rk folded)",
                    weight: folded_projection,
                    bias: folded_projection_bias,
                },
            ),
        };
        // A layer's plans share its precision, so each matrix is stored in one.
        let upload = Upload {
            ctx,
            host,
            precision: plan.precision(),
        };
        let norm = match &host.norm {
            Some((gamma, beta)) => {
                let (g, b) = filled(norm, || {
                    Ok((
                        memory::storage_init(ctx, "norm.weight", gamma)?,
                        memory::storage_init(ctx, "norm.bias", beta)?,
                    ))
                })?;
                Some((g, b))
            }
            None => None,
        };
        let route = match plan.route() {
            Route::Texels {
                input,
                output,
                core,
            } => {
                if host.biases.is_some() {
                    return Err(crate::Error::InvalidConfig {
                        field: "execution plan",
                        value: plan.describe(),
                        reason: "a biased layer's plans keep the core's operands in buffers \
                                 (biases are added to buffers); this plan was resolved for \
                                 another configuration",
                    });
                }
                RouteWeights::Texels {
                    gemm: upload.texel_gemm((*input, *output), &packed, projection, out)?,
                    core: core.clone(),
                }
            }
            Route::Buffers { gemm, core } => {
                let gemm = match *gemm {
                    GemmPlan::Buffers(tiling) => GemmWeights::Buffers {
                        tiling,
                        projection: filled(&mut projection.buffer, || {
                            log::debug!(
                                "uploading {} as an {} buffer",
                                packed.label,
                                upload.precision
                            );
                            memory::stored_init(
                                ctx,
                                packed.label,
                                &(packed.weight)(host),
                                upload.precision,
                            )
                        })?,
                        out: filled(&mut out.buffer, || {
                            memory::stored_init(ctx, "to_out.weight", &host.out, upload.precision)
                        })?,
                    },
                    GemmPlan::Texels { input, output } => GemmWeights::Texels(upload.texel_gemm(
                        (input, output),
                        &packed,
                        projection,
                        out,
                    )?),
                };
                let biases = match &host.biases {
                    Some(b) => Some(PlanBiases {
                        projection: filled(projection_bias, || {
                            memory::storage_init(
                                ctx,
                                "packed projection biases",
                                &(packed.bias)(host),
                            )
                        })?,
                        out: filled(out_bias, || {
                            memory::storage_init(ctx, "to_out.bias", &b.out)
                        })?,
                    }),
                    None => None,
                };
                // The MLP score network, for the unfused selection and the cores that store the
                // retrieved vectors for it (uploaded once, `None` without one).
                let selects_with_mlp = match core {
                    BufferCore::Fused(fused) => fused.stores_retrieved,
                    BufferCore::Cached(split) | BufferCore::Memory(split) => split.mlp_selection,
                    BufferCore::Unfused => true,
                    BufferCore::FusedMemory(_) => false,
                };
                let mlp = match selects_with_mlp {
                    true => upload_mlp(ctx, host, selection_mlp)?,
                    false => None,
                };
                let core = match core {
                    BufferCore::Fused(fused) => BufferCoreWeights::Fused {
                        plan: fused.clone(),
                        mlp,
                    },
                    BufferCore::FusedMemory(fused) => BufferCoreWeights::FusedMemory(fused.clone()),
                    BufferCore::Cached(cached) => BufferCoreWeights::Cached {
                        plan: cached.splits,
                        mlp,
                    },
                    BufferCore::Memory(memory) => BufferCoreWeights::Memory {
                        plan: memory.splits,
                        mlp,
                    },
                    BufferCore::Unfused => BufferCoreWeights::Unfused(match mlp {
                        Some(mlp) => Selection::Mlp(mlp),
                        None => Selection::DotProduct {
                            scale: c.scale() as f32,
                            w_rk: filled(retrieval_keys, || {
                                memory::storage_init(
                                    ctx,
                                    "to_retrieval_keys.weight",
                                    &host.retrieval_keys,
                                )
                            })?,
                        },
                    }),
                };
                RouteWeights::Buffers { gemm, biases, core }
            }
        };
        Ok(PlanWeights { norm, route })
    }
}

/// The packed input projection a plan reads: its label, and how to pack its weight and bias.
struct Packed {
    label: &'static str,
    weight: fn(&Weights) -> Vec<f32>,
    bias: fn(&Weights) -> Vec<f32>,
}

/// What an upload needs: the device, the host weights and the layer's storage precision.
struct Upload<'h> {
    ctx: &'h GpuContext,
    host: &'h Weights,
    precision: crate::precision::Precision,
}

impl Upload<'_> {
    /// The texel GEMMs' weights, uploaded as texel rows where not yet on the device.
    fn texel_gemm<'a>(
        &self,
        (input, output): (TexelGemmKernel, TexelGemmKernel),
        packed: &Packed,
        projection: &'a mut Stored,
        out: &'a mut Stored,
    ) -> Result<TexelGemmWeights<'a>> {
        let (ctx, host, precision) = (self.ctx, self.host, self.precision);
        let c = host.config();
        Ok(TexelGemmWeights {
            input,
            output,
            projection: filled(&mut projection.texels, || {
                log::debug!("uploading {} as {precision} texel rows", packed.label);
                TexelRows::with_data_in(
                    ctx,
                    packed.label,
                    c.projection_width(),
                    c.dim,
                    &(packed.weight)(host),
                    precision,
                )
            })?,
            out: filled(&mut out.texels, || {
                TexelRows::with_data_in(
                    ctx,
                    "to_out.weight",
                    c.dim,
                    c.search_width(),
                    &host.out,
                    precision,
                )
            })?,
        })
    }
}

/// The MLP score network's weights `(W_h, w_s)` (with `Config::selection_mlp`), uploaded into
/// `slot` on first use.
fn upload_mlp<'a>(
    ctx: &GpuContext,
    host: &Weights,
    slot: &'a mut Option<(wgpu::Buffer, wgpu::Buffer)>,
) -> Result<Option<MlpWeights<'a>>> {
    let Some(m) = &host.selection_mlp else {
        return Ok(None);
    };
    let (hidden, score) = filled(slot, || {
        Ok((
            memory::storage_init(ctx, "selection_mlp.hidden", &m.hidden)?,
            memory::storage_init(ctx, "selection_mlp.score", &m.score)?,
        ))
    })?;
    Ok(Some(MlpWeights {
        units: m.score.len(),
        hidden,
        score,
    }))
}

/// A key or value block of the packed projection from the query input `[rows, cols]`: the
/// tensor itself, or zeros in a cross-attention layer whose `W_sk`, `W_rv` are not as wide as
/// the input (its keys and values come from the memory's own projection,
/// `crate::cross_memory`).
/// `rows` is the block's output width (`s·d` or `r·d`), `cols` its input's (`dim`, or 1 for a
/// bias).
fn query_side<'a>(
    w: &Weights,
    tensor: &'a [f32],
    rows: usize,
    cols: usize,
) -> std::borrow::Cow<'a, [f32]> {
    let c = w.config();
    match c.key_value_dims() == (c.dim, c.dim) {
        true => std::borrow::Cow::Borrowed(tensor),
        false => std::borrow::Cow::Owned(vec![0.0; rows * cols]),
    }
}

/// `[b_sq; b_sk; b_rq; b_rv]` (with biases; else empty).
fn plain_projection_bias(w: &Weights) -> Vec<f32> {
    w.biases.as_ref().map_or_else(Vec::new, |b| {
        [
            &b.search_queries[..],
            &query_side(w, &b.search_keys, w.config().search_width(), 1)[..],
            &b.retrieval_queries[..],
            &query_side(w, &b.retrieval_values, w.config().value_width(), 1)[..],
        ]
        .concat()
    })
}

/// `[b_sq; b_sk; b_q̃; b_rv]` with `b_q̃ = fold_retrieval_keys(b_rq)`: the bias of `RQ·W_rk`, as
/// [`folded_projection`] folds the weight (with biases; else empty).
fn folded_projection_bias(w: &Weights) -> Vec<f32> {
    w.biases.as_ref().map_or_else(Vec::new, |b| {
        [
            &b.search_queries[..],
            &query_side(w, &b.search_keys, w.config().search_width(), 1)[..],
            &fold_retrieval_keys(w, &b.retrieval_queries, 1)[..],
            &query_side(w, &b.retrieval_values, w.config().value_width(), 1)[..],
        ]
        .concat()
    })
}

/// `[W_sq; W_sk; W_rq; W_rv]`.
fn plain_projection(w: &Weights) -> Vec<f32> {
    [
        &w.search_queries[..],
        &query_side(w, &w.search_keys, w.config().search_width(), w.config().dim)[..],
        &w.retrieval_queries[..],
        &query_side(
            w,
            &w.retrieval_values,
            w.config().value_width(),
            w.config().dim,
        )[..],
    ]
    .concat()
}

/// `[W_sq; W_sk; W_q̃; W_rv]`.
fn folded_projection(w: &Weights) -> Vec<f32> {
    [
        &w.search_queries[..],
        &query_side(w, &w.search_keys, w.config().search_width(), w.config().dim)[..],
        &fold_retrieval_keys(w, &w.retrieval_queries, w.config().dim)[..],
        &query_side(
            w,
            &w.retrieval_values,
            w.config().value_width(),
            w.config().dim,
        )[..],
    ]
    .concat()
}

/// `out[σ·d + k, c] = Σ_k' W_rk[k', k] · rq[σ·d + k', c]` for `rq [s·d, cols]`, accumulated in
/// f64: `W_q̃` from `W_rq` (`cols = dim`), the weight that maps the (normalised) input straight
/// to `RQ·W_rk` for every search, and `b_q̃` from `b_rq` (`cols = 1`).
fn fold_retrieval_keys(weights: &Weights, rq: &[f32], cols: usize) -> Vec<f32> {
    let c = weights.config();
    let d = c.dim_head;
    let mut fused = vec![0.0f32; c.search_width() * cols];
    let mut row = vec![0.0f64; cols];
    for sigma in 0..c.num_searches {
        for k in 0..d {
            row.fill(0.0);
            for k_in in 0..d {
                let w = weights.retrieval_keys[k_in * d + k] as f64;
                let rq_row = &rq[(sigma * d + k_in) * cols..][..cols];
                for (acc, &v) in row.iter_mut().zip(rq_row) {
                    *acc += w * v as f64;
                }
            }
            for (out, acc) in fused[(sigma * d + k) * cols..][..cols].iter_mut().zip(&row) {
                *out = *acc as f32;
            }
        }
    }
    fused
}
