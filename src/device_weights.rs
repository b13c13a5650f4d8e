//! The layer's parameters on the device, uploaded on first use by a plan that reads them.
//!
//! Which matrices exist depends on the plan: the unfused core reads the projections as SPEC
//! writes them and `W_rk` on its own; the fused cores read `W_q̃ = W_rkᵀ·W_rq` folded into the
//! projection instead; texel-operand GEMMs read every matrix as texel rows. Uploading only what
//! a plan reads keeps a fused-only layer from holding a second packed projection it never uses.

use crate::error::Result;
use crate::gpu::texture::TexelRows;
use crate::gpu::{GpuContext, memory};
use crate::ops::retrieval_select::MlpWeights;
use crate::plan::{ExecutionPlan, GemmPlan, GemmTiling, ProjectionWeights, TexelGemmKernel};
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

/// The two GEMM weights of a plan, in the storage of its GEMM.
pub(crate) enum GemmWeights<'a> {
    Buffers {
        tiling: GemmTiling,
        projection: &'a wgpu::Buffer,
        out: &'a wgpu::Buffer,
    },
    Texels {
        /// The plan's texel kernels of the input and output projections.
        input: TexelGemmKernel,
        output: TexelGemmKernel,
        projection: &'a TexelRows,
        out: &'a TexelRows,
    },
}

/// The biases of a biased layer, f32: the packed projection's `[SQ | SK | RQ or Q̃ | RV]`
/// (matching the plan's projection weights) and the output's.
pub(crate) struct PlanBiases<'a> {
    pub projection: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

/// Everything a plan reads, uploaded.
pub(crate) struct PlanWeights<'a> {
    /// Packed input projections `[(3s + r)·d, dim]` and `W_o [dim, s·d]`.
    pub gemm: GemmWeights<'a>,
    /// `W_rk [d, d]` where the plan reads it on its own (unfused).
    pub retrieval_keys: Option<&'a wgpu::Buffer>,
    /// LayerNorm `(γ, β)` with `prenorm`.
    pub norm: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    /// With `Config::bias`.
    pub biases: Option<PlanBiases<'a>>,
    /// The MLP score network (`Config::selection_mlp`) where the plan reads it (unfused), in
    /// place of `W_rk`.
    pub selection_mlp: Option<MlpWeights<'a>>,
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
        }
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
    }

    /// Uploads what `plan` reads that is not on the device yet, and returns all of it.
    pub(crate) fn for_plan(
        &mut self,
        ctx: &GpuContext,
        plan: &ExecutionPlan,
    ) -> Result<PlanWeights<'_>> {
        let host = &self.host;
        let c = *host.config();
        let (width, dim) = (c.projection_width(), c.dim);
        let (projection, projection_data): (&mut Stored, fn(&Weights) -> Vec<f32>) =
            match plan.projection_weights() {
                ProjectionWeights::Plain => (&mut self.plain, plain_projection),
                ProjectionWeights::RetrievalFolded => (&mut self.folded, folded_projection),
            };
        let label = match plan.projection_weights() {
            ProjectionWeights::Plain => "packed input projections",
            ProjectionWeights::RetrievalFolded => "packed input projections (W_rk folded)",
        };
        // A layer's plans share its precision, so each matrix is stored in one.
        let precision = plan.precision();
        let gemm = match plan.gemm() {
            GemmPlan::Buffers(tiling) => GemmWeights::Buffers {
                tiling,
                projection: filled(&mut projection.buffer, || {
                    log::debug!("uploading {label} as an {precision} buffer");
                    memory::stored_init(ctx, label, &projection_data(host), precision)
                })?,
                out: filled(&mut self.out.buffer, || {
                    memory::stored_init(ctx, "to_out.weight", &host.out, precision)
                })?,
            },
            GemmPlan::Texels { input, output } => GemmWeights::Texels {
                input,
                output,
                projection: filled(&mut projection.texels, || {
                    log::debug!("uploading {label} as {precision} texel rows");
                    TexelRows::with_data_in(
                        ctx,
                        label,
                        width,
                        dim,
                        &projection_data(host),
                        precision,
                    )
                })?,
                out: filled(&mut self.out.texels, || {
                    TexelRows::with_data_in(
                        ctx,
                        "to_out.weight",
                        dim,
                        c.search_width(),
                        &host.out,
                        precision,
                    )
                })?,
            },
        };
        let mlp_units = c.selection_mlp.filter(|_| plan.reads_retrieval_keys());
        let selection_mlp = match (mlp_units, &host.selection_mlp) {
            (Some(units), Some(m)) => {
                let (hidden, score) = filled(&mut self.selection_mlp, || {
                    Ok((
                        memory::storage_init(ctx, "selection_mlp.hidden", &m.hidden)?,
                        memory::storage_init(ctx, "selection_mlp.score", &m.score)?,
                    ))
                })?;
                Some(MlpWeights {
                    units,
                    hidden,
                    score,
                })
            }
            _ => None,
        };
        let retrieval_keys = if plan.reads_retrieval_keys() && selection_mlp.is_none() {
            Some(filled(&mut self.retrieval_keys, || {
                memory::storage_init(ctx, "to_retrieval_keys.weight", &host.retrieval_keys)
            })?)
        } else {
            None
        };
        let norm = match &host.norm {
            Some((gamma, beta)) => {
                let (g, b) = filled(&mut self.norm, || {
                    Ok((
                        memory::storage_init(ctx, "norm.weight", gamma)?,
                        memory::storage_init(ctx, "norm.bias", beta)?,
                    ))
                })?;
                Some((g, b))
            }
            None => None,
        };
        let biases = match &host.biases {
            Some(b) => {
                let (slot, packed): (_, fn(&Weights) -> Vec<f32>) = match plan.projection_weights()
                {
                    ProjectionWeights::Plain => (&mut self.plain_bias, plain_projection_bias),
                    ProjectionWeights::RetrievalFolded => {
                        (&mut self.folded_bias, folded_projection_bias)
                    }
                };
                let projection = filled(slot, || {
                    memory::storage_init(ctx, "packed projection biases", &packed(host))
                })?;
                let out = filled(&mut self.out_bias, || {
                    memory::storage_init(ctx, "to_out.bias", &b.out)
                })?;
                Some(PlanBiases { projection, out })
            }
            None => None,
        };
        Ok(PlanWeights {
            gemm,
            retrieval_keys,
            norm,
            biases,
            selection_mlp,
        })
    }
}

/// `[b_sq; b_sk; b_rq; b_rv]` (with biases; else empty).
fn plain_projection_bias(w: &Weights) -> Vec<f32> {
    w.biases.as_ref().map_or_else(Vec::new, |b| {
        [
            &b.search_queries[..],
            &b.search_keys[..],
            &b.retrieval_queries[..],
            &b.retrieval_values[..],
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
            &b.search_keys[..],
            &fold_retrieval_keys(w, &b.retrieval_queries, 1)[..],
            &b.retrieval_values[..],
        ]
        .concat()
    })
}

/// `[W_sq; W_sk; W_rq; W_rv]`.
fn plain_projection(w: &Weights) -> Vec<f32> {
    [
        &w.search_queries[..],
        &w.search_keys[..],
        &w.retrieval_queries[..],
        &w.retrieval_values[..],
    ]
    .concat()
}

/// `[W_sq; W_sk; W_q̃; W_rv]`.
fn folded_projection(w: &Weights) -> Vec<f32> {
    [
        &w.search_queries[..],
        &w.search_keys[..],
        &fold_retrieval_keys(w, &w.retrieval_queries, w.config().dim)[..],
        &w.retrieval_values[..],
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
