//! The CPU reference: SPEC §2.3 written out literally in `f64`.
//!
//! This is the oracle every kernel is checked against, so it shares nothing with them: plain
//! loops, a two-pass softmax with PyTorch's `-FMAX` fill for masked keys (which makes a fully
//! masked row uniform over *all* keys, SPEC §6), `RK = Ret·W_rkᵀ` computed as written rather than
//! through the kernels' reassociation, and `f64` accumulation everywhere. It is not a fast path.
//!
//! Training mode ([`forward_train`]) adds SPEC §2.3's dropout on the search attention `A` and
//! the retrieval selection `C`, with the mask of SPEC §6.4 ([`crate::dropout`]) drawn for the
//! step's seed, so that a training kernel can be checked against it element for element.
//!
//! Layouts: token-major projections `[b, n, s·d]` (feature `σ·d + k`), as PyTorch's linear layers
//! produce them; search logits and weights `[b, s, n, n]`; retrieved vectors `[b, s, n, r·d]`
//! (SPEC's `Ret[b,σ,ρ,i,:]` stored at `[b, σ, i, ρ·d ..]`); concatenated searches `[b, n, s·d]`.

pub mod backward;
pub mod general;

use crate::config::{Config, LAYER_NORM_EPS};
use crate::dropout::{Dropout, DropoutStream};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// What a forward tells an observer for one query row and search: a key (which row, which
/// search), the search attention over the keys `[n]`, and the selection `[r]`.
type Observer<'a, K> = dyn FnMut(K, &[f64], &[f64]) + 'a;

/// The fill PyTorch writes into masked logits: `-torch.finfo(float64).max`.
const MASK_FILL: f64 = -f64::MAX;

/// `LayerNorm(dim)` over each row of `x [rows, dim]`: biased variance, `eps = 1e-5`
/// (PyTorch's default), affine.
pub fn layer_norm(x: &[f64], dim: usize, gamma: &[f32], beta: &[f32]) -> Vec<f64> {
    layer_norm_eps(x, dim, gamma, beta, LAYER_NORM_EPS)
}

/// [`layer_norm`] with epsilon `eps` (the Keras package's is 1e-3).
pub fn layer_norm_eps(x: &[f64], dim: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
    let eps = eps as f64;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let mean = row.iter().sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, v) in row.iter().enumerate() {
            out.push((v - mean) * inv * gamma[k] as f64 + beta[k] as f64);
        }
    }
    out
}

/// `y = x·Wᵀ` for `x [rows, in_dim]` and a PyTorch-layout weight `W [out_dim, in_dim]`.
pub fn linear(x: &[f64], in_dim: usize, w: &[f32], out_dim: usize) -> Vec<f64> {
    debug_assert_eq!(w.len(), in_dim * out_dim);
    let mut out = Vec::with_capacity(x.len() / in_dim * out_dim);
    for row in x.chunks_exact(in_dim) {
        for w_row in w.chunks_exact(in_dim) {
            out.push(row.iter().zip(w_row).map(|(a, b)| a * *b as f64).sum());
        }
    }
    out
}

/// `y = x·Wᵀ + b`, [`linear`] with an optional bias `[out_dim]`.
pub fn affine(
    x: &[f64],
    in_dim: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    out_dim: usize,
) -> Vec<f64> {
    let mut y = linear(x, in_dim, w, out_dim);
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(out_dim) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += *b as f64;
            }
        }
    }
    y
}

/// Shape of one attention problem: batch, tokens and the layer's head sizes.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Batch `b`.
    pub batch: usize,
    /// Tokens `n`.
    pub seq: usize,
    /// Searches `s`.
    pub searches: usize,
    /// Retrievals `r`.
    pub retrievals: usize,
    /// Head width `d`.
    pub head: usize,
}

impl Dims {
    /// The dims of `config` at `batch × seq`.
    pub fn new(config: &Config, batch: usize, seq: usize) -> Self {
        Dims {
            batch,
            seq,
            searches: config.num_searches,
            retrievals: config.num_retrievals,
            head: config.dim_head,
        }
    }

    /// Whether query `i` of batch `b` may attend key `j` (key mask and causal).
    fn allowed(&self, mask: Option<&[bool]>, causal: bool, b: usize, i: usize, j: usize) -> bool {
        mask.is_none_or(|m| m[b * self.seq + j]) && !(causal && j > i)
    }
}

