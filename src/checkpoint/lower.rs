//! Lowering the general form onto the layer's kernels (SPEC.md §9.1).
//!
//! The kernels compute lucidrains' form with biases: search logits `d^-½·SQ·SK`, retrieval
//! logits `d^-½·Q̃·Ret` with `Q̃ = RQ·W_rk` folded into the projection, one width `d` for heads,
//! values and retrieval queries. Every other form maps onto that exactly, by rewriting weights
//! on the host, because what differs is linear or cancels:
//!
//! * widths: heads and values are zero-padded to `w = max(hd, vd)` (zero columns add nothing to
//!   a dot product, and the output projection ignores the padded value columns);
//! * scales: the search scale `hd^-½` and the selection scale `sel^-½` (or 1 for a score
//!   network) are folded into the query weights, against the kernels' `w^-½`;
//! * the dot-product selection `sel^-½·vq·(Ret·W_vkᵀ + b_vk)`: `vq·b_vk` is the same for every
//!   retrieval and cancels in the retrieval softmax; what remains is `(vq·W_vk)·Ret`, so
//!   `Q̃ = vq·W_vk`, linear in `x` (also with `q_compose`, where `vq` is linear in the search
//!   query, itself linear in `x`);
//! * the linear score network `[Ret, vq]·w_snᵀ + b`: only `Ret·w_ret` differs between
//!   retrievals, so `Q̃ = w_ret` for every token: a zero weight with `w_ret` as its bias;
//! * the MLP score network `relu([Ret, vq]·W_1ᵀ + b_1)·w_2ᵀ + b_2` is not linear in `Ret`: its
//!   query half `u = vq·W_1,vqᵀ + b_1` (linear in `x`) takes the retrieval-query block, and
//!   `W_1,Ret` and `w_2` become the layer's `selection_mlp` (`Config::selection_mlp`), which
//!   the unfused strategy's `retrieval_select` kernel runs with `io/select_mlp.wgsl` (heads padded to `max(hd, vd, sel)`).
//!
//! lucidrains' and Keras' form (a dot product with `hd = vd = sel`, no `q_compose`) lowers to
//! itself: the layer runs the same kernels as a lucidrains checkpoint, at the same speed.

use crate::checkpoint::{Checkpoint, Linear, Selection, SelectionWeights};
use crate::config::{Config, ExtraKeys, MemoryDims};
use crate::error::{Error, Result};
use crate::host_memory::{self, try_tensor};
use crate::weights::{Biases, SelectionMlp, Weights};

/// How a checkpoint maps onto the layer's parameters: the one decision that
/// [`Checkpoint::layer_weights`] and its adjoint, [`Checkpoint::gradients`], both follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lowering {
    /// lucidrains' and Keras' form: the checkpoint's tensors are the layer's, one to one.
    Itself,
    /// Every other form: heads and values padded to `width`, scales and the selection folded.
    Padded {
        /// `max(hd, vd)`, or `max(hd, vd, sel)` with the MLP score network.
        width: usize,
    },
}

impl Checkpoint {
    /// Which [`Lowering`] this checkpoint takes.
    pub(super) fn lowering(&self) -> Lowering {
        let f = &self.form;
        let same_widths = f.head_dim == f.value_dim && f.value_dim == f.selection_dim;
        let dot_product = matches!(self.weights.selection, SelectionWeights::DotProduct { .. });
        if same_widths && !f.q_compose && dot_product {
            return Lowering::Itself;
        }
        let (hd, vd, sel) = (f.head_dim, f.value_dim, f.selection_dim);
        let width = match f.selection {
            Selection::MlpScore => hd.max(vd).max(sel),
            _ => hd.max(vd),
        };
        Lowering::Padded { width }
    }

