//! The Keras package `compositional-attention` (SPEC-VARIANTS §1): lucidrains' math with
//! `Dense` kernels in `[in, out]` layout, no biases, and LayerNorm epsilon 1e-3. Read from
//! safetensors under the attribute names (`to_out.kernel`, `norm.gamma`).

use std::collections::BTreeMap;

use crate::checkpoint::tensors::{Tensor, Tensors};
use crate::checkpoint::{
    Attention, Checkpoint, Constructor, Form, FormWeights, Format, Linear, Selection,
    SelectionWeights,
};
use crate::error::{Error, Result};
use crate::hdf5::H5Dataset;

/// Keras' `LayerNormalization` default epsilon.
pub(crate) const KERAS_LAYER_NORM_EPS: f32 = 1e-3;

/// The tensor names, in the order of the layer's attributes.
pub(crate) const NAMES: [&str; 8] = [
    "norm.gamma",
    "norm.beta",
    "to_searches_queries.kernel",
    "to_searches_keys.kernel",
    "to_retrieval_values.kernel",
    "to_retrieval_queries.kernel",
    "to_retrieval_keys.kernel",
    "to_out.kernel",
];

/// The layer's tensors from a Keras `.weights.h5`: `layers/<name>/<attribute>/vars/0` as
/// `<attribute>.kernel`, `layers/<name>/norm/vars/{0,1}` as `norm.gamma`, `norm.beta`.
/// Datasets of other layers in the file (the model's other weights) are left aside.
pub(crate) fn tensors_from_h5(
    datasets: Vec<H5Dataset>,
    constructor: Option<&Constructor>,
) -> Result<Tensors> {
    let named = constructor.map(|c| c.string("name")).transpose()?.flatten();
    let name = match named {
        Some(name) => name,
        None => {
            // The one layer that has the attention's output projection.
            let mut layers: Vec<&str> = datasets
                .iter()
                .filter_map(|d| {
                    d.path
                        .strip_prefix("layers/")?
                        .strip_suffix("/to_out/vars/0")
                })
                .collect();
            layers.dedup();
            match layers[..] {
                [one] => one.to_string(),
                [] => {
                    return Err(Error::MissingTensor {
                        name: "layers/<name>/to_out/vars/0".into(),
                        context: Some(
                            "a Keras .weights.h5 of a model holding a CompositionalAttention layer"
                                .into(),
                        ),
                    });
                }
                _ => {
                    return Err(Error::ConfigMismatch(format!(
                        "the file holds several attention layers ({}); set \"name\" in the \
                         configuration to pick one",
                        layers.join(", ")
                    )));
                }
            }
        }
    };
    let prefix = format!("layers/{name}/");
    let mut map = BTreeMap::new();
    for d in datasets {
        let Some(local) = d.path.strip_prefix(&prefix) else {
            continue;
        };
        let key = match local.split_once("/vars/") {
            Some(("norm", "0")) => "norm.gamma".to_string(),
            Some(("norm", "1")) => "norm.beta".to_string(),
            Some((attribute, "0")) => format!("{attribute}.kernel"),
            _ => local.to_string(),
        };
        crate::io::check_finite(&d.path, &d.data)?;
        map.insert(
            key,
            Tensor {
                shape: d.shape,
                data: d.data,
            },
        );
    }
    if map.is_empty() {
        return Err(Error::MissingTensor {
            name: format!("{prefix}to_out/vars/0"),
            context: Some(format!("no dataset of a layer named {name:?} in the file")),
        });
    }
    Ok(Tensors::from_map(map))
}

/// A `Dense(use_bias=False)` kernel `[in, out]` as a [`Linear`] `[out, in]`.
fn dense(tensors: &mut Tensors, name: &str) -> Result<Linear> {
    let t = tensors.take(name, 2, "required by the Keras CompositionalAttention")?;
    let (inp, out) = (t.shape[0], t.shape[1]);
    // The transpose doubles the kernel's bytes for a moment: reserved fallibly, like the read.
    let mut weight = crate::host_memory::try_filled(name, t.data.len(), 0.0f32)?;
    for i in 0..inp {
        for o in 0..out {
            weight[o * inp + i] = t.data[i * out + o];
        }
    }
    Linear::new(weight, None, out, inp)
}