/// Search logits `L[b,σ,i,j] = Σ_k (scale·SQ[b,i,σ,k]) · SK[b,j,σ,k]` from token-major `SQ, SK
/// [b, n, s·d]`; returns `[b, s, n, n]`.
pub fn search_logits(sq: &[f64], sk: &[f64], dims: Dims, scale: f64) -> Vec<f64> {
    let Dims { batch, seq, .. } = dims;
    let mut out = Vec::with_capacity(batch * dims.searches * seq * seq);
    for b in 0..batch {
        for sigma in 0..dims.searches {
            for i in 0..seq {
                let q = &sq[(b * seq + i) * dims.searches * dims.head + sigma * dims.head..];
                out.extend(logits_row(&q[..dims.head], sk, dims, scale, b, sigma));
            }
        }
    }
    out
}

/// Logits of one query `q [d]` (search `σ`, batch `b`) against every key of the batch.
fn logits_row(q: &[f64], sk: &[f64], dims: Dims, scale: f64, b: usize, sigma: usize) -> Vec<f64> {
    let (d, width) = (dims.head, dims.searches * dims.head);
    (0..dims.seq)
        .map(|j| {
            let k = &sk[(b * dims.seq + j) * width + sigma * d..][..d];
            q.iter().zip(k).map(|(q, k)| (q * scale) * k).sum()
        })
        .collect()
}

/// Softmax over keys with PyTorch's semantics: masked logits (key mask, causal) are replaced by
/// `-FMAX`, the row max is subtracted, then `exp` and normalise. A row with no allowed key is
/// uniform over all `n` keys. `logits [b, s, n, n]` → weights of the same shape.
pub fn search_weights(logits: &[f64], dims: Dims, mask: Option<&[bool]>, causal: bool) -> Vec<f64> {
    let n = dims.seq;
    let mut out = Vec::with_capacity(logits.len());
    for (row_index, row) in logits.chunks_exact(n).enumerate() {
        let b = row_index / (dims.searches * n);
        let i = row_index % n;
        out.extend(softmax_row(row, |j| dims.allowed(mask, causal, b, i, j)));
    }
    out
}

