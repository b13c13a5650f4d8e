//! The reference backward: the gradients of SPEC §2.3's forward written out from the math in
//! `f64`, for the loss `L = Σ y ⊙ dy` (so every gradient is the vector-Jacobian product of
//! `dy`, as PyTorch's `y.backward(dy)` computes it).
//!
//! It is the oracle the GPU backward is checked against, so like the forward reference it
//! shares nothing with the kernels: it recomputes the forward with plain loops (the search
//! attention `A [b, s, n, n]` is kept here; this is not a fast path), then walks the data flow
//! back, output → selection → retrieval → search → projections → LayerNorm → input. It is
//! itself checked against central finite differences of [`forward`](super::forward) and
//! [`forward_train`](super::forward_train) and against PyTorch's float64 autograd
//! (`tests/golden-grad/`, `tests/gradients.rs`).
//!
//! Per query row `i` of search `σ` (SPEC §2.3), with `dO` that row's slice of
//! `d(concat) = dy·W_o`. Dropout multiplies `A` and `C` by the step's factors
//! `m = keep / (1 − p)` (0 where dropped; all 1 in [`backward`], `p = 0`), drawn for the same
//! positions as the training forward's (SPEC §6.4), so `Ã = m_A ⊙ A` and `C̃ = m_C ⊙ C`:
//!
//! ```text
//! O = Σ_ρ C̃_ρ·Ret_ρ             dRet_ρ += C̃_ρ·dO,   dC_ρ = m_Cρ·(dO·Ret_ρ)
//! C = softmax_ρ(G)               dG_ρ = C_ρ·(dC_ρ − Σ_ρ' C_ρ'·dC_ρ')
//! G_ρ = scale·RQ·RK_ρ            dRQ += scale·Σ_ρ dG_ρ·RK_ρ,   dRK_ρ = scale·dG_ρ·RQ
//! RK_ρ = Ret_ρ·W_rkᵀ             dRet_ρ += dRK_ρ·W_rk,   dW_rk += Σ_ρ dRK_ρ ⊗ Ret_ρ
//! Ret_ρ = Σ_j Ã_j·RV_jρ          dA_j = m_Aj·Σ_ρ dRet_ρ·RV_jρ,   dRV_jρ += Ã_j·dRet_ρ
//! A = softmax_j(masked L)        dL_j = A_j·(dA_j − Σ_j' A_j'·dA_j') where j is allowed, else 0
//! L_j = scale·SQ·SK_j            dSQ += scale·Σ_j dL_j·SK_j,   dSK_j += scale·dL_j·SQ
//! ```
//!
//! `G` reads the retrieved vectors of the dropped attention, as the forward does; the softmax
//! backward uses the weights before dropout (`A`, `C`). Masked logits are filled with a
//! constant (PyTorch's `masked_fill`), so no gradient reaches them, and a fully masked row
//! (uniform attention, dropped like any other) passes none to its logits.

use super::{
    Dims, affine, dropout_factors, dropout_rows, layer_norm_eps, logits_row, retrieve_row, scaled,
    softmax_row,
};
use crate::dropout::{Dropout, DropoutStream};
use crate::error::{Error, Result};
use crate::weights::{self, Weights};

