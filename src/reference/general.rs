//! The general form (`checkpoint::Checkpoint`: lucidrains, Keras, fairseq, xformers) written
//! out in f64 from `SPEC-VARIANTS.md` §2, operation by operation, with no folding or
//! reassociation: the oracle the lowered kernels are checked against. Layouts are batch-major
//! `[b, n, D]` for every format.
//!
//! One semantic choice is the crate's: a query with no attendable key (fully masked, or causal
//! with only masked keys) attends uniformly to all `n` keys, as lucidrains and Keras do, where
//! fairseq and xformers return NaN (SPEC.md §9).

use crate::checkpoint::{Checkpoint, Linear, Selection, SelectionWeights};
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
/// `[batch, seq]` (`true` = may be attended) → `y [batch, seq, D]`.
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
/// row, as the original module computes them (the softmaxes `a` and `c` of [`forward`]).
pub fn attention_maps(
    checkpoint: &Checkpoint,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
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
    let w = &checkpoint.weights;
    let (dim, h_n, r_n, hd, vd, sel) = (
        f.dim,
        f.searches,
        f.retrievals,
        f.head_dim,
        f.value_dim,
        f.selection_dim,
    );
    if batch == 0 || seq == 0 || Some(x.len()) != batch.checked_mul(seq * dim) {
        return Err(Error::shape("input", &[batch, seq, dim], &[x.len()]));
    }
    if let Some(m) = mask
        && m.len() != batch * seq
    {
        return Err(Error::shape("mask", &[batch, seq], &[m.len()]));
    }
    let search_scale = (hd as f64).powf(-0.5);
    let selection_scale = (sel as f64).powf(-0.5);
    let mut y = Vec::with_capacity(batch * seq * dim);
    for b in 0..batch {
        // Per token: input (normalised with prenorm), q (scaled after the bias), k, v.
        let rows: Vec<Vec<f64>> = (0..seq)
            .map(|i| {
                let row: Vec<f64> = x[(b * seq + i) * dim..][..dim]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                match &w.norm {
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
            .collect();
        let q: Vec<Vec<f64>> = rows
            .iter()
            .map(|row| apply(&w.q, row).iter().map(|v| v * search_scale).collect())
            .collect();
        let k: Vec<Vec<f64>> = rows.iter().map(|row| apply(&w.k, row)).collect();
        let v: Vec<Vec<f64>> = rows.iter().map(|row| apply(&w.v, row)).collect();
        // Retrieval queries from x, all heads at once (q_compose: per head, below).
        let vq_x: Vec<Vec<f64>> = match f.q_compose {
            false => rows.iter().map(|row| apply(&w.value_q, row)).collect(),
            true => Vec::new(),
        };
        let allowed =
            |i: usize, j: usize| mask.is_none_or(|m| m[b * seq + j]) && !(f.causal && j > i);
        for i in 0..seq {
            let mut concat = vec![0.0; h_n * vd];
            for h in 0..h_n {
                // Search: softmax over keys of q_h · k_h.
                let q_h = &q[i][h * hd..][..hd];
                let logits: Vec<f64> = (0..seq)
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
    Ok(y)
}