fn softmax_row(row: &[f64], allowed: impl Fn(usize) -> bool) -> Vec<f64> {
    let filled: Vec<f64> = row
        .iter()
        .enumerate()
        .map(|(j, &l)| if allowed(j) { l } else { MASK_FILL })
        .collect();
    let max = filled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = filled.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The factors dropout multiplies `len` consecutive elements of `stream`'s map by, from the
/// row-major position `first` on: `1 / (1 − p)` where the element is kept, 0 where it is
/// dropped (SPEC §6.4); all 1 without dropout (evaluation), so that `x · factor` is `x` exactly.
fn dropout_factors(
    dropout: Option<&Dropout>,
    stream: DropoutStream,
    first: u64,
    len: usize,
) -> Vec<f64> {
    match dropout {
        None => vec![1.0; len],
        Some(dropout) => {
            let scale = 1.0 / (1.0 - dropout.p() as f64);
            (first..first + len as u64)
                .map(|index| {
                    if dropout.keeps(stream, index) {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    }
}

/// The row-major position of `A[b, σ, i, 0]` in `A [b, s, n, n]`, and of `C[b, σ, i, 0]` in
/// `C [b, s, n, r]`: the first indices of query row `i`'s two dropout masks.
fn dropout_rows(dims: Dims, b: usize, sigma: usize, i: usize) -> (u64, u64) {
    let row = ((b * dims.searches + sigma) * dims.seq + i) as u64;
    (row * dims.seq as u64, row * dims.retrievals as u64)
}

/// `x ⊙ factors`.
fn scaled(x: &[f64], factors: &[f64]) -> Vec<f64> {
    x.iter().zip(factors).map(|(x, f)| x * f).collect()
}

/// Retrieved vectors `Ret[b,σ,i,ρ,:] = Σ_j A[b,σ,i,j] · RV[b,j,ρ,:]` for every (search,
/// retrieval) pair, from weights `A [b, s, n, n]` and token-major `RV [b, n, r·d]`; returns
/// `[b, s, n, r·d]`.
pub fn retrieve(weights: &[f64], rv: &[f64], dims: Dims) -> Vec<f64> {
    let n = dims.seq;
    let width = dims.retrievals * dims.head;
    let mut out = Vec::with_capacity(dims.batch * dims.searches * n * width);
    for (row_index, a_row) in weights.chunks_exact(n).enumerate() {
        let b = row_index / (dims.searches * n);
        out.extend(retrieve_row(
            a_row,
            &rv[b * n * width..][..n * width],
            width,
        ));
    }
    out
}

fn retrieve_row(a_row: &[f64], rv_batch: &[f64], width: usize) -> Vec<f64> {
    let mut acc = vec![0.0; width];
    for (a, v_row) in a_row.iter().zip(rv_batch.chunks_exact(width)) {
        for (acc, v) in acc.iter_mut().zip(v_row) {
            *acc += a * v;
        }
    }
    acc
}

/// Retrieval selection (SPEC §2.3, as written): `RK = Ret·W_rkᵀ`, `G[ρ] = (scale·RQ)·RK[ρ]`,
/// `C = softmax_ρ(G − max G)`, `O = Σ_ρ C[ρ]·Ret[ρ]`. Takes `Ret [b, s, n, r·d]` and token-major
/// `RQ [b, n, s·d]`; returns the concatenated searches `[b, n, s·d]`.
pub fn retrieval_select(
    retrieved: &[f64],
    rq: &[f64],
    w_rk: &[f32],
    dims: Dims,
    scale: f64,
) -> Vec<f64> {
    let (n, d, s) = (dims.seq, dims.head, dims.searches);
    let width = dims.retrievals * d;
    let mut out = vec![0.0; dims.batch * n * s * d];
    for b in 0..dims.batch {
        for sigma in 0..s {
            for i in 0..n {
                let ret = &retrieved[((b * s + sigma) * n + i) * width..][..width];
                let q = &rq[(b * n + i) * s * d + sigma * d..][..d];
                let selection = softmax_row(&dot_logits(ret, q, w_rk, d, scale), |_| true);
                let o = mix(&selection, ret, d);
                out[(b * n + i) * s * d + sigma * d..][..d].copy_from_slice(&o);
            }
        }
    }
    out
}

/// The selection logits as written: `RK[ρ] = Ret[ρ]·W_rkᵀ`, `G[ρ] = (scale·RQ)·RK[ρ]`.
fn dot_logits(ret: &[f64], rq: &[f64], w_rk: &[f32], d: usize, scale: f64) -> Vec<f64> {
    ret.chunks_exact(d)
        .map(|ret_rho| {
            // RK[ρ, k'] = Σ_k Ret[ρ, k] · W_rk[k', k]; G[ρ] = Σ_k' (scale·RQ[k']) · RK[ρ, k'].
            (0..d)
                .map(|k_out| {
                    let rk: f64 = (0..d)
                        .map(|k| ret_rho[k] * w_rk[k_out * d + k] as f64)
                        .sum();
                    (rq[k_out] * scale) * rk
                })
                .sum()
        })
        .collect()
}

/// `Σ_ρ C[ρ]·Ret[ρ]`: the retrieved vectors mixed by the selection weights `C [r]`.
fn mix(selection: &[f64], ret: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d];
    for (c, ret_rho) in selection.iter().zip(ret.chunks_exact(d)) {
        for (o, v) in out.iter_mut().zip(ret_rho) {
            *o += c * v;
        }
    }
    out
}

/// The selection logits of an MLP score network (`Config::selection_mlp`):
/// `G[ρ] = Σ_t w_s[t]·relu(Σ_k W_h[t, k]·Ret[ρ, k] + RQ[t])`.
fn mlp_logits(ret: &[f64], rq: &[f64], mlp: &crate::weights::SelectionMlp, d: usize) -> Vec<f64> {
    let units = mlp.score.len();
    ret.chunks_exact(d)
        .map(|ret_rho| {
            (0..units)
                .map(|t| {
                    let pre: f64 = rq[t]
                        + (0..d)
                            .map(|k| mlp.hidden[t * d + k] as f64 * ret_rho[k])
                            .sum::<f64>();
                    mlp.score[t] as f64 * pre.max(0.0)
                })
                .sum()
        })
        .collect()
}

/// The layer's input checks ([`crate::CompositionalAttention::forward`] runs the same): input
/// validation is not the math this oracle re-derives, so the two share it.
pub use crate::shape::check_input;

/// The whole forward pass in `f64`: `x [batch, seq, dim]` and an optional key mask `[batch, seq]`
/// (`true` = may be attended) → `y [batch, seq, dim]`.
pub fn forward(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
) -> Result<Vec<f64>> {
    let rows: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..seq).map(move |i| (b, i)))
        .collect();
    forward_rows(weights, x, batch, seq, mask, &rows)
}

/// The training forward of one step in `f64`: [`forward`] with SPEC §2.3's dropout, probability
/// `weights.config().dropout`, on the search attention `A` (after its softmax, a fully masked
/// row's uniform weights included) and on the retrieval selection `C` (after its softmax), each
/// element kept or dropped as [`Dropout::keeps`] draws it for `dropout_seed` at its row-major
/// position in `A [b, s, n, n]` (stream [`DropoutStream::SearchAttention`]) or `C [b, s, n, r]`
/// ([`DropoutStream::RetrievalSelection`]); kept elements are scaled by `1 / (1 − p)`. With
/// `p = 0` this is [`forward`] exactly.
pub fn forward_train(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    dropout_seed: u64,
) -> Result<Vec<f64>> {
    let dropout = Dropout::new(weights.config().dropout, dropout_seed)?;
    let rows: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..seq).map(move |i| (b, i)))
        .collect();
    forward_rows_observed(
        weights,
        x,
        batch,
        seq,
        mask,
        &rows,
        &|v| v,
        Some(&dropout),
        &mut |_, _, _| {},
    )
}

