//! The general form (`checkpoint::Checkpoint`: lucidrains, Keras, fairseq, xformers) written
//! out in f64 from `SPEC-VARIANTS.md` §2, operation by operation, with no folding or
//! reassociation: the oracle the lowered kernels are checked against. Layouts are batch-major
//! `[b, n, D]` for every format.
//!
//! One semantic choice is the crate's: a query with no attendable key (fully masked, or causal
//! with only masked keys) attends uniformly to all `n` keys, as lucidrains and Keras do, where
//! fairseq and xformers return NaN (SPEC.md §9).

use crate::checkpoint::{Attention, Checkpoint, Linear, Selection, SelectionWeights};
use crate::error::{Error, Result};

/// `x·Wᵀ + b` for one row.
fn apply(l: &Linear, x: &[f64]) -> Vec<f64> {
    (0..l.out)
        .map(|o| {
            l.row(o)
                .iter()
                .zip(x)
                .map(|(w, v)| *w as f64 * v)
                .sum::<f64>()
                + l.bias_at(o) as f64
        })
        .collect()
}

/// Softmax of `logits` over the entries `allowed` lets through, two passes; uniform over all
/// entries when none is allowed.
fn softmax(logits: &[f64], allowed: impl Fn(usize) -> bool) -> Vec<f64> {
    let n = logits.len();
    let max = (0..n)
        .filter(|&j| allowed(j))
        .map(|j| logits[j])
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return vec![1.0 / n as f64; n];
    }
    let e: Vec<f64> = (0..n)
        .map(|j| {
            if allowed(j) {
                (logits[j] - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The whole forward of `checkpoint` on `x [batch, seq, D]` with an optional key mask
/// `[batch, seq]` (`true` = may be attended) → `y [batch, seq, D]`: self-attention, with the
/// extra key rows of `add_bias_kv` and `add_zero_attn` where the checkpoint has them (always
/// attendable, causal or not, as the original pads its masks with a zero column).
pub fn forward(
    checkpoint: &Checkpoint,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
) -> Result<Vec<f64>> {
    forward_observed(checkpoint, x, batch, seq, mask, &mut |_, _, _| {})
}

/// The search attention `[b, s, n, n]` and the retrieval selection `[b, s, n, r]` of every query
/// row, as the original module computes them (the softmaxes `a` and `c` of [`forward`]), for a
/// self-attention checkpoint without extra key rows.
pub fn attention_maps(
    checkpoint: &Checkpoint,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    if extra_rows(checkpoint) > 0 {
        return Err(Error::ConfigMismatch(
            "attention maps are drawn for layers without extra key rows (add_bias_kv, \
             add_zero_attn)"
                .into(),
        ));
    }
    let (s, r) = (checkpoint.form.searches, checkpoint.form.retrievals);
    let mut search = vec![f64::NAN; batch * s * seq * seq];
    let mut selection = vec![f64::NAN; batch * s * seq * r];
    let mut observe = |(b, i, h): (usize, usize, usize), a: &[f64], c: &[f64]| {
        let row = (b * s + h) * seq + i;
        search[row * seq..][..seq].copy_from_slice(a);
        selection[row * r..][..r].copy_from_slice(c);
    };
    forward_observed(checkpoint, x, batch, seq, mask, &mut observe)?;
    Ok((search, selection))
}

/// Cross-attention (SPEC.md §9.2): queries from `x [batch, n_q, D]` attend a memory of
/// `n_kv` positions, keys projected from `keys [batch, n_kv, kdim]` and values from
/// `values [batch, n_kv, vdim]` (`None`: from `keys`, as `encoder_decoder_attention` does),
/// with an optional memory mask `[batch, n_kv]` and the checkpoint's extra key rows. `causal`
/// does not apply. A query whose memory is fully masked (and that has no extra row) attends
/// uniformly to every memory position, as a self-attention row does (SPEC.md §6).
#[allow(clippy::too_many_arguments)]
pub fn forward_cross(
    checkpoint: &Checkpoint,
    x: &[f32],
    batch: usize,
    n_q: usize,
    keys: &[f32],
    values: Option<&[f32]>,
    n_kv: usize,
    mask: Option<&[bool]>,
) -> Result<Vec<f64>> {
    checkpoint.validate()?;
    let f = &checkpoint.form;
    if !f.attention.runs_cross_attention() {
        return Err(Error::ConfigMismatch(format!(
            "a {} self-attention checkpoint has no memory to attend (fairseq's \
             encoder_decoder_attention or general attention has)",
            f.format
        )));
    }
    let (kdim, vdim) = f.attention.input_dims(f.dim);
    let values = match (values, f.attention) {
        (Some(_), Attention::EncoderDecoder { .. }) => {
            return Err(Error::ConfigMismatch(
                "encoder_decoder_attention projects keys and values from one memory: pass no \
                 separate value input"
                    .into(),
            ));
        }
        (Some(values), _) => values,
        (None, _) if kdim == vdim => keys,
        (None, _) => {
            return Err(Error::ConfigMismatch(format!(
                "keys ({kdim} wide) and values ({vdim} wide) come from separate inputs: pass \
                 the value input"
            )));
        }
    };
    check_rows("input", x, batch, n_q, f.dim)?;
    check_rows("keys", keys, batch, n_kv, kdim)?;
    check_rows("values", values, batch, n_kv, vdim)?;
    check_mask(mask, batch, n_kv)?;
    let w = &checkpoint.weights;
    let mut y = Vec::with_capacity(batch * n_q * f.dim);
    for b in 0..batch {
        let rows = input_rows(checkpoint, x, b, n_q);
        let k: Vec<Vec<f64>> = (0..n_kv)
            .map(|j| apply(&w.k, &widen(&keys[(b * n_kv + j) * kdim..][..kdim])))
            .collect();
        let v: Vec<Vec<f64>> = (0..n_kv)
            .map(|j| apply(&w.v, &widen(&values[(b * n_kv + j) * vdim..][..vdim])))
            .collect();
        let allowed = |_: usize, j: usize| j >= n_kv || mask.is_none_or(|m| m[b * n_kv + j]);
        attend(
            checkpoint,
            b,
            &rows,
            with_extra_rows(checkpoint, k, v),
            &allowed,
            &mut y,
            &mut |_, _, _| {},
        );
    }
    Ok(y)
}

/// How many key rows `add_bias_kv` and `add_zero_attn` append.
fn extra_rows(checkpoint: &Checkpoint) -> usize {
    checkpoint.weights.bias_kv.is_some() as usize + checkpoint.form.zero_attention as usize
}

/// Projected keys and values with the extra rows appended: `bias_k`/`bias_v`, then a zero row
/// (the original's order; attention does not depend on it).
fn with_extra_rows(
    checkpoint: &Checkpoint,
    mut k: Vec<Vec<f64>>,
    mut v: Vec<Vec<f64>>,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (kw, vw) = (checkpoint.weights.k.out, checkpoint.weights.v.out);
    if let Some((bias_k, bias_v)) = &checkpoint.weights.bias_kv {
        k.push(widen(bias_k));
        v.push(widen(bias_v));
    }
    if checkpoint.form.zero_attention {
        k.push(vec![0.0; kw]);
        v.push(vec![0.0; vw]);
    }
    (k, v)
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

fn check_rows(what: &str, data: &[f32], batch: usize, rows: usize, width: usize) -> Result<()> {
    if batch == 0 || rows == 0 || Some(data.len()) != batch.checked_mul(rows * width) {
        return Err(Error::shape(what, &[batch, rows, width], &[data.len()]));
    }
    Ok(())
}

fn check_mask(mask: Option<&[bool]>, batch: usize, rows: usize) -> Result<()> {
    if let Some(m) = mask
        && m.len() != batch * rows
    {
        return Err(Error::shape("mask", &[batch, rows], &[m.len()]));
    }
    Ok(())
}

/// The query input rows of batch row `b`, normalised with prenorm.
fn input_rows(checkpoint: &Checkpoint, x: &[f32], b: usize, seq: usize) -> Vec<Vec<f64>> {
    let f = &checkpoint.form;
    let dim = f.dim;
    (0..seq)
        .map(|i| {
            let row = widen(&x[(b * seq + i) * dim..][..dim]);
            match &checkpoint.weights.norm {
                Some((gamma, beta)) => {
                    let mean = row.iter().sum::<f64>() / dim as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                    let inv = 1.0 / (var + f.layer_norm_eps as f64).sqrt();
                    row.iter()
                        .enumerate()
                        .map(|(c, v)| (v - mean) * inv * gamma[c] as f64 + beta[c] as f64)
                        .collect()
                }
                None => row,
            }
        })
        .collect()
}

/// [`forward`], calling `observe((b, i, head), search attention [n], selection [r])` for every
/// query row and head.
fn forward_observed(
    checkpoint: &Checkpoint,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    observe: &mut super::Observer<'_, (usize, usize, usize)>,
) -> Result<Vec<f64>> {
    checkpoint.validate()?;
    let f = &checkpoint.form;
    if !f.attention.runs_self_attention(f.dim) {
        return Err(Error::ConfigMismatch(
            "an encoder-decoder (cross-attention) checkpoint attends a memory: use \
             forward_cross"
                .into(),
        ));
    }
    check_rows("input", x, batch, seq, f.dim)?;
    check_mask(mask, batch, seq)?;
    let w = &checkpoint.weights;
    let mut y = Vec::with_capacity(batch * seq * f.dim);
    for b in 0..batch {
        let rows = input_rows(checkpoint, x, b, seq);
        let k: Vec<Vec<f64>> = rows.iter().map(|row| apply(&w.k, row)).collect();
        let v: Vec<Vec<f64>> = rows.iter().map(|row| apply(&w.v, row)).collect();
        // The extra rows (j ≥ seq) are always attendable.
        let allowed = |i: usize, j: usize| {
            j >= seq || (mask.is_none_or(|m| m[b * seq + j]) && !(f.causal && j > i))
        };
        attend(
            checkpoint,
            b,
            &rows,
            with_extra_rows(checkpoint, k, v),
            &allowed,
            &mut y,
            observe,
        );
    }
    Ok(y)
}

/// Every query row of batch row `b` (its inputs `rows`, normalised) over the keys and values
/// `(k, v)`, key `j` attendable from query `i` where `allowed(i, j)`: search, retrieval,
/// selection and the output projection, appended to `y`.
fn attend(
    checkpoint: &Checkpoint,
    b: usize,
    rows: &[Vec<f64>],
    (k, v): (Vec<Vec<f64>>, Vec<Vec<f64>>),
    allowed: &dyn Fn(usize, usize) -> bool,
    y: &mut Vec<f64>,
    observe: &mut super::Observer<'_, (usize, usize, usize)>,
) {
    let f = &checkpoint.form;
    let w = &checkpoint.weights;
    let (h_n, r_n, hd, vd, sel) = (
        f.searches,
        f.retrievals,
        f.head_dim,
        f.value_dim,
        f.selection_dim,
    );
    let search_scale = (hd as f64).powf(-0.5);
    let selection_scale = (sel as f64).powf(-0.5);
    let keys = k.len();
    let q: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| apply(&w.q, row).iter().map(|v| v * search_scale).collect())
        .collect();
    // Retrieval queries from x, all heads at once (q_compose: per head, below).
    let vq_x: Vec<Vec<f64>> = match f.q_compose {
        false => rows.iter().map(|row| apply(&w.value_q, row)).collect(),
        true => Vec::new(),
    };
    for i in 0..rows.len() {
        let mut concat = vec![0.0; h_n * vd];
        for h in 0..h_n {
            // Search: softmax over keys of q_h · k_h.
            let q_h = &q[i][h * hd..][..hd];
            let logits: Vec<f64> = (0..keys)
                .map(|j| {
                    q_h.iter()
                        .zip(&k[j][h * hd..][..hd])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let a = softmax(&logits, |j| allowed(i, j));
            // Retrieval: every rule's values under this head's weights.
            let ret: Vec<Vec<f64>> = (0..r_n)
                .map(|r| {
                    let mut out = vec![0.0; vd];
                    for (j, weight) in a.iter().enumerate() {
                        for (o, val) in out.iter_mut().zip(&v[j][r * vd..][..vd]) {
                            *o += weight * val;
                        }
                    }
                    out
                })
                .collect();
            // Selection.
            let vq: Vec<f64> = match f.q_compose {
                false => vq_x[i][h * sel..][..sel].to_vec(),
                true => apply(&w.value_q, q_h),
            };
            let g: Vec<f64> = ret
                .iter()
                .map(|ret_r| {
                    let z = || ret_r.iter().chain(&vq).copied().collect::<Vec<f64>>();
                    match &w.selection {
                        SelectionWeights::DotProduct { value_k } => {
                            let key = apply(value_k, ret_r);
                            vq.iter()
                                .zip(&key)
                                .map(|(a, b)| a * selection_scale * b)
                                .sum()
                        }
                        SelectionWeights::LinearScore { score } => apply(score, &z())[0],
                        SelectionWeights::MlpScore { hidden, score } => {
                            let hid: Vec<f64> = apply(hidden, &z())
                                .into_iter()
                                .map(|v| v.max(0.0))
                                .collect();
                            apply(score, &hid)[0]
                        }
                    }
                })
                .collect();
            debug_assert!(matches!(
                (&w.selection, f.selection),
                (SelectionWeights::DotProduct { .. }, Selection::DotProduct)
                    | (SelectionWeights::LinearScore { .. }, Selection::LinearScore)
                    | (SelectionWeights::MlpScore { .. }, Selection::MlpScore)
            ));
            let c = softmax(&g, |_| true);
            observe((b, i, h), &a, &c);
            for (r, ret_r) in ret.iter().enumerate() {
                for (o, val) in concat[h * vd..][..vd].iter_mut().zip(ret_r) {
                    *o += c[r] * val;
                }
            }
        }
        y.extend(apply(&w.out, &concat));
    }
}