/// The gradients of `L = Σ y ⊙ dy`: of the input and of every parameter, in `f64`.
#[derive(Clone, Debug)]
pub struct ReferenceGradients {
    /// `dL/dx [b, n, dim]`.
    pub input: Vec<f64>,
    /// `dL/dθ` of every parameter, by its `state_dict` name, in the order and the layout of
    /// [`Weights::parameters`].
    pub parameters: Vec<(&'static str, Vec<f64>)>,
}

impl ReferenceGradients {
    /// The gradient of the parameter `name`, if the layer has it.
    pub fn parameter(&self, name: &str) -> Option<&[f64]> {
        self.parameters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, g)| &g[..])
    }

    /// The parameter gradients as [`Weights`] of `layer`'s configuration, rounded to f32: the
    /// form [`Gradients::to_weights`](crate::Gradients::to_weights) reads back from the GPU.
    pub fn to_weights(&self, layer: &Weights) -> Result<Weights> {
        let f32s = |name: &str| -> Result<Vec<f32>> {
            let g = self.parameter(name).ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                context: Some("the reference gradients of this layer".into()),
            })?;
            Ok(g.iter().map(|&v| v as f32).collect())
        };
        let config = *layer.config();
        let norm = match config.prenorm {
            true => Some((f32s(weights::NORM_WEIGHT)?, f32s(weights::NORM_BIAS)?)),
            false => None,
        };
        let biases = match config.bias {
            true => Some(weights::Biases {
                search_queries: f32s(weights::SEARCH_QUERIES_BIAS)?,
                search_keys: f32s(weights::SEARCH_KEYS_BIAS)?,
                retrieval_values: f32s(weights::RETRIEVAL_VALUES_BIAS)?,
                retrieval_queries: f32s(weights::RETRIEVAL_QUERIES_BIAS)?,
                out: f32s(weights::OUT_BIAS)?,
            }),
            false => None,
        };
        Weights::from_parts(
            config,
            norm,
            [
                f32s(weights::SEARCH_QUERIES)?,
                f32s(weights::SEARCH_KEYS)?,
                f32s(weights::RETRIEVAL_VALUES)?,
                f32s(weights::RETRIEVAL_QUERIES)?,
                f32s(weights::RETRIEVAL_KEYS)?,
                f32s(weights::OUT)?,
            ],
            biases,
            None,
        )
    }
}

/// `dW [out, in] += dyᵀ·x` and `dx [rows, in] += dy·W` of `y = x·Wᵀ (+ b)` over `rows` rows;
/// `db += Σ_rows dy` where there is a bias.
fn linear_backward(
    x: &[f64],
    in_dim: usize,
    w: &[f32],
    dy: &[f64],
    out_dim: usize,
    grads: (&mut [f64], Option<&mut [f64]>, &mut [f64]),
) {
    let (dw, mut db, dx) = grads;
    for ((x_row, dy_row), dx_row) in x
        .chunks_exact(in_dim)
        .zip(dy.chunks_exact(out_dim))
        .zip(dx.chunks_exact_mut(in_dim))
    {
        for (o, &g) in dy_row.iter().enumerate() {
            if let Some(db) = db.as_deref_mut() {
                db[o] += g;
            }
            let w_row = &w[o * in_dim..][..in_dim];
            for c in 0..in_dim {
                dw[o * in_dim + c] += g * x_row[c];
                dx_row[c] += g * w_row[c] as f64;
            }
        }
    }
}

/// The gradients of `L = Σ y ⊙ grad_output` for the layer's forward of `x [batch, seq, dim]`
/// with an optional key mask `[batch, seq]` (evaluation: no dropout, whatever
/// `Config::dropout` says). The lucidrains form with the general form's biases; a layer with
/// an MLP score network is refused (`Config::selection_mlp`).
pub fn backward(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    grad_output: &[f32],
) -> Result<ReferenceGradients> {
    backward_with(weights, x, batch, seq, mask, grad_output, None)
}

/// The gradients of `L = Σ y ⊙ grad_output` for the training forward of one step,
/// [`forward_train`](super::forward_train) with the same `dropout_seed`: dropout with
/// probability `Config::dropout` on `A` and `C`, the same masks. With `p = 0` this is
/// [`backward`].
pub fn backward_train(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    grad_output: &[f32],
    dropout_seed: u64,
) -> Result<ReferenceGradients> {
    let dropout = Dropout::new(weights.config().dropout, dropout_seed)?;
    backward_with(weights, x, batch, seq, mask, grad_output, Some(&dropout))
}