/// Reads the layer (see the module documentation).
pub(crate) fn read(
    mut tensors: Tensors,
    constructor: Option<&Constructor>,
    causal: bool,
) -> Result<Checkpoint> {
    let q = dense(&mut tensors, "to_searches_queries.kernel")?;
    let k = dense(&mut tensors, "to_searches_keys.kernel")?;
    let v = dense(&mut tensors, "to_retrieval_values.kernel")?;
    let value_q = dense(&mut tensors, "to_retrieval_queries.kernel")?;
    let value_k = dense(&mut tensors, "to_retrieval_keys.kernel")?;
    let out = dense(&mut tensors, "to_out.kernel")?;
    let gamma = tensors.take_optional("norm.gamma", 1)?;
    let beta = tensors.take_optional("norm.beta", 1)?;
    let norm = match (gamma, beta) {
        (Some(g), Some(b)) => Some((g.data, b.data)),
        (None, None) => None,
        (g, _) => {
            return Err(Error::MissingTensor {
                name: if g.is_some() {
                    "norm.beta"
                } else {
                    "norm.gamma"
                }
                .into(),
                context: Some("prenorm needs both norm.gamma and norm.beta".into()),
            });
        }
    };
    tensors.finish(&NAMES.join(", "))?;

    // d from the square W_rk; s and r from the widths (SPEC-VARIANTS §1).
    let d = value_k.out;
    if value_k.inp != d || d == 0 || q.out % d != 0 || v.out % d != 0 {
        return Err(Error::ConfigMismatch(format!(
            "to_retrieval_keys.kernel is [{}, {}] and must be square [dim_head, dim_head], with \
             to_searches_queries.kernel [dim, num_searches·dim_head] ([{}, {}]) and \
             to_retrieval_values.kernel [dim, num_retrievals·dim_head] ([{}, {}])",
            value_k.inp, value_k.out, q.inp, q.out, v.inp, v.out
        )));
    }
    let form = Form {
        format: Format::Keras,
        dim: q.inp,
        searches: q.out / d,
        retrievals: v.out / d,
        head_dim: d,
        value_dim: d,
        selection_dim: d,
        selection: Selection::DotProduct,
        q_compose: false,
        prenorm: norm.is_some(),
        layer_norm_eps: KERAS_LAYER_NORM_EPS,
        causal,
        attention: Attention::SelfAttention,
        zero_attention: false,
    };
    let mut form = form;
    if let Some(c) = constructor {
        check_constructor(c, &mut form)?;
    }
    Ok(Checkpoint {
        form,
        weights: FormWeights {
            norm,
            q,
            k,
            v,
            value_q,
            selection: SelectionWeights::DotProduct { value_k },
            out,
            bias_kv: None,
        },
    })
}

/// Checks the constructor's sizes against the shapes and takes `causal` from it.
fn check_constructor(c: &Constructor, form: &mut Form) -> Result<()> {
    for (key, inferred) in [
        ("dim", form.dim),
        ("dim_head", form.head_dim),
        ("num_searches", form.searches),
        ("num_retrievals", form.retrievals),
    ] {
        c.expect_usize(key, inferred)?;
    }
    if let Some(prenorm) = c.bool("prenorm")?
        && prenorm != form.prenorm
    {
        return Err(Error::ConfigMismatch(format!(
            "the constructor says prenorm = {prenorm}, the weights {} norm.gamma/norm.beta",
            if form.prenorm { "have" } else { "lack" }
        )));
    }
    // The original crashes with causal=True (SPEC-VARIANTS §1); the crate implements the
    // intended causal mask.
    form.causal = c.causal(form.causal)?;
    c.f64("dropout")?;
    c.string("name")?;
    c.check_all_read(Format::Keras)
}
