//! The adjoint of the lowering (`lower.rs`): gradients with respect to the layer's parameters
//! taken back, by the chain rule, to the checkpoint's own tensors.
//!
//! A layer made from a checkpoint trains the lowered parameters ([`Checkpoint::layer_weights`]):
//! for lucidrains and Keras they are the checkpoint's tensors one to one; for every other form
//! they are linear or bilinear functions of them (padding, folded scales, the folded selection
//! `Q̃ = vq·W_vk`). [`Checkpoint::gradients`] walks each fold backwards:
//!
//! ```text
//! SQ = q_s·W_q (rows padded)            dW_q += q_s·dSQ
//! SK, RV, W_o: copies (padded)          dW_k, dW_v, dW_o: the used rows and columns
//! Q̃_h,j = c·Σ_t W_vk[t,j]·vq_h,t        dW_vk[t,j] += c·(dQ̃_h,j·vq_h,t),  dvq_h,t += c·W_vk[t,j]·dQ̃_h,j
//! vq_h,t = s·Σ_u W_vq[t,u]·q_h,u + b    (q_compose) dW_vq[t,u] += s·dvq_h,t·q_h,u,  dq_h,u += s·W_vq[t,u]·dvq_h,t
//! Q̃_h,j bias = c'·w_sn[j]               (linear score) dw_sn[j] += c'·Σ_h dQ̃_h,j bias
//! ```
//!
//! where each `·` over an affine row pairs its weights and its bias. What the lowering drops
//! has no gradient, because the output does not depend on it: `b_vk` and the score network's
//! `vq` half and bias cancel in the retrieval softmax (their gradients are zeros). The
//! lowering's own constants (the padding, the identity `W_rk` of the padded form, the biases it
//! adds where the checkpoint has none) are not parameters of the checkpoint, so their gradients
//! are dropped.

use super::lower::Lowering;
use super::{Checkpoint, FormWeights, Linear, SelectionWeights};
use crate::error::{Error, Result};
use crate::weights::Weights;

impl Checkpoint {
    /// The gradients of this checkpoint's own tensors, from the gradients of the layer made
    /// from it ([`layer_weights`](Self::layer_weights)), as a checkpoint of the same form:
    /// every tensor the checkpoint has, holding its gradient (written under the format's own
    /// names by [`to_safetensors`](Self::to_safetensors)). `layer_gradients` is what
    /// [`Gradients::to_weights`](crate::Gradients::to_weights) reads back.
    ///
    /// Fails with [`Error::TrainingMismatch`] if `layer_gradients` is not of this checkpoint's
    /// layer, and with [`Error::TrainingUnsupported`] for the MLP score network, cross-attention
    /// and the extra key rows (which do not train).
    pub fn gradients(&self, layer_gradients: &Weights) -> Result<Checkpoint> {
        self.validate()?;
        if !self.form.attention.runs_self_attention(self.form.dim)
            || self.weights.bias_kv.is_some()
            || self.form.zero_attention
        {
            return Err(Error::TrainingUnsupported {
                what: "cross-attention or extra key rows (add_bias_kv, add_zero_attn)".into(),
                reason: "the layer trains self-attention without extra key rows (fairseq's general \
                         attention as wide as its input included); these forms run inference \
                         only (Memory, forward_cross)",
            });
        }
        let expected = self.lowered_config();
        let got = layer_gradients.config();
        let key = |c: &crate::Config| {
            (
                c.dim,
                c.dim_head,
                c.num_searches,
                c.num_retrievals,
                c.prenorm,
                c.bias,
                c.selection_mlp,
            )
        };
        if key(&expected) != key(got) {
            return Err(Error::TrainingMismatch(format!(
                "these gradients are of a layer with dim {}, dim_head {}, {} searches, {} \
                 retrievals, bias {}; this {} checkpoint lowers to dim {}, dim_head {}, {} \
                 searches, {} retrievals, bias {} (Checkpoint::layer_weights)",
                got.dim,
                got.dim_head,
                got.num_searches,
                got.num_retrievals,
                got.bias,
                self.form.format,
                expected.dim,
                expected.dim_head,
                expected.num_searches,
                expected.num_retrievals,
                expected.bias,
            )));
        }
        if expected.selection_mlp.is_some() {
            return Err(Error::TrainingUnsupported {
                what: "a checkpoint with the MLP score network".into(),
                reason: "its layer does not train (the dot-product and linear selections do)",
            });
        }
        let weights = match self.lowering() {
            Lowering::Itself => self.identity_gradients(layer_gradients),
            Lowering::Padded { width } => self.padded_gradients(layer_gradients, width),
        };
        let gradients = Checkpoint {
            form: self.form,
            weights,
        };
        gradients.validate()?;
        Ok(gradients)
    }