    /// The configuration of the layer this checkpoint lowers to (without dropout).
    pub(super) fn lowered_config(&self) -> Config {
        let f = &self.form;
        let w = &self.weights;
        let (width, bias, mlp) = match self.lowering() {
            Lowering::Itself => {
                let bias = [&w.q, &w.k, &w.v, &w.value_q, &w.out]
                    .iter()
                    .any(|l| l.bias.is_some());
                (f.head_dim, bias, None)
            }
            Lowering::Padded { width } => (
                width,
                true,
                (f.selection == Selection::MlpScore).then_some(f.selection_dim),
            ),
        };
        Config::new(f.dim)
            .dim_head(width)
            .num_searches(f.searches)
            .num_retrievals(f.retrievals)
            .prenorm(f.prenorm)
            .layer_norm_eps(f.layer_norm_eps)
            .causal(f.causal)
            .bias(bias)
            .selection_mlp(mlp)
            // A memory layer (its own key and value inputs); fairseq's general attention as wide
            // as its input also runs self-attention (Config::plain_self_attention), and the
            // causal one is self-attention only (causal does not apply over a memory).
            .memory(
                (f.attention.runs_cross_attention()
                    && !(f.causal && f.attention.runs_self_attention(f.dim)))
                .then(|| {
                    let (key_dim, value_dim) = f.attention.input_dims(f.dim);
                    MemoryDims {
                        key_dim,
                        value_dim,
                        encoder_decoder: matches!(
                            f.attention,
                            crate::checkpoint::Attention::EncoderDecoder { .. }
                        ),
                    }
                }),
            )
            .extra_keys(ExtraKeys {
                bias_kv: w.bias_kv.is_some(),
                zero_attn: f.zero_attention,
            })
    }

    /// `config` without `extra_keys.bias_kv`, which [`Weights::from_parts`] takes (the learned
    /// rows are added by [`Checkpoint::with_extra_keys`]).
    fn without_bias_kv(&self, config: Config) -> Config {
        config.extra_keys(ExtraKeys {
            bias_kv: false,
            ..config.extra_keys
        })
    }

    /// `layer` (lowered without the learned rows, [`Checkpoint::without_bias_kv`]) with the
    /// checkpoint's `add_bias_kv` rows, laid out as `lowering` lays heads out. `bias_k` is `embed_dim` wide (per
    /// search head of `hd`), `bias_v` `attn_dim` wide (per retrieval of `vd`).
    fn with_extra_keys(&self, layer: Weights, lowering: Lowering) -> Result<Weights> {
        let f = &self.form;
        let Some((bias_k, bias_v)) = &self.weights.bias_kv else {
            return Ok(layer);
        };
        let (hd, vd) = (f.head_dim, f.value_dim);
        let width = match lowering {
            Lowering::Itself => hd,
            Lowering::Padded { width } => width,
        };
        let padded = |rows: &[f32], count: usize, used: usize| -> Vec<f32> {
            (0..count * width)
                .map(|i| match i % width < used {
                    true => rows[i / width * used + i % width],
                    false => 0.0,
                })
                .collect()
        };
        layer.with_bias_kv(
            padded(bias_k, f.searches, hd),
            padded(bias_v, f.retrievals, vd),
        )
    }

    /// The layer's weights for this checkpoint (see the module documentation). A checkpoint
    /// with the MLP score network gives weights with `Config::selection_mlp`, which only the
    /// unfused strategy runs (a layer made from them starts with it).
    pub fn layer_weights(&self) -> Result<Weights> {
        self.validate()?;
        match (self.lowering(), &self.weights.selection) {
            (Lowering::Itself, SelectionWeights::DotProduct { value_k }) => {
                self.lucidrains_weights(value_k)
            }
            (_, _) => self.padded_weights(),
        }
    }

    /// lucidrains' form as it is: `W_rk = W_vk`, `W_rq = W_vq`.
    fn lucidrains_weights(&self, value_k: &Linear) -> Result<Weights> {
        let w = &self.weights;
        let config = self.without_bias_kv(self.lowered_config());
        let bias = config.bias;
        let bias_of = |l: &Linear| l.bias.clone().unwrap_or_else(|| vec![0.0; l.out]);
        Weights::from_parts(
            config,
            w.norm.clone(),
            [
                w.q.weight.clone(),
                w.k.weight.clone(),
                w.v.weight.clone(),
                w.value_q.weight.clone(),
                value_k.weight.clone(),
                w.out.weight.clone(),
            ],
            bias.then(|| Biases {
                search_queries: bias_of(&w.q),
                search_keys: bias_of(&w.k),
                retrieval_values: bias_of(&w.v),
                retrieval_queries: bias_of(&w.value_q),
                out: bias_of(&w.out),
            }),
            None,
        )
        .and_then(|layer| self.with_extra_keys(layer, Lowering::Itself))
    }