/// The forward pass for selected query rows `(b, i)` only: `[rows.len(), dim]`. Every key is
/// still projected, but no `n × n` tensor is built, so long sequences can be spot-checked.
pub fn forward_rows(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    rows: &[(usize, usize)],
) -> Result<Vec<f64>> {
    forward_rows_with(weights, x, batch, seq, mask, rows, &|v| v)
}

/// [`forward_rows`] with every tensor that a reduced storage precision stores passed through
/// `store` (for example [`Precision::round`](crate::Precision::round)): the weights, the
/// projections `SQ`, `SK`, `RQ`, `RV` and the concatenated searches. Everything else is exact
/// f64, so the difference from [`forward_rows`] is the error that storage alone causes: the
/// floor a kernel storing in that precision cannot beat.
pub fn forward_rows_stored(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    rows: &[(usize, usize)],
    store: &dyn Fn(f64) -> f64,
) -> Result<Vec<f64>> {
    let mut stored_weights = weights.clone();
    let mut tensors = vec![
        &mut stored_weights.search_queries,
        &mut stored_weights.search_keys,
        &mut stored_weights.retrieval_values,
        &mut stored_weights.retrieval_queries,
        &mut stored_weights.retrieval_keys,
        &mut stored_weights.out,
    ];
    if let Some(b) = &mut stored_weights.biases {
        tensors.extend([
            &mut b.search_queries,
            &mut b.search_keys,
            &mut b.retrieval_values,
            &mut b.retrieval_queries,
            &mut b.out,
        ]);
    }
    for w in tensors {
        w.iter_mut().for_each(|v| *v = store(*v as f64) as f32);
    }
    forward_rows_with(&stored_weights, x, batch, seq, mask, rows, store)
}

/// The forward of `rows` with the projections and the concatenation passed through `store`
/// (the weights as given: [`forward_rows_stored`] rounds them first).
fn forward_rows_with(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    rows: &[(usize, usize)],
    store: &dyn Fn(f64) -> f64,
) -> Result<Vec<f64>> {
    forward_rows_observed(
        weights,
        x,
        batch,
        seq,
        mask,
        rows,
        store,
        None,
        &mut |_, _, _| {},
    )
}

/// The search attention and the retrieval selection of `query_rows` in every batch row: `[b, s,
/// q, n]` and `[b, s, q, r]` for `q = query_rows.len()`, from the same computation as
/// [`forward_rows`] (what `CompositionalAttention::forward_with_maps` is checked against). The
/// selection is `softmax_ρ(G)` of SPEC §2.3's selection logits `G`.
pub fn attention_maps(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    query_rows: &[usize],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let config = weights.config();
    let (s, r, q) = (config.num_searches, config.num_retrievals, query_rows.len());
    let rows: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| query_rows.iter().map(move |&i| (b, i)))
        .collect();
    let mut search = vec![f64::NAN; batch * s * q * seq];
    let mut selection = vec![f64::NAN; batch * s * q * r];
    let mut observe = |(row, sigma): (usize, usize), attention: &[f64], logits: &[f64]| {
        let (b, k) = (row / q, row % q);
        let index = (b * s + sigma) * q + k;
        search[index * seq..][..seq].copy_from_slice(attention);
        selection[index * r..][..r].copy_from_slice(&softmax_row(logits, |_| true));
    };
    forward_rows_observed(
        weights,
        x,
        batch,
        seq,
        mask,
        &rows,
        &|v| v,
        None,
        &mut observe,
    )?;
    Ok((search, selection))
}