/// [`backward`] with `dropout` on `A` and `C` where given.
fn backward_with(
    weights: &Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    grad_output: &[f32],
    dropout: Option<&Dropout>,
) -> Result<ReferenceGradients> {
    let config = *weights.config();
    super::check_input(&config, x, batch, seq, mask)?;
    if config.selection_mlp.is_some() {
        return Err(Error::InvalidConfig {
            field: "selection_mlp",
            value: format!("{:?}", config.selection_mlp),
            reason: "the reference backward covers the dot-product selection only",
        });
    }
    let dims = Dims::new(&config, batch, seq);
    let (dim, d, s, r) = (
        config.dim,
        config.dim_head,
        config.num_searches,
        config.num_retrievals,
    );
    let (sw, vw) = (config.search_width(), config.value_width());
    if grad_output.len() != batch * seq * dim {
        return Err(Error::shape(
            "grad_output",
            &[batch, seq, dim],
            &[grad_output.len()],
        ));
    }
    let scale = config.scale();
    let tokens = batch * seq;

    // ---- The forward, keeping what the backward reads.
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let h = match &weights.norm {
        Some((gamma, beta)) => layer_norm_eps(&x64, dim, gamma, beta, config.layer_norm_eps),
        None => x64.clone(),
    };
    let biases = weights.biases.as_ref();
    let project = |w: &[f32], bias: Option<&[f32]>, width| affine(&h, dim, w, bias, width);
    let sq = project(
        &weights.search_queries,
        biases.map(|b| &b.search_queries[..]),
        sw,
    );
    let sk = project(&weights.search_keys, biases.map(|b| &b.search_keys[..]), sw);
    let rq = project(
        &weights.retrieval_queries,
        biases.map(|b| &b.retrieval_queries[..]),
        sw,
    );
    let rv = project(
        &weights.retrieval_values,
        biases.map(|b| &b.retrieval_values[..]),
        vw,
    );
    let w_rk = &weights.retrieval_keys;

    // ---- Output projection: d(concat) = dy·W_o, dW_o = dyᵀ·concat (concat recomputed per row).
    let dy: Vec<f64> = grad_output.iter().map(|&v| v as f64).collect();
    let mut d_out = vec![0.0; dim * sw];
    let mut d_out_bias = biases.map(|_| vec![0.0; dim]);
    let mut d_concat = vec![0.0; tokens * sw];
    let mut concat = vec![0.0; tokens * sw];

    // Per (b, σ, i): the forward's A, Ret, C and dropout factors kept for the backward of the
    // core.
    let mut d_sq = vec![0.0; tokens * sw];
    let mut d_sk = vec![0.0; tokens * sw];
    let mut d_rq = vec![0.0; tokens * sw];
    let mut d_rv = vec![0.0; tokens * vw];
    let mut d_rk = vec![0.0; d * d];
    struct Row {
        a: Vec<f64>,
        a_factors: Vec<f64>,
        ret: Vec<f64>,
        c: Vec<f64>,
        c_factors: Vec<f64>,
        rk: Vec<f64>,
    }
    let mut rows = Vec::with_capacity(batch * s * seq);
    for b in 0..batch {
        for sigma in 0..s {
            for i in 0..seq {
                let t = b * seq + i;
                let q = &sq[t * sw + sigma * d..][..d];
                let logits = logits_row(q, &sk, dims, scale, b, sigma);
                let a = softmax_row(&logits, |j| dims.allowed(mask, config.causal, b, i, j));
                let (a_first, c_first) = dropout_rows(dims, b, sigma, i);
                let a_factors =
                    dropout_factors(dropout, DropoutStream::SearchAttention, a_first, seq);
                let ret =
                    retrieve_row(&scaled(&a, &a_factors), &rv[b * seq * vw..][..seq * vw], vw);
                let rq_row = &rq[t * sw + sigma * d..][..d];
                // RK_ρ[k'] = Σ_k Ret_ρ[k]·W_rk[k', k]; G_ρ = scale·RQ·RK_ρ.
                let mut rk = vec![0.0; r * d];
                for rho in 0..r {
                    for k_out in 0..d {
                        rk[rho * d + k_out] = (0..d)
                            .map(|k| ret[rho * d + k] * w_rk[k_out * d + k] as f64)
                            .sum();
                    }
                }
                let g: Vec<f64> = (0..r)
                    .map(|rho| (0..d).map(|k| scale * rq_row[k] * rk[rho * d + k]).sum())
                    .collect();
                let c = softmax_row(&g, |_| true);
                let c_factors =
                    dropout_factors(dropout, DropoutStream::RetrievalSelection, c_first, r);
                for rho in 0..r {
                    for k in 0..d {
                        concat[t * sw + sigma * d + k] +=
                            c[rho] * c_factors[rho] * ret[rho * d + k];
                    }
                }
                rows.push(Row {
                    a,
                    a_factors,
                    ret,
                    c,
                    c_factors,
                    rk,
                });
            }
        }
    }
    linear_backward(
        &concat,
        sw,
        &weights.out,
        &dy,
        dim,
        (&mut d_out, d_out_bias.as_deref_mut(), &mut d_concat),
    );

    // ---- The core, row by row: selection, retrieval, search.
    for b in 0..batch {
        for sigma in 0..s {
            for i in 0..seq {
                let t = b * seq + i;
                let Row {
                    a,
                    a_factors,
                    ret,
                    c,
                    c_factors,
                    rk,
                } = &rows[(b * s + sigma) * seq + i];
                let d_o = &d_concat[t * sw + sigma * d..][..d];
                let rq_row = &rq[t * sw + sigma * d..][..d];
                // O = Σ_ρ C̃_ρ·Ret_ρ with C̃ = m_C ⊙ C.
                let mut d_ret = vec![0.0; vw];
                let mut d_c = vec![0.0; r];
                for rho in 0..r {
                    let c_dropped = c[rho] * c_factors[rho];
                    for k in 0..d {
                        d_ret[rho * d + k] += c_dropped * d_o[k];
                        d_c[rho] += d_o[k] * ret[rho * d + k];
                    }
                    d_c[rho] *= c_factors[rho];
                }
                // C = softmax(G).
                let mean: f64 = (0..r).map(|rho| c[rho] * d_c[rho]).sum();
                let d_g: Vec<f64> = (0..r).map(|rho| c[rho] * (d_c[rho] - mean)).collect();
                // G_ρ = scale·RQ·RK_ρ, RK_ρ = Ret_ρ·W_rkᵀ.
                for rho in 0..r {
                    for k_out in 0..d {
                        d_rq[t * sw + sigma * d + k_out] += scale * d_g[rho] * rk[rho * d + k_out];
                        let d_rk_rho = scale * d_g[rho] * rq_row[k_out];
                        for k in 0..d {
                            d_ret[rho * d + k] += d_rk_rho * w_rk[k_out * d + k] as f64;
                            d_rk[k_out * d + k] += d_rk_rho * ret[rho * d + k];
                        }
                    }
                }
                // Ret = Σ_j Ã_j·RV_j with Ã = m_A ⊙ A.
                let mut d_a = vec![0.0; seq];
                for (j, d_a_j) in d_a.iter_mut().enumerate() {
                    let rv_j = &rv[(b * seq + j) * vw..][..vw];
                    *d_a_j = a_factors[j] * (0..vw).map(|e| d_ret[e] * rv_j[e]).sum::<f64>();
                    let a_dropped = a[j] * a_factors[j];
                    let d_rv_j = &mut d_rv[(b * seq + j) * vw..][..vw];
                    for e in 0..vw {
                        d_rv_j[e] += a_dropped * d_ret[e];
                    }
                }
                // A = softmax_j(masked L); L_j = scale·SQ·SK_j.
                let mean: f64 = (0..seq).map(|j| a[j] * d_a[j]).sum();
                let q = &sq[t * sw + sigma * d..][..d];
                for j in 0..seq {
                    if !dims.allowed(mask, config.causal, b, i, j) {
                        continue;
                    }
                    let d_l = a[j] * (d_a[j] - mean);
                    let key = (b * seq + j) * sw + sigma * d;
                    for k in 0..d {
                        d_sq[t * sw + sigma * d + k] += scale * d_l * sk[key + k];
                        d_sk[key + k] += scale * d_l * q[k];
                    }
                }
            }
        }
    }

    // ---- Projections: dW = dPᵀ·h, dh = Σ dP·W.
    let mut d_h = vec![0.0; tokens * dim];
    let mut grad_of = |w: &[f32], d_p: &[f64], width: usize, biased: bool| {
        let mut d_w = vec![0.0; w.len()];
        let mut d_b = biased.then(|| vec![0.0; width]);
        linear_backward(
            &h,
            dim,
            w,
            d_p,
            width,
            (&mut d_w, d_b.as_deref_mut(), &mut d_h),
        );
        (d_w, d_b)
    };
    let biased = biases.is_some();
    let (d_w_sq, d_b_sq) = grad_of(&weights.search_queries, &d_sq, sw, biased);
    let (d_w_sk, d_b_sk) = grad_of(&weights.search_keys, &d_sk, sw, biased);
    let (d_w_rv, d_b_rv) = grad_of(&weights.retrieval_values, &d_rv, vw, biased);
    let (d_w_rq, d_b_rq) = grad_of(&weights.retrieval_queries, &d_rq, sw, biased);

    // ---- LayerNorm: h = x̂·γ + β with x̂ = (x − μ)·inv.
    let mut parameters = Vec::new();
    let input = match &weights.norm {
        None => d_h,
        Some((gamma, _)) => {
            let eps = config.layer_norm_eps as f64;
            let mut d_gamma = vec![0.0; dim];
            let mut d_beta = vec![0.0; dim];
            let mut d_x = vec![0.0; tokens * dim];
            for t in 0..tokens {
                let row = &x64[t * dim..][..dim];
                let mean = row.iter().sum::<f64>() / dim as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (var + eps).sqrt();
                let x_hat: Vec<f64> = row.iter().map(|v| (v - mean) * inv).collect();
                let d_h_row = &d_h[t * dim..][..dim];
                let d_x_hat: Vec<f64> = (0..dim).map(|c| d_h_row[c] * gamma[c] as f64).collect();
                for c in 0..dim {
                    d_gamma[c] += d_h_row[c] * x_hat[c];
                    d_beta[c] += d_h_row[c];
                }
                let m1 = d_x_hat.iter().sum::<f64>() / dim as f64;
                let m2 = (0..dim).map(|c| d_x_hat[c] * x_hat[c]).sum::<f64>() / dim as f64;
                for c in 0..dim {
                    d_x[t * dim + c] = inv * (d_x_hat[c] - m1 - x_hat[c] * m2);
                }
            }
            parameters.push((weights::NORM_WEIGHT, d_gamma));
            parameters.push((weights::NORM_BIAS, d_beta));
            d_x
        }
    };
    parameters.extend([
        (weights::SEARCH_QUERIES, d_w_sq),
        (weights::SEARCH_KEYS, d_w_sk),
        (weights::RETRIEVAL_VALUES, d_w_rv),
        (weights::RETRIEVAL_QUERIES, d_w_rq),
        (weights::RETRIEVAL_KEYS, d_rk),
        (weights::OUT, d_out),
    ]);
    if let (Some(sq), Some(sk), Some(rv), Some(rq), Some(out)) =
        (d_b_sq, d_b_sk, d_b_rv, d_b_rq, d_out_bias)
    {
        parameters.extend([
            (weights::SEARCH_QUERIES_BIAS, sq),
            (weights::SEARCH_KEYS_BIAS, sk),
            (weights::RETRIEVAL_VALUES_BIAS, rv),
            (weights::RETRIEVAL_QUERIES_BIAS, rq),
            (weights::OUT_BIAS, out),
        ]);
    }
    Ok(ReferenceGradients { input, parameters })
}
