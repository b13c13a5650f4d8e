//! The PyTorch implementations: lucidrains' package (through [`Weights`]), the official fairseq
//! module and xformers (SPEC-VARIANTS §2, §3). Their `state_dict` names, `[out, in]` layouts and
//! biases; the hyper-parameters the shapes do not fix come from the constructor arguments.

use crate::checkpoint::tensors::Tensors;
use crate::checkpoint::{
    Checkpoint, CheckpointOptions, Constructor, Form, FormWeights, Format, Linear, Selection,
    SelectionWeights,
};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// `{base}.weight` `[out, in]` and, if present, `{base}.bias` `[out]`.
fn linear(tensors: &mut Tensors, base: &str, why: &str) -> Result<Linear> {
    let w = tensors.take(&format!("{base}.weight"), 2, why)?;
    let b = tensors.take_optional(&format!("{base}.bias"), 1)?;
    let (out, inp) = (w.shape[0], w.shape[1]);
    if let Some(b) = &b
        && b.shape != [out]
    {
        return Err(Error::shape(format!("{base}.bias"), &[out], &b.shape));
    }
    Linear::new(w.data, b.map(|b| b.data), out, inp)
}

/// A lucidrains checkpoint: the layer's own form, read by [`Weights::from_safetensors`], with
/// the constructor's arguments (if any) checked against the shapes; `causal` from the options or
/// the constructor.
pub(crate) fn lucidrains_weights(bytes: &[u8], options: &CheckpointOptions) -> Result<Weights> {
    let constructor = options.constructor.as_ref();
    let causal = match constructor {
        Some(cons) => cons.causal(options.causal)?,
        None => options.causal,
    };
    let weights = Weights::from_safetensors(bytes, causal, &options.prefix)?;
    if let Some(cons) = constructor {
        let c = weights.config();
        for (key, inferred) in [
            ("dim", c.dim),
            ("dim_head", c.dim_head),
            ("num_searches", c.num_searches),
            ("num_retrievals", c.num_retrievals),
        ] {
            cons.expect_usize(key, inferred)?;
        }
        if let Some(prenorm) = cons.bool("prenorm")?
            && prenorm != c.prenorm
        {
            return Err(Error::ConfigMismatch(format!(
                "the constructor says prenorm = {prenorm}; the weights disagree"
            )));
        }
        cons.f64("dropout")?;
        cons.check_all_read(Format::Lucidrains)?;
    }
    Ok(weights)
}

/// A lucidrains layer in the general form. A layer file with an MLP score network (which only
/// the crate's own `Weights::to_safetensors` writes: lowered from fairseq or xformers) has no
/// general form here and is refused by name; `checkpoint::layer_weights_from_bytes` runs it.
pub(crate) fn lucidrains(weights: &Weights) -> Result<Checkpoint> {
    if weights.selection_mlp.is_some() {
        return Err(Error::Unsupported {
            format: "lucidrains",
            option: crate::weights::SELECTION_MLP_HIDDEN.to_string(),
            reason: "a saved layer with an MLP score network is the lowered form of a fairseq or \
                     xformers checkpoint and has no general form here; run it through \
                     checkpoint::layer_weights_from_bytes (compattn forward, the browser's \
                     load) or Weights::from_safetensors",
        });
    }
    let c = *weights.config();
    let (dim, d) = (c.dim, c.dim_head);
    let b = weights.biases.as_ref();
    let lin = |w: &[f32], bias: Option<&Vec<f32>>, out: usize, inp: usize| {
        Linear::new(w.to_vec(), bias.cloned(), out, inp)
    };
    let form = Form {
        format: Format::Lucidrains,
        dim,
        searches: c.num_searches,
        retrievals: c.num_retrievals,
        head_dim: d,
        value_dim: d,
        selection_dim: d,
        selection: Selection::DotProduct,
        q_compose: false,
        prenorm: c.prenorm,
        layer_norm_eps: c.layer_norm_eps,
        causal: c.causal,
    };
    Ok(Checkpoint {
        form,
        weights: FormWeights {
            norm: weights.norm.clone(),
            q: lin(
                &weights.search_queries,
                b.map(|b| &b.search_queries),
                c.search_width(),
                dim,
            )?,
            k: lin(
                &weights.search_keys,
                b.map(|b| &b.search_keys),
                c.search_width(),
                dim,
            )?,
            v: lin(
                &weights.retrieval_values,
                b.map(|b| &b.retrieval_values),
                c.value_width(),
                dim,
            )?,
            value_q: lin(
                &weights.retrieval_queries,
                b.map(|b| &b.retrieval_queries),
                c.search_width(),
                dim,
            )?,
            selection: SelectionWeights::DotProduct {
                value_k: lin(&weights.retrieval_keys, None, d, d)?,
            },
            out: lin(&weights.out, b.map(|b| &b.out), dim, c.search_width())?,
        },
    })
}