/// [`forward_rows_with`] with `dropout` on `A` and `C` where given (training; none in
/// evaluation), calling `observe((row index, σ), search attention [n], selection logits [r])`
/// for every query row and search (the attention before dropout).
#[allow(clippy::too_many_arguments)]
fn forward_rows_observed(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    rows: &[(usize, usize)],
    store: &dyn Fn(f64) -> f64,
    dropout: Option<&Dropout>,
    observe: &mut Observer<'_, (usize, usize)>,
) -> Result<Vec<f64>> {
    let stored = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(store).collect() };
    let config = weights.config();
    check_input(config, x, batch, seq, mask)?;
    if !config.plain_self_attention() {
        return Err(Error::InvalidConfig {
            field: "memory",
            value: format!("{:?}, {:?}", config.memory, config.extra_keys),
            reason: "this oracle is lucidrains' self-attention; cross-attention and the extra \
                     key rows are computed by reference::general (forward_cross)",
        });
    }
    if let Some(&(b, i)) = rows.iter().find(|&&(b, i)| b >= batch || i >= seq) {
        return Err(Error::shape("rows", &[batch, seq], &[b, i]));
    }
    let dims = Dims::new(config, batch, seq);
    let (dim, d, s, r) = (
        config.dim,
        config.dim_head,
        config.num_searches,
        config.num_retrievals,
    );
    let (search_width, value_width) = (config.search_width(), config.value_width());
    let scale = config.scale();

    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let h = match &weights.norm {
        Some((gamma, beta)) => layer_norm_eps(&x64, dim, gamma, beta, config.layer_norm_eps),
        None => x64,
    };
    let biases = weights.biases.as_ref();
    let sk = stored(affine(
        &h,
        dim,
        &weights.search_keys,
        biases.map(|b| &b.search_keys[..]),
        search_width,
    ));
    let rv = stored(affine(
        &h,
        dim,
        &weights.retrieval_values,
        biases.map(|b| &b.retrieval_values[..]),
        value_width,
    ));

    let mut out = Vec::with_capacity(rows.len() * dim);
    for (row, &(b, i)) in rows.iter().enumerate() {
        let h_row = &h[(b * seq + i) * dim..][..dim];
        let sq_row = stored(affine(
            h_row,
            dim,
            &weights.search_queries,
            biases.map(|b| &b.search_queries[..]),
            search_width,
        ));
        let rq_row = stored(affine(
            h_row,
            dim,
            &weights.retrieval_queries,
            biases.map(|b| &b.retrieval_queries[..]),
            search_width,
        ));
        let mut concat = vec![0.0; search_width];
        for sigma in 0..s {
            let logits = logits_row(&sq_row[sigma * d..][..d], &sk, dims, scale, b, sigma);
            let a_row = softmax_row(&logits, |j| dims.allowed(mask, config.causal, b, i, j));
            let (a_first, c_first) = dropout_rows(dims, b, sigma, i);
            let a_factors = dropout_factors(dropout, DropoutStream::SearchAttention, a_first, seq);
            let ret = retrieve_row(
                &scaled(&a_row, &a_factors),
                &rv[b * seq * value_width..][..seq * value_width],
                value_width,
            );
            let rq = &rq_row[sigma * d..][..d];
            let selection_logits = match &weights.selection_mlp {
                None => dot_logits(&ret, rq, &weights.retrieval_keys, d, scale),
                Some(mlp) => mlp_logits(&ret, rq, mlp, d),
            };
            observe((row, sigma), &a_row, &selection_logits);
            let selection = softmax_row(&selection_logits, |_| true);
            let c_factors = dropout_factors(dropout, DropoutStream::RetrievalSelection, c_first, r);
            let o = mix(&scaled(&selection, &c_factors), &ret, d);
            concat[sigma * d..][..d].copy_from_slice(&o);
        }
        out.extend(affine(
            &stored(concat),
            search_width,
            &weights.out,
            biases.map(|b| &b.out[..]),
            dim,
        ));
    }
    Ok(out)
}
