//! A checkpoint's tensors under its own format's names and layouts: what the readers
//! (`torch.rs`, `keras.rs`) read, written back. It is how [`Checkpoint::gradients`] reach a file
//! that the original implementation's tooling can load next to its `state_dict`.

use super::{Checkpoint, Format, Linear, SelectionWeights};
use crate::error::Result;
use crate::io::F32Tensor;
use crate::weights;

/// One named tensor: its name in the format's `state_dict`, its shape and row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The name, as the format's reader takes it.
    pub name: String,
    /// The shape (`[out, in]` for PyTorch weights, `[in, out]` for Keras kernels).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The base names (before `.weight` / `.bias`) of a format's five projections and its selection
/// weights: one table, which the readers (`torch.rs`) take and [`Checkpoint::state_dict`] writes.
pub(super) struct Names {
    pub(super) q: &'static str,
    pub(super) k: &'static str,
    pub(super) v: &'static str,
    pub(super) value_q: &'static str,
    pub(super) value_k: &'static str,
    pub(super) linear_score: &'static str,
    /// The MLP score network's hidden and output layers.
    pub(super) mlp: [&'static str; 2],
    pub(super) out: &'static str,
}

pub(super) const FAIRSEQ: Names = Names {
    q: "q_proj",
    k: "k_proj",
    v: "v_proj",
    value_q: "value_q",
    value_k: "value_k",
    linear_score: "score_network",
    mlp: ["score_network1", "score_network2"],
    out: "out_proj",
};

pub(super) const XFORMERS: Names = Names {
    q: "in_proj_container.q_proj",
    k: "in_proj_container.k_proj",
    v: "in_proj_container.v_proj",
    value_q: "value_q",
    value_k: "value_k",
    linear_score: "score_network",
    mlp: ["score_network.0", "score_network.2"],
    out: "out_proj",
};

/// lucidrains' names (without the `.weight` / `.bias` suffix); it has no score network.
const LUCIDRAINS: Names = Names {
    q: "to_searches_queries",
    k: "to_searches_keys",
    v: "to_retrieval_values",
    value_q: "to_retrieval_queries",
    value_k: "to_retrieval_keys",
    linear_score: "",
    mlp: ["", ""],
    out: "to_out",
};

impl Checkpoint {
    /// Every tensor of the checkpoint under its format's `state_dict` names, in its layout:
    /// PyTorch's `name.weight [out, in]` and `name.bias` for lucidrains, fairseq and xformers;
    /// Keras' `name.kernel [in, out]` and `norm.gamma`/`norm.beta`, the names its safetensors
    /// reader takes.
    pub fn state_dict(&self) -> Vec<NamedTensor> {
        let w = &self.weights;
        let mut table = Vec::new();
        let keras = self.form.format == Format::Keras;
        if let Some((gamma, beta)) = &w.norm {
            let (g, b) = match keras {
                true => ("norm.gamma", "norm.beta"),
                false => (weights::NORM_WEIGHT, weights::NORM_BIAS),
            };
            for (name, data) in [(g, gamma), (b, beta)] {
                table.push(NamedTensor {
                    name: name.into(),
                    shape: vec![data.len()],
                    data: data.clone(),
                });
            }
        }
        let names = match self.form.format {
            Format::Fairseq => &FAIRSEQ,
            Format::Xformers => &XFORMERS,
            Format::Lucidrains | Format::Keras => &LUCIDRAINS,
        };
        let mut linear = |base: &str, l: &Linear| match keras {
            true => table.push(kernel(base, l)),
            false => {
                table.push(NamedTensor {
                    name: format!("{base}.weight"),
                    shape: vec![l.out, l.inp],
                    data: l.weight.clone(),
                });
                if let Some(bias) = &l.bias {
                    table.push(NamedTensor {
                        name: format!("{base}.bias"),
                        shape: vec![l.out],
                        data: bias.clone(),
                    });
                }
            }
        };
        linear(names.q, &w.q);
        linear(names.k, &w.k);
        linear(names.v, &w.v);
        linear(names.value_q, &w.value_q);
        match &w.selection {
            SelectionWeights::DotProduct { value_k } => linear(names.value_k, value_k),
            SelectionWeights::LinearScore { score } => linear(names.linear_score, score),
            SelectionWeights::MlpScore { hidden, score } => {
                linear(names.mlp[0], hidden);
                linear(names.mlp[1], score);
            }
        }
        linear(names.out, &w.out);
        // fairseq's add_bias_kv rows, `[1, 1, embed_dim]` each.
        if let Some((bias_k, bias_v)) = &w.bias_kv {
            for (name, data) in [("bias_k", bias_k), ("bias_v", bias_v)] {
                table.push(NamedTensor {
                    name: name.into(),
                    shape: vec![1, 1, data.len()],
                    data: data.clone(),
                });
            }
        }
        table
    }

    /// [`state_dict`](Self::state_dict) as a safetensors file. A checkpoint read back from it
    /// (with the same constructor arguments) equals this one.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let table = self.state_dict();
        let tensors: Vec<(&str, F32Tensor<'_>)> = table
            .iter()
            .map(|t| (t.name.as_str(), F32Tensor::new(t.shape.clone(), &t.data)))
            .collect();
        let metadata = (self.form.format == Format::Lucidrains
            && self.form.layer_norm_eps != crate::config::LAYER_NORM_EPS)
            .then(|| {
                [(
                    weights::LAYER_NORM_EPS_KEY.to_string(),
                    self.form.layer_norm_eps.to_string(),
                )]
                .into_iter()
                .collect()
            });
        Ok(safetensors::serialize(tensors, metadata)?)
    }
}

/// A Keras `Dense` kernel: `[in, out]`, the transpose of the general form's `[out, in]`.
fn kernel(base: &str, l: &Linear) -> NamedTensor {
    let mut data = vec![0.0f32; l.weight.len()];
    for o in 0..l.out {
        for i in 0..l.inp {
            data[i * l.out + o] = l.weight[o * l.inp + i];
        }
    }
    NamedTensor {
        name: format!("{base}.kernel"),
        shape: vec![l.inp, l.out],
        data,
    }
}