    /// Every other form: padded to `w = max(hd, vd)`, scales and the selection folded.
    fn padded_weights(&self) -> Result<Weights> {
        let f = &self.form;
        let wt = &self.weights;
        let (dim, heads, rules) = (f.dim, f.searches, f.retrievals);
        let (hd, vd, sel) = (f.head_dim, f.value_dim, f.selection_dim);
        let config = self.lowered_config();
        let width = config.dim_head;
        let kernel_scale = (width as f64).powf(-0.5);
        config.validate()?;
        // Lowering pads every head and value to `width`: the layer's weights may be far larger
        // than the checkpoint's (one wide search head beside many one-wide retrievals), so all
        // of them are asked for before the first, and each is reserved fallibly.
        let parameters = config.checked_parameter_count().ok_or(Error::HostMemory {
            what: "the lowered weights".into(),
            bytes: u64::MAX,
            hint: None,
        })?;
        host_memory::check_available(
            "the lowered weights",
            host_memory::bytes_of(&[parameters], 4),
            None,
        )?;

        // `count` blocks of `width` rows, each filled with `used` rows `row(block, j)` (a
        // weight row and its bias) and padded with zeros.
        // `cols`: the width of the input the rows read (`dim`, or the memory's kdim/vdim).
        let blocks_of = |count: usize,
                         used: usize,
                         cols: usize,
                         row: &dyn Fn(usize, usize) -> (Vec<f64>, f64)|
         -> Result<(Vec<f32>, Vec<f32>)> {
            let dim = cols;
            let mut weight = try_tensor("the lowered weights", &[count, width, dim], 0.0f32)?;
            let mut bias = try_tensor("the lowered biases", &[count, width], 0.0f32)?;
            for block in 0..count {
                for j in 0..used {
                    let (w_row, b) = row(block, j);
                    let at = block * width + j;
                    for (dst, src) in weight[at * dim..][..dim].iter_mut().zip(&w_row) {
                        *dst = *src as f32;
                    }
                    bias[at] = b as f32;
                }
            }
            Ok((weight, bias))
        };
        let blocks = |count: usize, used: usize, row: &dyn Fn(usize, usize) -> (Vec<f64>, f64)| {
            blocks_of(count, used, dim, row)
        };
        let (kdim, vdim) = f.attention.input_dims(dim);
        let copy_row = |l: &Linear, o: usize, scale: f64| -> (Vec<f64>, f64) {
            (
                l.row(o).iter().map(|&v| v as f64 * scale).collect(),
                l.bias_at(o) as f64 * scale,
            )
        };

        // Search queries carry hd^-½ in place of the kernels' w^-½.
        let q_scale = (hd as f64).powf(-0.5) / kernel_scale;
        let (sq, sq_b) = blocks(heads, hd, &|h, j| copy_row(&wt.q, h * hd + j, q_scale))?;
        let (sk, sk_b) = blocks_of(heads, hd, kdim, &|h, j| copy_row(&wt.k, h * hd + j, 1.0))?;
        let (rv, rv_b) = blocks_of(rules, vd, vdim, &|r, j| copy_row(&wt.v, r * vd + j, 1.0))?;

        let vq_row = |h: usize, t: usize| self.retrieval_query(h, t);
        // Q̃ of head h, element j < vd, with the selection scale against the kernels' w^-½.
        let (rq, rq_b) = match &wt.selection {
            SelectionWeights::DotProduct { value_k } => {
                let scale = (sel as f64).powf(-0.5) / kernel_scale;
                blocks(heads, vd, &|h, j| {
                    let mut weight = vec![0.0f64; dim];
                    let mut bias = 0.0;
                    for t in 0..sel {
                        let c = scale * value_k.row(t)[j] as f64;
                        let (w_t, b_t) = vq_row(h, t);
                        for (acc, v) in weight.iter_mut().zip(&w_t) {
                            *acc += c * v;
                        }
                        bias += c * b_t;
                    }
                    (weight, bias)
                })
            }
            SelectionWeights::LinearScore { score } => {
                let scale = 1.0 / kernel_scale;
                blocks(heads, vd, &|_, j| {
                    (vec![0.0; dim], scale * score.row(0)[j] as f64)
                })
            }
            // u[t] = Σ_j W_1[t, vd + j]·vq[j] + b_1[t], the hidden units' query inputs.
            SelectionWeights::MlpScore { hidden, .. } => blocks(heads, sel, &|h, t| {
                let mut weight = vec![0.0f64; dim];
                let mut bias = hidden.bias_at(t) as f64;
                for j in 0..sel {
                    let c = hidden.row(t)[vd + j] as f64;
                    let (w_j, b_j) = vq_row(h, j);
                    for (acc, v) in weight.iter_mut().zip(&w_j) {
                        *acc += c * v;
                    }
                    bias += c * b_j;
                }
                (weight, bias)
            }),
        }?;
        // W_1's retrieved half, padded to the head width, and w_2 (b_2 cancels).
        let selection_mlp = match &wt.selection {
            SelectionWeights::MlpScore { hidden, score } => Some(SelectionMlp {
                hidden: (0..sel)
                    .flat_map(|t| {
                        (0..width).map(move |j| if j < vd { hidden.row(t)[j] } else { 0.0 })
                    })
                    .collect(),
                score: score.row(0).to_vec(),
            }),
            _ => None,
        };

        // The output projection reads the first vd of every width columns.
        let mut out = try_tensor(
            "the lowered output projection",
            &[dim, heads, width],
            0.0f32,
        )?;
        for o in 0..dim {
            for h in 0..heads {
                for j in 0..vd {
                    out[o * heads * width + h * width + j] = wt.out.row(o)[h * vd + j];
                }
            }
        }
        let out_b = wt.out.bias.clone().unwrap_or_else(|| vec![0.0; dim]);
        let identity: Vec<f32> = (0..width * width)
            .map(|i| (i / width == i % width) as u8 as f32)
            .collect();
        let layer = Weights::from_parts(
            self.without_bias_kv(config),
            wt.norm.clone(),
            [sq, sk, rv, rq, identity, out],
            Some(Biases {
                search_queries: sq_b,
                search_keys: sk_b,
                retrieval_values: rv_b,
                retrieval_queries: rq_b,
                out: out_b,
            }),
            selection_mlp,
        )?;
        self.with_extra_keys(layer, Lowering::Padded { width })
    }

    /// `vq` of head `h`, row `t`, as an affine map of `x`: (weight `[dim]`, bias), as the
    /// padded form folds it (and `gradients.rs` unfolds it).
    pub(super) fn retrieval_query(&self, h: usize, t: usize) -> (Vec<f64>, f64) {
        let f = &self.form;
        let w = &self.weights;
        let (dim, hd, sel) = (f.dim, f.head_dim, f.selection_dim);
        if !f.q_compose {
            let o = h * sel + t;
            let row = w.value_q.row(o).iter().map(|&v| v as f64).collect();
            return (row, w.value_q.bias_at(o) as f64);
        }
        // vq = (hd^-½ (x·W_q,hᵀ + b_q,h))·W_vqᵀ + b_vq, with W_vq [sel, hd].
        let s = (hd as f64).powf(-0.5);
        let mut weight = vec![0.0f64; dim];
        let mut bias = w.value_q.bias_at(t) as f64;
        for u in 0..hd {
            let c = s * w.value_q.row(t)[u] as f64;
            for (acc, &q) in weight.iter_mut().zip(w.q.row(h * hd + u)) {
                *acc += c * q as f64;
            }
            bias += c * w.q.bias_at(h * hd + u) as f64;
        }
        (weight, bias)
    }
}