    /// lucidrains' and Keras' form: the layer's gradients are the checkpoint's.
    fn identity_gradients(&self, g: &Weights) -> FormWeights {
        let w = &self.weights;
        let b = g.biases.as_ref();
        // A bias the checkpoint lacks is the lowering's zero constant: its gradient is dropped.
        let like = |l: &Linear, weight: &[f32], bias: Option<&Vec<f32>>| Linear {
            weight: weight.to_vec(),
            bias: l.bias.as_ref().and(bias).cloned(),
            out: l.out,
            inp: l.inp,
        };
        let value_k = match &w.selection {
            SelectionWeights::DotProduct { value_k } => value_k,
            _ => unreachable!("Lowering::Itself is the dot-product selection"),
        };
        FormWeights {
            norm: g.norm.clone(),
            q: like(&w.q, &g.search_queries, b.map(|b| &b.search_queries)),
            k: like(&w.k, &g.search_keys, b.map(|b| &b.search_keys)),
            v: like(&w.v, &g.retrieval_values, b.map(|b| &b.retrieval_values)),
            value_q: like(
                &w.value_q,
                &g.retrieval_queries,
                b.map(|b| &b.retrieval_queries),
            ),
            // `b_vk` cancels in the retrieval softmax: its gradient is zero.
            selection: SelectionWeights::DotProduct {
                value_k: Linear {
                    bias: value_k.bias.as_ref().map(|b| vec![0.0; b.len()]),
                    ..like(value_k, &g.retrieval_keys, None)
                },
            },
            out: like(&w.out, &g.out, b.map(|b| &b.out)),
            bias_kv: None,
        }
    }

    /// The padded form (`lower.rs`, `padded_weights`) backwards; see the module documentation.
    fn padded_gradients(&self, g: &Weights, width: usize) -> FormWeights {
        let f = &self.form;
        let w = &self.weights;
        let (dim, heads, rules) = (f.dim, f.searches, f.retrievals);
        let (hd, vd, sel) = (f.head_dim, f.value_dim, f.selection_dim);
        let kernel_scale = (width as f64).powf(-0.5);
        let biases = g.biases.as_ref().expect("the padded form has biases");
        let zeros = |l: &Linear| Grad::zeros(l);

        // Rows `used` of each of `count` blocks of `width` rows of a lowered projection, times
        // `scale`, into the checkpoint's rows `block·used + j`.
        let unpad = |grad: &mut Grad, weight: &[f32], bias: &[f32], count, used, scale: f64| {
            for block in 0..count {
                for j in 0..used {
                    let (at, to) = (block * width + j, block * used + j);
                    grad.add_row(to, &weight[at * dim..][..dim], bias[at] as f64, scale);
                }
            }
        };
        let mut dq = zeros(&w.q);
        let q_scale = (hd as f64).powf(-0.5) / kernel_scale;
        unpad(
            &mut dq,
            &g.search_queries,
            &biases.search_queries,
            heads,
            hd,
            q_scale,
        );
        let mut dk = zeros(&w.k);
        unpad(&mut dk, &g.search_keys, &biases.search_keys, heads, hd, 1.0);
        let mut dv = zeros(&w.v);
        unpad(
            &mut dv,
            &g.retrieval_values,
            &biases.retrieval_values,
            rules,
            vd,
            1.0,
        );

        // dQ̃ of head h, element j < vd: (weight row [dim], bias).
        let d_rq = |h: usize, j: usize| {
            let at = h * width + j;
            (
                &g.retrieval_queries[at * dim..][..dim],
                biases.retrieval_queries[at] as f64,
            )
        };
        let mut d_value_q = zeros(&w.value_q);
        let selection = match &w.selection {
            SelectionWeights::DotProduct { value_k } => {
                let scale = (sel as f64).powf(-0.5) / kernel_scale;
                let mut d_value_k = zeros(value_k);
                for h in 0..heads {
                    for t in 0..sel {
                        let (vq_w, vq_b) = self.retrieval_query(h, t);
                        // dvq of head h, row t: Σ_j c·W_vk[t, j]·dQ̃_h,j.
                        let mut dvq_w = vec![0.0f64; dim];
                        let mut dvq_b = 0.0f64;
                        for j in 0..vd {
                            let (gw, gb) = d_rq(h, j);
                            let dot: f64 = gw.iter().zip(&vq_w).map(|(&a, b)| a as f64 * b).sum();
                            d_value_k.weight[t * vd + j] += scale * (dot + gb * vq_b);
                            let c = scale * value_k.row(t)[j] as f64;
                            for (acc, &a) in dvq_w.iter_mut().zip(gw) {
                                *acc += c * a as f64;
                            }
                            dvq_b += c * gb;
                        }
                        self.retrieval_query_backward(h, t, &dvq_w, dvq_b, &mut dq, &mut d_value_q);
                    }
                }
                SelectionWeights::DotProduct {
                    value_k: d_value_k.finish(value_k),
                }
            }
            SelectionWeights::LinearScore { score } => {
                // Q̃'s bias is w_sn's retrieved half over the kernels' scale, for every head.
                let mut d_score = zeros(score);
                for h in 0..heads {
                    for j in 0..vd {
                        d_score.weight[j] += d_rq(h, j).1 / kernel_scale;
                    }
                }
                SelectionWeights::LinearScore {
                    score: d_score.finish(score),
                }
            }
            SelectionWeights::MlpScore { .. } => {
                unreachable!("Checkpoint::gradients refuses the MLP score network")
            }
        };

        // The output projection reads the first vd of every width columns.
        let mut d_out = zeros(&w.out);
        for o in 0..dim {
            for h in 0..heads {
                for j in 0..vd {
                    d_out.weight[o * heads * vd + h * vd + j] =
                        g.out[o * heads * width + h * width + j] as f64;
                }
            }
            d_out.bias[o] = biases.out[o] as f64;
        }
        FormWeights {
            norm: g.norm.clone(),
            q: dq.finish(&w.q),
            k: dk.finish(&w.k),
            v: dv.finish(&w.v),
            value_q: d_value_q.finish(&w.value_q),
            selection,
            out: d_out.finish(&w.out),
            bias_kv: None,
        }
    }

