//! The general form of Compositional Attention: the union of the four implementations the
//! crate reads (SPEC.md §9, from `SPEC-VARIANTS.md`), with each one's weights under one set of
//! names. A reader turns a checkpoint into a [`Checkpoint`]; the f64 reference
//! (`reference::general`) computes it literally; [`Checkpoint::layer_weights`] lowers it onto
//! the layer's kernels.

use crate::error::{Error, Result};

/// Which implementation a checkpoint comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// lucidrains' PyTorch package `compositional-attention-pytorch` (SPEC.md §2).
    Lucidrains,
    /// The Keras package `compositional-attention` (`Dense` kernels `[in, out]`, LayerNorm
    /// epsilon 1e-3).
    Keras,
    /// The official fairseq module (sarthmit/Compositional-Attention).
    Fairseq,
    /// xformers' `CompositionalAttention`.
    Xformers,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 4] = [
        Format::Lucidrains,
        Format::Keras,
        Format::Fairseq,
        Format::Xformers,
    ];

    /// The name used by `"format"` in a configuration file and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Lucidrains => "lucidrains",
            Format::Keras => "keras",
            Format::Fairseq => "fairseq",
            Format::Xformers => "xformers",
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn parse(value: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == value)
            .ok_or_else(|| Error::InvalidConfig {
                field: "format",
                value: value.to_string(),
                reason: "must be one of lucidrains, keras, fairseq, xformers",
            })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How each search picks among the retrievals (the logits of the retrieval softmax).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Selection {
    /// `G_ρ = sel^-½ · vq · (Ret_ρ·W_vkᵀ + b_vk)`: lucidrains, Keras, fairseq/xformers `qk_rule`.
    DotProduct,
    /// `G_ρ = [Ret_ρ, vq]·w_snᵀ + b_sn`: fairseq's and xformers' default score network.
    LinearScore,
    /// `G_ρ = relu([Ret_ρ, vq]·W_1ᵀ + b_1)·w_2ᵀ + b_2`: `nonlinear=True`.
    MlpScore,
}

/// Where a layer's keys and values come from (fairseq's `self_attention`,
/// `encoder_decoder_attention`, `kdim`, `vdim`; SPEC.md §9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attention {
    /// Keys and values from the query input: lucidrains, Keras, xformers, and fairseq's
    /// `self_attention=True`.
    SelfAttention,
    /// fairseq's `encoder_decoder_attention=True`: keys and values both from one memory input
    /// (an encoder's output) of width `memory_dim` (`kdim`, equal to `vdim`).
    EncoderDecoder {
        /// `kdim`.
        memory_dim: usize,
    },
    /// fairseq's general attention (neither flag): keys from an input of width `key_dim`,
    /// values from one of width `value_dim`. With both equal to `dim` it also runs as
    /// self-attention (the query input passed as both, as fairseq's callers do).
    General {
        /// `kdim`.
        key_dim: usize,
        /// `vdim`.
        value_dim: usize,
    },
}

impl Attention {
    /// The widths `(kdim, vdim)` of the key and value inputs, for a model of width `dim`.
    pub fn input_dims(self, dim: usize) -> (usize, usize) {
        match self {
            Attention::SelfAttention => (dim, dim),
            Attention::EncoderDecoder { memory_dim } => (memory_dim, memory_dim),
            Attention::General { key_dim, value_dim } => (key_dim, value_dim),
        }
    }

    /// Whether the layer attends its own input (keys and values from the queries' input).
    pub fn runs_self_attention(self, dim: usize) -> bool {
        match self {
            Attention::SelfAttention => true,
            Attention::EncoderDecoder { .. } => false,
            Attention::General { .. } => self.input_dims(dim) == (dim, dim),
        }
    }

    /// Whether the layer attends a memory (keys and values from other inputs).
    pub fn runs_cross_attention(self) -> bool {
        !matches!(self, Attention::SelfAttention)
    }
}

/// The hyper-parameters of the general form. `H` searches (heads), `R` retrievals (rules).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Form {
    /// The implementation the weights came from.
    pub format: Format,
    /// Model width `D` (fairseq's `embed_dim`, xformers' `dim_model`).
    pub dim: usize,
    /// `H`: searches, or heads.
    pub searches: usize,
    /// `R`: retrievals, or rules.
    pub retrievals: usize,
    /// `hd`: the width of a search query and key; the search scale is `hd^-½`.
    pub head_dim: usize,
    /// `vd`: the width of a retrieved value.
    pub value_dim: usize,
    /// `sel`: the width of a retrieval query `vq`; the dot-product selection scale is `sel^-½`.
    pub selection_dim: usize,
    /// The selection rule.
    pub selection: Selection,
    /// The retrieval query is computed from the (scaled) search query of its head instead of
    /// from `x`: `vq = q_h·W_vqᵀ + b_vq` with `W_vq [sel, hd]`.
    pub q_compose: bool,
    /// LayerNorm before the projections (lucidrains and Keras `prenorm`).
    pub prenorm: bool,
    /// Its epsilon.
    pub layer_norm_eps: f32,
    /// Causal attention (self-attention only; the extra key rows stay attendable).
    pub causal: bool,
    /// Where keys and values come from.
    pub attention: Attention,
    /// fairseq's `add_zero_attn`: a zero key and value row appended after the projections,
    /// always attendable.
    pub zero_attention: bool,
}

impl Form {
    /// Checks positive sizes.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("dim", self.dim),
            ("searches", self.searches),
            ("retrievals", self.retrievals),
            ("head_dim", self.head_dim),
            ("value_dim", self.value_dim),
            ("selection_dim", self.selection_dim),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        let (key_dim, value_dim) = self.attention.input_dims(self.dim);
        for (field, value) in [("kdim", key_dim), ("vdim", value_dim)] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "layer_norm_eps",
                value: self.layer_norm_eps.to_string(),
                reason: "must be positive and finite",
            });
        }
        Ok(())
    }
}

