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
    /// Causal attention.
    pub causal: bool,
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
        expect("search queries", &w.q, h * hd, dim)?;
        expect("search keys", &w.k, h * hd, dim)?;
        expect("retrieval values", &w.v, r * vd, dim)?;
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