/// Refuses `key` unless it is absent, `null` or `false`.
fn refuse_true(c: &Constructor, format: Format, key: &str, reason: &'static str) -> Result<()> {
    match c.bool(key)? {
        Some(true) => Err(Error::Unsupported {
            format: format.name(),
            option: format!("{key}=True"),
            reason,
        }),
        _ => Ok(()),
    }
}

/// `a / b` where it divides exactly, else a shape error naming what.
fn divide(a: usize, b: usize, what: &str) -> Result<usize> {
    if b == 0 || a == 0 || !a.is_multiple_of(b) {
        return Err(Error::ConfigMismatch(format!(
            "{what}: {a} is not a positive multiple of {b}"
        )));
    }
    Ok(a / b)
}

/// The names of the selection weights in one implementation's `state_dict`.
struct SelectionNames {
    value_k: &'static str,
    linear_score: &'static str,
    mlp_hidden: &'static str,
    mlp_out: &'static str,
}

/// The selection rule from the tensors present, checked against `qk_rule` and `nonlinear`.
fn selection(
    tensors: &mut Tensors,
    c: &Constructor,
    names: SelectionNames,
) -> Result<SelectionWeights> {
    let SelectionNames {
        value_k,
        linear_score,
        mlp_hidden,
        mlp_out,
    } = names;
    let qk_rule = c.bool("qk_rule")?;
    let nonlinear = c.bool("nonlinear")?;
    let weights = if tensors.has(&format!("{value_k}.weight")) {
        SelectionWeights::DotProduct {
            value_k: linear(tensors, value_k, "the qk_rule selection")?,
        }
    } else if tensors.has(&format!("{mlp_hidden}.weight")) {
        SelectionWeights::MlpScore {
            hidden: linear(tensors, mlp_hidden, "the nonlinear score network")?,
            score: linear(tensors, mlp_out, "the nonlinear score network")?,
        }
    } else {
        SelectionWeights::LinearScore {
            score: linear(tensors, linear_score, "the score network")?,
        }
    };
    let found = match &weights {
        SelectionWeights::DotProduct { .. } => (true, false),
        SelectionWeights::LinearScore { .. } => (false, false),
        SelectionWeights::MlpScore { .. } => (false, true),
    };
    if qk_rule.is_some_and(|q| q != found.0)
        || (!found.0 && nonlinear.is_some_and(|n| n != found.1))
    {
        return Err(Error::ConfigMismatch(format!(
            "the constructor's qk_rule = {qk_rule:?}, nonlinear = {nonlinear:?} disagree with the \
             selection weights in the checkpoint ({})",
            match found {
                (true, _) => "value_k: qk_rule",
                (false, false) => "a linear score network",
                (false, true) => "an MLP score network: nonlinear",
            }
        )));
    }
    Ok(weights)
}

/// `(vd, sel)` widths of the selection weights, checked against each other.
fn selection_widths(weights: &SelectionWeights, vd: usize, sel: usize) -> Result<()> {
    let ok = match weights {
        SelectionWeights::DotProduct { value_k } => (value_k.out, value_k.inp) == (sel, vd),
        SelectionWeights::LinearScore { score } => (score.out, score.inp) == (1, vd + sel),
        SelectionWeights::MlpScore { hidden, score } => {
            (hidden.out, hidden.inp) == (sel, vd + sel) && (score.out, score.inp) == (1, sel)
        }
    };
    if !ok {
        return Err(Error::ConfigMismatch(format!(
            "the selection weights do not fit value width {vd} and selection width {sel}"
        )));
    }
    Ok(())
}