/// `y = x·Wᵀ + b` with `W [out, in]` row-major (PyTorch's layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<Vec<f32>>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

impl Linear {
    /// A linear map, its sizes checked against the data.
    pub fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, out: usize, inp: usize) -> Result<Self> {
        if Some(weight.len()) != out.checked_mul(inp) {
            return Err(Error::shape("linear weight", &[out, inp], &[weight.len()]));
        }
        if let Some(b) = &bias
            && b.len() != out
        {
            return Err(Error::shape("linear bias", &[out], &[b.len()]));
        }
        Ok(Linear {
            weight,
            bias,
            out,
            inp,
        })
    }

    /// Row `o` of the weight (`[in]`).
    pub fn row(&self, o: usize) -> &[f32] {
        &self.weight[o * self.inp..][..self.inp]
    }

    /// The bias of output `o` (0 without a bias).
    pub fn bias_at(&self, o: usize) -> f32 {
        self.bias.as_ref().map_or(0.0, |b| b[o])
    }
}

/// The weights of the selection rule beyond the retrieval query.
#[derive(Clone, Debug, PartialEq)]
pub enum SelectionWeights {
    /// `value_k`: `W_vk [sel, vd]` (lucidrains' `to_retrieval_keys`, `[d, d]`).
    DotProduct { value_k: Linear },
    /// `score_network`: `[1, vd + sel]`, the retrieved part first.
    LinearScore { score: Linear },
    /// `score_network1 [sel, vd + sel]` (xformers `score_network.0`), then ReLU, then
    /// `score_network2 [1, sel]` (xformers `score_network.2`).
    MlpScore { hidden: Linear, score: Linear },
}

/// Every parameter of the general form.
#[derive(Clone, Debug, PartialEq)]
pub struct FormWeights {
    /// LayerNorm `(γ, β)` with `prenorm`.
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Search queries `[H·hd, D]`.
    pub q: Linear,
    /// Search keys `[H·hd, D]`.
    pub k: Linear,
    /// Retrieval values `[R·vd, D]`.
    pub v: Linear,
    /// Retrieval queries: `[H·sel, D]` from `x`, or `[sel, hd]` from the search query with
    /// `q_compose`.
    pub value_q: Linear,
    /// The selection rule's own weights.
    pub selection: SelectionWeights,
    /// Output projection `[D, H·vd]`.
    pub out: Linear,
    /// fairseq's `add_bias_kv`: learned rows `(bias_k [H·hd], bias_v [R·vd])` appended to the
    /// projected keys and values, always attendable.
    pub bias_kv: Option<(Vec<f32>, Vec<f32>)>,
}

/// A checkpoint of any supported implementation, in the general form.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Hyper-parameters.
    pub form: Form,
    /// Parameters.
    pub weights: FormWeights,
}

impl Checkpoint {
    /// Checks every weight's shape against the form.
    pub fn validate(&self) -> Result<()> {
        let f = &self.form;
        f.validate()?;
        let w = &self.weights;
        let (h, r, hd, vd, sel, dim) = (
            f.searches,
            f.retrievals,
            f.head_dim,
            f.value_dim,
            f.selection_dim,
            f.dim,
        );
        let expect = |name: &str, l: &Linear, out: usize, inp: usize| -> Result<()> {
            if (l.out, l.inp) != (out, inp) {
                return Err(Error::shape(name, &[out, inp], &[l.out, l.inp]));
            }
            Ok(())
        };
        let (key_dim, value_dim) = f.attention.input_dims(dim);
        expect("search queries", &w.q, h * hd, dim)?;
        expect("search keys", &w.k, h * hd, key_dim)?;
        expect("retrieval values", &w.v, r * vd, value_dim)?;
        if let Some((bias_k, bias_v)) = &w.bias_kv
            && (bias_k.len() != h * hd || bias_v.len() != r * vd)
        {
            return Err(Error::shape(
                "bias_k, bias_v",
                &[h * hd, r * vd],
                &[bias_k.len(), bias_v.len()],
            ));
        }
        if f.causal && f.attention.runs_cross_attention() && !f.attention.runs_self_attention(dim) {
            return Err(Error::ConfigMismatch(
                "causal attention does not apply to cross-attention (keys and values from a \
                 memory)"
                    .into(),
            ));
        }
        match f.q_compose {
            true => expect("retrieval queries (q_compose)", &w.value_q, sel, hd)?,
            false => expect("retrieval queries", &w.value_q, h * sel, dim)?,
        }
        match (&w.selection, f.selection) {
            (SelectionWeights::DotProduct { value_k }, Selection::DotProduct) => {
                expect("retrieval keys", value_k, sel, vd)?
            }
            (SelectionWeights::LinearScore { score }, Selection::LinearScore) => {
                expect("score network", score, 1, vd + sel)?
            }
            (SelectionWeights::MlpScore { hidden, score }, Selection::MlpScore) => {
                expect("score network (hidden)", hidden, sel, vd + sel)?;
                expect("score network (out)", score, 1, sel)?
            }
            _ => {
                return Err(Error::ConfigMismatch(format!(
                    "the selection weights do not match the selection rule {:?}",
                    f.selection
                )));
            }
        }
        expect("output projection", &w.out, dim, h * vd)?;
        match (&w.norm, f.prenorm) {
            (Some((g, b)), true) if g.len() == dim && b.len() == dim => {}
            (None, false) => {}
            _ => {
                return Err(Error::ConfigMismatch(
                    "LayerNorm weights must be present, of width dim, exactly with prenorm".into(),
                ));
            }
        }
        Ok(())
    }
}