    /// [`retrieval_query`](Self::retrieval_query) backwards: `(dvq_w, dvq_b)` of head `h`,
    /// row `t`, into the gradients of `W_vq` (and, with `q_compose`, of `W_q`).
    fn retrieval_query_backward(
        &self,
        h: usize,
        t: usize,
        dvq_w: &[f64],
        dvq_b: f64,
        dq: &mut Grad,
        d_value_q: &mut Grad,
    ) {
        let f = &self.form;
        let w = &self.weights;
        let (dim, hd, sel) = (f.dim, f.head_dim, f.selection_dim);
        if !f.q_compose {
            d_value_q.add_row_f64(h * sel + t, dvq_w, dvq_b);
            return;
        }
        let s = (hd as f64).powf(-0.5);
        d_value_q.bias[t] += dvq_b;
        for u in 0..hd {
            let o = h * hd + u;
            let q_row = w.q.row(o);
            let dot: f64 = dvq_w.iter().zip(q_row).map(|(a, &b)| a * b as f64).sum();
            d_value_q.weight[t * hd + u] += s * (dot + dvq_b * w.q.bias_at(o) as f64);
            let c = s * w.value_q.row(t)[u] as f64;
            for (acc, a) in dq.weight[o * dim..][..dim].iter_mut().zip(dvq_w) {
                *acc += c * a;
            }
            dq.bias[o] += c * dvq_b;
        }
    }
}

/// A gradient of one [`Linear`], accumulated in `f64`.
struct Grad {
    weight: Vec<f64>,
    bias: Vec<f64>,
    inp: usize,
}

impl Grad {
    fn zeros(l: &Linear) -> Grad {
        Grad {
            weight: vec![0.0; l.out * l.inp],
            bias: vec![0.0; l.out],
            inp: l.inp,
        }
    }

    /// Adds `scale · (weight, bias)` to row `o`.
    fn add_row(&mut self, o: usize, weight: &[f32], bias: f64, scale: f64) {
        for (acc, &v) in self.weight[o * self.inp..][..self.inp]
            .iter_mut()
            .zip(weight)
        {
            *acc += scale * v as f64;
        }
        self.bias[o] += scale * bias;
    }

    fn add_row_f64(&mut self, o: usize, weight: &[f64], bias: f64) {
        for (acc, v) in self.weight[o * self.inp..][..self.inp]
            .iter_mut()
            .zip(weight)
        {
            *acc += v;
        }
        self.bias[o] += bias;
    }

    /// The gradient as `like`'s [`Linear`]: a bias exactly where `like` has one.
    fn finish(self, like: &Linear) -> Linear {
        Linear {
            weight: self.weight.iter().map(|&v| v as f32).collect(),
            bias: like
                .bias
                .as_ref()
                .map(|_| self.bias.iter().map(|&v| v as f32).collect()),
            out: like.out,
            inp: like.inp,
        }
    }
}