/// The constructor, required where the shapes leave `num_heads` open.
fn required<'a>(c: Option<&'a Constructor>, format: Format, key: &str) -> Result<&'a Constructor> {
    c.ok_or_else(|| {
        Error::ConfigMismatch(format!(
            "a {format} checkpoint does not record {key}: pass the module's constructor \
             arguments as JSON (compattn forward --config C.json, with \"format\": \"{format}\")"
        ))
    })
}

/// The official fairseq module (SPEC-VARIANTS §2).
pub(crate) fn fairseq(
    mut tensors: Tensors,
    constructor: Option<&Constructor>,
    causal: bool,
) -> Result<Checkpoint> {
    let format = Format::Fairseq;
    let c = required(constructor, format, "num_heads")?;
    for (key, reason) in [
        (
            "gumbel",
            "gumbel-softmax selection draws random noise even in eval mode",
        ),
        (
            "add_bias_kv",
            "learned bias_k/bias_v rows appended to the keys are not implemented",
        ),
        (
            "add_zero_attn",
            "a zero attention column is not implemented",
        ),
        (
            "encoder_decoder_attention",
            "the layer is self-attention only (keys and values from the query input)",
        ),
    ] {
        refuse_true(c, format, key, reason)?;
    }
    if c.f64("q_noise")?.is_some_and(|q| q != 0.0) {
        return Err(Error::Unsupported {
            format: format.name(),
            option: "q_noise".into(),
            reason: "quantisation noise (training-time quant-noise) is not implemented",
        });
    }
    c.usize("qn_block_size")?;
    c.bool("self_attention")?;
    c.f64("dropout")?;
    c.bool("bias")?;
    let q = linear(&mut tensors, "q_proj", "required by the fairseq module")?;
    let k = linear(&mut tensors, "k_proj", "required by the fairseq module")?;
    let v = linear(&mut tensors, "v_proj", "required by the fairseq module")?;
    let out = linear(&mut tensors, "out_proj", "required by the fairseq module")?;
    let value_q = linear(&mut tensors, "value_q", "required by the fairseq module")?;
    let e = q.inp;
    for key in ["kdim", "vdim"] {
        if let Some(value) = c.usize(key)?
            && value != e
        {
            return Err(Error::Unsupported {
                format: format.name(),
                option: format!("{key}={value}"),
                reason: "keys and values of another width than embed_dim (cross-attention) are \
                         not implemented",
            });
        }
    }
    if k.inp != e || v.inp != e {
        return Err(Error::Unsupported {
            format: format.name(),
            option: "kdim/vdim".into(),
            reason: "k_proj and v_proj must read embed_dim features (self-attention)",
        });
    }
    c.expect_usize("embed_dim", e)?;
    let projections = Projections {
        q,
        k,
        v,
        value_q,
        out,
    };
    let keys = HeadKeys {
        head: None,
        values: &["attn_dim"],
        selection: "selection_dim",
        names: SelectionNames {
            value_k: "value_k",
            linear_score: "score_network",
            mlp_hidden: "score_network1",
            mlp_out: "score_network2",
        },
        known: "q_proj, k_proj, v_proj, out_proj, value_q, value_k or score_network[1, 2] \
                (.weight, .bias)",
    };
    multi_head(format, tensors, c, projections, keys, causal)
}

fn kind(weights: &SelectionWeights) -> Selection {
    match weights {
        SelectionWeights::DotProduct { .. } => Selection::DotProduct,
        SelectionWeights::LinearScore { .. } => Selection::LinearScore,
        SelectionWeights::MlpScore { .. } => Selection::MlpScore,
    }
}

