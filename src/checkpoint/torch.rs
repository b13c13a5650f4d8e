//! The PyTorch implementations: lucidrains' package (through [`Weights`]), the official fairseq
//! module and xformers (SPEC-VARIANTS §2, §3). Their `state_dict` names, `[out, in]` layouts and
//! biases; the hyper-parameters the shapes do not fix come from the constructor arguments.

use crate::checkpoint::state_dict::{FAIRSEQ, Names, XFORMERS};
use crate::checkpoint::tensors::Tensors;
use crate::checkpoint::{
    Attention, Checkpoint, CheckpointOptions, Constructor, Form, FormWeights, Format, Linear,
    Selection, SelectionWeights,
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
    if c.memory.is_some() || c.extra_keys.rows() > 0 {
        return Err(Error::Unsupported {
            format: "lucidrains",
            option: match c.memory {
                Some(_) => crate::weights::MEMORY_KEY.to_string(),
                None => "extra key rows (bias_k, add_zero_attn)".to_string(),
            },
            reason: "a saved layer with a memory or extra key rows is the lowered form of a \
                     fairseq checkpoint and has no general form here; run it through \
                     checkpoint::layer_weights_from_bytes (compattn forward, the browser's \
                     load) or Weights::from_safetensors",
        });
    }
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
        attention: Attention::SelfAttention,
        zero_attention: false,
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
            bias_kv: None,
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

/// The selection rule from the tensors present, checked against `qk_rule` and `nonlinear`.
fn selection(tensors: &mut Tensors, c: &Constructor, names: &Names) -> Result<SelectionWeights> {
    let (value_k, linear_score) = (names.value_k, names.linear_score);
    let [mlp_hidden, mlp_out] = names.mlp;
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

/// The official fairseq module (SPEC-VARIANTS §2; cross-attention and the extra key rows,
/// SPEC.md §9.2).
pub(crate) fn fairseq(
    mut tensors: Tensors,
    constructor: Option<&Constructor>,
    causal: bool,
) -> Result<Checkpoint> {
    let format = Format::Fairseq;
    let c = required(constructor, format, "num_heads")?;
    refuse_true(
        c,
        format,
        "gumbel",
        "gumbel-softmax selection draws random noise even in eval mode",
    )?;
    if c.f64("q_noise")?.is_some_and(|q| q != 0.0) {
        return Err(Error::Unsupported {
            format: format.name(),
            option: "q_noise".into(),
            reason: "quantisation noise (training-time quant-noise) is not implemented",
        });
    }
    c.usize("qn_block_size")?;
    c.f64("dropout")?;
    c.bool("bias")?;
    let why = "required by the fairseq module";
    let q = linear(&mut tensors, FAIRSEQ.q, why)?;
    let k = linear(&mut tensors, FAIRSEQ.k, why)?;
    let v = linear(&mut tensors, FAIRSEQ.v, why)?;
    let out = linear(&mut tensors, FAIRSEQ.out, why)?;
    let value_q = linear(&mut tensors, FAIRSEQ.value_q, why)?;
    let e = q.inp;
    c.expect_usize("embed_dim", e)?;
    let attention = fairseq_attention(c, e, (k.inp, v.inp))?;
    if causal && !attention.runs_self_attention(e) {
        return Err(Error::ConfigMismatch(
            "causal attention does not apply to encoder-decoder attention (the queries attend \
             an encoder's memory)"
                .into(),
        ));
    }
    let bias_kv = match c.bool("add_bias_kv")?.unwrap_or(false) {
        true => Some(fairseq_bias_kv(&mut tensors, e, v.out)?),
        false => None,
    };
    let zero_attention = c.bool("add_zero_attn")?.unwrap_or(false);
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
        names: &FAIRSEQ,
        known: "q_proj, k_proj, v_proj, out_proj, value_q, value_k or score_network[1, 2] \
                (.weight, .bias), bias_k, bias_v",
    };
    let mut checkpoint = multi_head(format, tensors, c, projections, keys, causal)?;
    checkpoint.form.attention = attention;
    checkpoint.form.zero_attention = zero_attention;
    checkpoint.weights.bias_kv = bias_kv;
    Ok(checkpoint)
}

/// Where a fairseq module's keys and values come from: `self_attention`,
/// `encoder_decoder_attention`, and `kdim`/`vdim` (default `embed_dim`) checked against
/// `k_proj`'s and `v_proj`'s input widths.
fn fairseq_attention(c: &Constructor, e: usize, (k_in, v_in): (usize, usize)) -> Result<Attention> {
    let self_attention = c.bool("self_attention")?.unwrap_or(false);
    let encoder_decoder = c.bool("encoder_decoder_attention")?.unwrap_or(false);
    let kdim = c.usize("kdim")?.unwrap_or(e);
    let vdim = c.usize("vdim")?.unwrap_or(e);
    for (key, said, read, proj) in [
        ("kdim", kdim, k_in, "k_proj"),
        ("vdim", vdim, v_in, "v_proj"),
    ] {
        if said != read {
            return Err(Error::ConfigMismatch(format!(
                "the constructor gives {key} = {said} (embed_dim {e} when absent), but \
                 {proj}.weight reads {read} features"
            )));
        }
    }
    match (self_attention, encoder_decoder) {
        (true, true) => Err(Error::ConfigMismatch(
            "self_attention and encoder_decoder_attention are both true; the module is one or \
             the other"
                .into(),
        )),
        (true, false) if (kdim, vdim) != (e, e) => Err(Error::ConfigMismatch(format!(
            "self_attention reads keys and values from the query input: kdim ({kdim}) and vdim \
             ({vdim}) must equal embed_dim ({e})"
        ))),
        (true, false) => Ok(Attention::SelfAttention),
        (false, true) if kdim != vdim => Err(Error::ConfigMismatch(format!(
            "encoder_decoder_attention reads keys and values from one memory: kdim ({kdim}) \
             must equal vdim ({vdim})"
        ))),
        (false, true) => Ok(Attention::EncoderDecoder { memory_dim: kdim }),
        (false, false) => Ok(Attention::General {
            key_dim: kdim,
            value_dim: vdim,
        }),
    }
}

/// `bias_k`, `bias_v` (`[1, 1, embed_dim]` each) of `add_bias_kv`. The original concatenates
/// `bias_v` to values `attn_dim` wide, so it crashes unless `attn_dim = embed_dim`: that
/// combination is refused.
fn fairseq_bias_kv(
    tensors: &mut Tensors,
    e: usize,
    attn_dim: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if attn_dim != e {
        return Err(Error::Unsupported {
            format: "fairseq",
            option: format!("add_bias_kv=True with attn_dim={attn_dim} (embed_dim {e})"),
            reason: "the original module crashes on it: its bias_v is embed_dim wide and \
                     cannot be appended to values attn_dim wide",
        });
    }
    let mut row = |name: &str| -> Result<Vec<f32>> {
        let t = tensors.take(name, 3, "add_bias_kv=True")?;
        if t.shape != [1, 1, e] {
            return Err(Error::shape(name, &[1, 1, e], &t.shape));
        }
        Ok(t.data)
    };
    Ok((row("bias_k")?, row("bias_v")?))
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
    let why = "required by xformers";
    let q = linear(&mut tensors, XFORMERS.q, why)?;
    let k = linear(&mut tensors, XFORMERS.k, why)?;
    let v = linear(&mut tensors, XFORMERS.v, why)?;
    let out = linear(&mut tensors, XFORMERS.out, why)?;
    let value_q = linear(&mut tensors, XFORMERS.value_q, why)?;
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
        names: &XFORMERS,
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
    /// The tensor names.
    names: &'static Names,
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
            attention: Attention::SelfAttention,
            zero_attention: false,
        },
        weights: FormWeights {
            norm: None,
            q: p.q,
            k: p.k,
            v: p.v,
            value_q: p.value_q,
            selection,
            out: p.out,
            bias_kv: None,
        },
    })
}