/// xformers' `CompositionalAttention` (SPEC-VARIANTS §3).
pub(crate) fn xformers(
    mut tensors: Tensors,
    constructor: Option<&Constructor>,
    causal: bool,
) -> Result<Checkpoint> {
    let format = Format::Xformers;
    let c = required(constructor, format, "num_heads")?;
    if c.string("in_proj_container")?.is_some() {
        return Err(Error::Unsupported {
            format: format.name(),
            option: "in_proj_container".into(),
            reason: "a custom input projection container is not implemented; its q/k/v \
                     projections must be the module's own",
        });
    }
    c.f64("dropout")?;
    c.bool("bias")?;
    c.bool("use_separate_proj_weight")?;
    let q = linear(
        &mut tensors,
        "in_proj_container.q_proj",
        "required by xformers",
    )?;
    let k = linear(
        &mut tensors,
        "in_proj_container.k_proj",
        "required by xformers",
    )?;
    let v = linear(
        &mut tensors,
        "in_proj_container.v_proj",
        "required by xformers",
    )?;
    let out = linear(&mut tensors, "out_proj", "required by xformers")?;
    let value_q = linear(&mut tensors, "value_q", "required by xformers")?;
    let dim = q.inp;
    if k.inp != dim || v.inp != dim {
        return Err(Error::ConfigMismatch(
            "in_proj_container's k_proj and v_proj must read dim_model features".into(),
        ));
    }
    c.expect_usize("dim_model", dim)?;
    let causal = c.causal(causal)?;
    let projections = Projections {
        q,
        k,
        v,
        value_q,
        out,
    };
    let keys = HeadKeys {
        head: Some("dim_key"),
        values: &["dim_attn", "dim_value"],
        selection: "dim_selection",
        names: SelectionNames {
            value_k: "value_k",
            linear_score: "score_network",
            mlp_hidden: "score_network.0",
            mlp_out: "score_network.2",
        },
        known: "in_proj_container.{q,k,v}_proj, out_proj, value_q, value_k or score_network \
                (.weight, .bias)",
    };
    multi_head(format, tensors, c, projections, keys, causal)
}

/// The five projections fairseq and xformers share.
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    value_q: Linear,
    out: Linear,
}

/// The constructor arguments and tensor names by which fairseq and xformers differ.
struct HeadKeys {
    /// The search projections' width (`dim_key`), where the constructor has one.
    head: Option<&'static str>,
    /// The value projection's width (`attn_dim`; `dim_attn`, `dim_value`).
    values: &'static [&'static str],
    /// The selection width (`selection_dim`, `dim_selection`).
    selection: &'static str,
    names: SelectionNames,
    /// Every tensor name, for the unexpected-tensor error.
    known: &'static str,
}

/// The rest of a fairseq or xformers checkpoint once its projections are read (SPEC-VARIANTS
/// §2, §3): the widths from the shapes and `num_heads`, each checked against the constructor;
/// `q_compose`, given or read off `value_q`'s shape; the selection rule; nothing left over.
fn multi_head(
    format: Format,
    mut tensors: Tensors,
    c: &Constructor,
    p: Projections,
    keys: HeadKeys,
    causal: bool,
) -> Result<Checkpoint> {
    let dim = p.q.inp;
    let heads = c.usize("num_heads")?.ok_or_else(|| {
        Error::ConfigMismatch(format!(
            "the {format} constructor arguments must give num_heads"
        ))
    })?;
    let hd = divide(p.q.out, heads, "the search width / num_heads")?;
    if let Some(key) = keys.head {
        c.expect_usize(key, p.q.out)?;
    }
    let vd = divide(p.out.inp, heads, "out_proj's input width / num_heads")?;
    let rules = divide(p.v.out, vd, "the value width / the width per rule")?;
    c.expect_usize("num_rules", rules)?;
    for key in keys.values {
        c.expect_usize(key, p.v.out)?;
    }
    let q_compose = match c.bool("q_compose")? {
        Some(q_compose) => q_compose,
        None => p.value_q.inp != dim,
    };
    let sel = match q_compose {
        true => p.value_q.out,
        false => divide(p.value_q.out, heads, "value_q's rows / num_heads")?,
    };
    c.expect_usize(keys.selection, sel)?;
    let selection = selection(&mut tensors, c, keys.names)?;
    selection_widths(&selection, vd, sel)?;
    tensors.finish(keys.known)?;
    c.check_all_read(format)?;
    Ok(Checkpoint {
        form: Form {
            format,
            dim,
            searches: heads,
            retrievals: rules,
            head_dim: hd,
            value_dim: vd,
            selection_dim: sel,
            selection: kind(&selection),
            q_compose,
            prenorm: false,
            layer_norm_eps: crate::config::LAYER_NORM_EPS,
            causal,
        },
        weights: FormWeights {
            norm: None,
            q: p.q,
            k: p.k,
            v: p.v,
            value_q: p.value_q,
            selection,
            out: p.out,
        },
    })
}
