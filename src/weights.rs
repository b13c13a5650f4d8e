//! The layer's parameters, in PyTorch's `state_dict` names and layouts.
//!
//! Users port trained weights with `safetensors.torch.save_file(module.state_dict(), path)`, so
//! the names (`to_searches_queries.weight`, ...) and the `[out, in]` layout of every matrix are
//! exactly PyTorch's. The configuration is read off the shapes (SPEC §2.2), except `causal`,
//! which no tensor records.

use std::path::Path;

use safetensors::SafeTensors;

use crate::config::{Config, ExtraKeys, MemoryDims};
use crate::error::{Error, Result};
use crate::host_memory;
use crate::io::{self, F32Tensor};
use crate::rng::Rng;

/// `norm.weight`: LayerNorm γ `[dim]` (only with `prenorm`).
pub const NORM_WEIGHT: &str = "norm.weight";
/// `norm.bias`: LayerNorm β `[dim]` (only with `prenorm`).
pub const NORM_BIAS: &str = "norm.bias";
/// `to_searches_queries.weight`: `W_sq [s·d, dim]`.
pub const SEARCH_QUERIES: &str = "to_searches_queries.weight";
/// `to_searches_keys.weight`: `W_sk [s·d, dim]` (`[s·d, kdim]` with `Config::memory`).
pub const SEARCH_KEYS: &str = "to_searches_keys.weight";
/// `to_retrieval_values.weight`: `W_rv [r·d, dim]` (`[r·d, vdim]` with `Config::memory`).
pub const RETRIEVAL_VALUES: &str = "to_retrieval_values.weight";
/// `to_retrieval_queries.weight`: `W_rq [s·d, dim]`.
pub const RETRIEVAL_QUERIES: &str = "to_retrieval_queries.weight";
/// `to_retrieval_keys.weight`: `W_rk [d, d]`, shared by every search and retrieval.
pub const RETRIEVAL_KEYS: &str = "to_retrieval_keys.weight";
/// `to_out.weight`: `W_o [dim, s·d]`.
pub const OUT: &str = "to_out.weight";
/// `to_searches_queries.bias`: `b_sq [s·d]` (with `Config::bias`).
pub const SEARCH_QUERIES_BIAS: &str = "to_searches_queries.bias";
/// `to_searches_keys.bias`: `b_sk [s·d]` (with `Config::bias`).
pub const SEARCH_KEYS_BIAS: &str = "to_searches_keys.bias";
/// `to_retrieval_values.bias`: `b_rv [r·d]` (with `Config::bias`).
pub const RETRIEVAL_VALUES_BIAS: &str = "to_retrieval_values.bias";
/// `to_retrieval_queries.bias`: `b_rq [s·d]` (with `Config::bias`).
pub const RETRIEVAL_QUERIES_BIAS: &str = "to_retrieval_queries.bias";
/// `to_out.bias`: `b_o [dim]` (with `Config::bias`).
pub const OUT_BIAS: &str = "to_out.bias";
/// `bias_k`: the learned extra key row `[s·d]`, per search (with `ExtraKeys::bias_kv`; fairseq's
/// `add_bias_kv`).
pub const BIAS_K: &str = "bias_k";
/// `bias_v`: the learned extra value row `[r·d]`, per retrieval (with `ExtraKeys::bias_kv`).
pub const BIAS_V: &str = "bias_v";
/// The safetensors metadata key of a cross-attention layer (`Config::memory`), `"general"` or
/// `"encoder_decoder"`: its `W_sk` and `W_rv` take their widths from the memory's inputs.
/// Without it, a `W_sk` or `W_rv` of another width than `dim` is misshaped, not a memory's.
pub const MEMORY_KEY: &str = "memory";
/// The safetensors metadata key of `ExtraKeys::zero_attn`, `"true"` (no tensor records it).
pub const ZERO_ATTN_KEY: &str = "add_zero_attn";

/// Every parameter name, in `state_dict` order. The biases exist only with `Config::bias` and
/// the score network only with `Config::selection_mlp` (the general form lowered, SPEC.md §9;
/// the PyTorch package has neither). `W_rk` has no bias: one
/// would add the same logit to every retrieval and cancel in the selection softmax.
pub const PARAMETER_NAMES: [&str; 17] = [
    NORM_WEIGHT,
    NORM_BIAS,
    SEARCH_QUERIES,
    SEARCH_QUERIES_BIAS,
    SEARCH_KEYS,
    SEARCH_KEYS_BIAS,
    RETRIEVAL_VALUES,
    RETRIEVAL_VALUES_BIAS,
    RETRIEVAL_QUERIES,
    RETRIEVAL_QUERIES_BIAS,
    RETRIEVAL_KEYS,
    OUT,
    OUT_BIAS,
    SELECTION_MLP_HIDDEN,
    SELECTION_MLP_SCORE,
    BIAS_K,
    BIAS_V,
];

/// `selection_mlp.hidden`: `W_h [hidden, d]` (with `Config::selection_mlp`).
pub const SELECTION_MLP_HIDDEN: &str = "selection_mlp.hidden";
/// `selection_mlp.score`: `w_s [hidden]` (with `Config::selection_mlp`).
pub const SELECTION_MLP_SCORE: &str = "selection_mlp.score";

/// The MLP score network of the retrieval selection (`Config::selection_mlp`): the logit of
/// retrieval ρ of search σ is `Σ_t w_s[t]·relu(W_h[t]·Ret[ρ] + RQ[σ, t])`, the hidden units'
/// input from the query taken from the retrieval-query block.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionMlp {
    /// `W_h [hidden, d]`.
    pub hidden: Vec<f32>,
    /// `w_s [hidden]`.
    pub score: Vec<f32>,
}

/// The safetensors metadata key of a non-default LayerNorm epsilon (prefixed like the tensors).
pub const LAYER_NORM_EPS_KEY: &str = "layer_norm_eps";

/// A string map of whatever type `safetensors` takes for metadata (std's or hashbrown's).
fn string_map<M: Default + Extend<(String, String)>>(pairs: Vec<(String, String)>) -> M {
    let mut map = M::default();
    map.extend(pairs);
    map
}

/// The projections' biases (`Config::bias`).
#[derive(Clone, Debug, PartialEq)]
pub struct Biases {
    /// `b_sq [s·d]`.
    pub search_queries: Vec<f32>,
    /// `b_sk [s·d]`.
    pub search_keys: Vec<f32>,
    /// `b_rv [r·d]`.
    pub retrieval_values: Vec<f32>,
    /// `b_rq [s·d]`.
    pub retrieval_queries: Vec<f32>,
    /// `b_o [dim]`.
    pub out: Vec<f32>,
}

/// Tensors a reference-case file may hold beside the parameters (`input`, `mask`, `output`):
/// the loader skips them so that one file can carry a whole case (and a gradient case's, by
/// [`io::is_case_tensor`]).
pub const CASE_TENSOR_NAMES: [&str; 3] = [io::INPUT, io::MASK, io::OUTPUT];

/// All parameters of one layer, each a row-major `Vec<f32>` in PyTorch layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    config: Config,
    /// LayerNorm `(γ, β)`, present exactly when `config.prenorm`.
    pub norm: Option<(Vec<f32>, Vec<f32>)>,
    /// `W_sq [s·d, dim]`.
    pub search_queries: Vec<f32>,
    /// `W_sk [s·d, dim]` (`[s·d, kdim]` with `Config::memory`).
    pub search_keys: Vec<f32>,
    /// `W_rv [r·d, dim]` (`[r·d, vdim]` with `Config::memory`).
    pub retrieval_values: Vec<f32>,
    /// `W_rq [s·d, dim]`.
    pub retrieval_queries: Vec<f32>,
    /// `W_rk [d, d]`.
    pub retrieval_keys: Vec<f32>,
    /// `W_o [dim, s·d]`.
    pub out: Vec<f32>,
    /// The biases, present exactly when `config.bias`.
    pub biases: Option<Biases>,
    /// The MLP score network, present exactly when `config.selection_mlp`.
    pub selection_mlp: Option<SelectionMlp>,
    /// The learned extra key and value rows `(bias_k [s·d], bias_v [r·d])`, present exactly
    /// when `config.extra_keys.bias_kv` ([`Weights::with_bias_kv`]).
    pub bias_kv: Option<(Vec<f32>, Vec<f32>)>,
}

/// One row of [`Weights::parameters`]: a parameter's `state_dict` name, its shape under the
/// configuration, and its data (which a checked [`Weights`] holds exactly `shape` of).
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter<'a> {
    /// The `state_dict` name (one of [`PARAMETER_NAMES`]).
    pub name: &'static str,
    /// The shape the configuration gives it (PyTorch's `[out, in]` for matrices).
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: &'a [f32],
}

impl Weights {
    /// Seeded random weights with PyTorch's default initialisation: every `nn.Linear` weight
    /// and bias from `U(-1/√fan_in, 1/√fan_in)`, LayerNorm `γ = 1, β = 0`. The same seed gives the same
    /// weights on every platform (not PyTorch's stream, which depends on its generator).
    pub fn random(config: Config, seed: u64) -> Result<Weights> {
        config.validate()?;
        // The whole layer's bytes are asked for before the first draw, so that a size no machine
        // holds (an extra zero in `dim`) is Error::HostMemory at once rather than an abort
        // halfway; each matrix is then reserved fallibly too (crate::host_memory).
        let parameters = config.checked_parameter_count().ok_or(Error::HostMemory {
            what: "random weights".into(),
            bytes: u64::MAX,
            hint: None,
        })?;
        host_memory::check_available(
            "random weights",
            host_memory::bytes_of(&[parameters], 4),
            None,
        )?;
        let mut rng = Rng::seed_from_u64(seed);
        // `rows × cols` values from U(-1/√fan_in, 1/√fan_in), as nn.Linear draws weight and bias.
        let mut draw = |what: &str, dims: &[usize], fan_in: usize| -> Result<Vec<f32>> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let count = host_memory::element_count(what, dims, 4)?;
            let mut v = host_memory::try_with_capacity(what, count)?;
            v.extend((0..count).map(|_| rng.uniform_f32(-bound, bound)));
            Ok(v)
        };
        let (dim, d) = (config.dim, config.dim_head);
        let (kdim, vdim) = config.key_value_dims();
        let (sw, vw) = (config.search_width(), config.value_width());
        let search_queries = draw("search_queries", &[sw, dim], dim)?;
        let search_keys = draw("search_keys", &[sw, kdim], kdim)?;
        let retrieval_values = draw("retrieval_values", &[vw, vdim], vdim)?;
        let retrieval_queries = draw("retrieval_queries", &[sw, dim], dim)?;
        let retrieval_keys = draw("retrieval_keys", &[d, d], d)?;
        let out = draw("out", &[dim, sw], sw)?;
        let biases = match config.bias {
            true => Some(Biases {
                search_queries: draw("search_queries.bias", &[sw], dim)?,
                search_keys: draw("search_keys.bias", &[sw], kdim)?,
                retrieval_values: draw("retrieval_values.bias", &[vw], vdim)?,
                retrieval_queries: draw("retrieval_queries.bias", &[sw], dim)?,
                out: draw("out.bias", &[dim], sw)?,
            }),
            false => None,
        };
        let selection_mlp = match config.selection_mlp {
            Some(hidden) => Some(SelectionMlp {
                hidden: draw("selection_mlp.hidden", &[hidden, d], d)?,
                score: draw("selection_mlp.score", &[hidden], hidden)?,
            }),
            None => None,
        };
        let bias_kv = match config.extra_keys.bias_kv {
            true => Some((draw("bias_k", &[sw], d)?, draw("bias_v", &[vw], d)?)),
            false => None,
        };
        let norm = match config.prenorm {
            true => Some((
                host_memory::try_filled("norm.gamma", config.dim, 1.0)?,
                host_memory::try_filled("norm.beta", config.dim, 0.0)?,
            )),
            false => None,
        };
        Ok(Weights {
            selection_mlp,
            config,
            norm,
            search_queries,
            search_keys,
            retrieval_values,
            retrieval_queries,
            retrieval_keys,
            out,
            biases,
            bias_kv,
        })
    }

    /// Weights from their parts: `[W_sq, W_sk, W_rv, W_rq, W_rk, W_o]` (PyTorch layout), the
    /// LayerNorm `(γ, β)`, the biases and the MLP score network, each checked against `config`
    /// (which must have `prenorm`, `bias` and `selection_mlp` exactly when they are present,
    /// and no `extra_keys.bias_kv`: [`Weights::with_bias_kv`] adds those rows).
    pub fn from_parts(
        config: Config,
        norm: Option<(Vec<f32>, Vec<f32>)>,
        [
            search_queries,
            search_keys,
            retrieval_values,
            retrieval_queries,
            retrieval_keys,
            out,
        ]: [Vec<f32>; 6],
        biases: Option<Biases>,
        selection_mlp: Option<SelectionMlp>,
    ) -> Result<Weights> {
        config.validate()?;
        let weights = Weights {
            config,
            norm,
            search_queries,
            search_keys,
            retrieval_values,
            retrieval_queries,
            retrieval_keys,
            out,
            biases,
            selection_mlp,
            bias_kv: None,
        };
        if config.extra_keys.bias_kv {
            return Err(Error::ConfigMismatch(
                "Weights::from_parts takes a configuration without extra_keys.bias_kv; add the \
                 learned rows with Weights::with_bias_kv"
                    .into(),
            ));
        }
        weights.checked()
    }

    /// The learned extra key and value rows (fairseq's `add_bias_kv`): `bias_k [s·d]` (per
    /// search) and `bias_v [r·d]` (per retrieval). Sets `config.extra_keys.bias_kv`.
    pub fn with_bias_kv(mut self, bias_k: Vec<f32>, bias_v: Vec<f32>) -> Result<Weights> {
        self.config.extra_keys.bias_kv = true;
        self.bias_kv = Some((bias_k, bias_v));
        self.checked()
    }

    /// Checks every tensor against the configuration's table ([`Weights::parameters`]).
    fn checked(self) -> Result<Weights> {
        self.check_shapes()?;
        for Parameter { name, data, .. } in self.parameters() {
            io::check_finite(name, data)?;
        }
        Ok(self)
    }

    /// Checks that the tensors present and their lengths are the configuration's: the public
    /// fields may have been changed since the weights were made (a layer checks this before it
    /// places them).
    pub(crate) fn check_shapes(&self) -> Result<()> {
        let config = self.config;
        let weights = self;
        config.validate()?;
        if weights.norm.is_some() != config.prenorm
            || weights.biases.is_some() != config.bias
            || weights.selection_mlp.is_some() != config.selection_mlp.is_some()
            || weights.bias_kv.is_some() != config.extra_keys.bias_kv
        {
            return Err(Error::ConfigMismatch(
                "LayerNorm weights, biases, the MLP score network and the learned extra rows \
                 must be present exactly with prenorm, bias, selection_mlp and \
                 extra_keys.bias_kv"
                    .into(),
            ));
        }
        for Parameter { name, shape, data } in weights.parameters() {
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::shape(name, &shape, &[data.len()]));
            }
        }
        Ok(())
    }

    /// The configuration these weights belong to.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the fields no tensor records (`causal`, `dropout`), keeping the shapes. Nothing in
    /// the crate calls it: the readers take `causal` themselves, and dropout does not change a
    /// forward (the layer runs inference).
    #[deprecated(
        note = "pass `causal` to Weights::from_safetensors / Weights::load (or CheckpointOptions); \
                dropout does not change inference"
    )]
    pub fn with_flags(mut self, causal: bool, dropout: f32) -> Result<Weights> {
        let config = self.config.causal(causal).dropout(dropout);
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    /// Loads weights from a safetensors file; see [`Weights::from_safetensors`].
    pub fn load(path: impl AsRef<Path>, causal: bool) -> Result<Weights> {
        Self::from_safetensors(&io::read_file(path.as_ref())?, causal, "")
    }

    /// Reads weights from safetensors bytes, inferring `dim, dim_head, num_searches,
    /// num_retrievals, prenorm` from the shapes. `prefix` is prepended to every parameter name
    /// (`"layers.0.attn."` for a layer inside a larger model's `state_dict`; `""` for a bare
    /// layer); tensors outside the prefix are ignored. Under the prefix, a missing, misshaped,
    /// non-finite or unknown tensor is an error that names it (the case tensors `input`, `mask`,
    /// `output` and a gradient case's `grad_output`, `grad_input`, `grad.*` are allowed).
    pub fn from_safetensors(bytes: &[u8], causal: bool, prefix: &str) -> Result<Weights> {
        let file = SafeTensors::deserialize(bytes)?;
        for (name, _) in file.iter() {
            let Some(local) = name.strip_prefix(prefix) else {
                continue;
            };
            let known = PARAMETER_NAMES.contains(&local)
                || (prefix.is_empty() && io::is_case_tensor(local));
            if !known {
                return Err(Error::UnexpectedTensor {
                    name: name.to_string(),
                    known: PARAMETER_NAMES.join(", "),
                });
            }
        }
        let shape_of = |local: &str| -> Result<Vec<usize>> {
            let name = format!("{prefix}{local}");
            file.tensor(&name)
                .map(|view| view.shape().to_vec())
                .map_err(|_| Error::MissingTensor {
                    name,
                    context: Some("required by CompositionalAttention".into()),
                })
        };
        let fetch = |local: &str, expected: &[usize]| -> Result<Vec<f32>> {
            let name = format!("{prefix}{local}");
            let view = file.tensor(&name).map_err(|_| Error::MissingTensor {
                name: name.clone(),
                context: Some("required by CompositionalAttention".into()),
            })?;
            if view.shape() != expected {
                return Err(Error::shape(name, expected, view.shape()));
            }
            io::tensor_to_f32(&name, &view)
        };

        // d from the square W_rk, dim from W_sq's columns, s and r from the row counts.
        let rk_shape = shape_of(RETRIEVAL_KEYS)?;
        let d = match rk_shape[..] {
            [a, b] if a == b && a > 0 => a,
            _ => {
                return Err(Error::Shape {
                    name: format!("{prefix}{RETRIEVAL_KEYS}"),
                    expected: vec![rk_shape.first().copied().unwrap_or(0); 2],
                    found: rk_shape,
                });
            }
        };
        let sq_shape = shape_of(SEARCH_QUERIES)?;
        let (search_width, dim) = match sq_shape[..] {
            [rows, cols] if rows > 0 && rows % d == 0 && cols > 0 => (rows, cols),
            _ => {
                return Err(Error::ConfigMismatch(format!(
                    "{prefix}{SEARCH_QUERIES} has shape {sq_shape:?}; it must be [num_searches·{d}, dim] \
                     with dim_head {d} taken from {prefix}{RETRIEVAL_KEYS}"
                )));
            }
        };
        let rv_shape = shape_of(RETRIEVAL_VALUES)?;
        let (value_width, vdim) = match rv_shape[..] {
            [rows, cols] if rows > 0 && rows % d == 0 && cols > 0 => (rows, cols),
            _ => {
                return Err(Error::ConfigMismatch(format!(
                    "{prefix}{RETRIEVAL_VALUES} has shape {rv_shape:?}; it must be [num_retrievals·{d}, vdim]"
                )));
            }
        };
        // The key input's width from W_sk (its rows are checked when it is fetched).
        let kdim = match shape_of(SEARCH_KEYS)?[..] {
            [_, cols] if cols > 0 => cols,
            _ => dim,
        };
        let has_norm_weight = file.tensor(&format!("{prefix}{NORM_WEIGHT}")).is_ok();
        let has_norm_bias = file.tensor(&format!("{prefix}{NORM_BIAS}")).is_ok();
        if has_norm_weight != has_norm_bias {
            let missing = if has_norm_weight {
                NORM_BIAS
            } else {
                NORM_WEIGHT
            };
            return Err(Error::MissingTensor {
                name: format!("{prefix}{missing}"),
                context: Some("prenorm needs both norm.weight and norm.bias".into()),
            });
        }
        // Biases: all five or none.
        let bias_names = [
            SEARCH_QUERIES_BIAS,
            SEARCH_KEYS_BIAS,
            RETRIEVAL_VALUES_BIAS,
            RETRIEVAL_QUERIES_BIAS,
            OUT_BIAS,
        ];
        let present: Vec<bool> = bias_names
            .iter()
            .map(|name| file.tensor(&format!("{prefix}{name}")).is_ok())
            .collect();
        let bias = present.iter().any(|&p| p);
        if let Some(missing) = bias_names.iter().zip(&present).find(|(_, p)| bias && !**p) {
            return Err(Error::MissingTensor {
                name: format!("{prefix}{}", missing.0),
                context: Some("biased projections need all five biases".into()),
            });
        }
        let selection_mlp = match shape_of(SELECTION_MLP_HIDDEN).ok() {
            Some(shape) => match shape[..] {
                [hidden, cols] if cols == d => Some(hidden),
                _ => {
                    return Err(Error::shape(
                        format!("{prefix}{SELECTION_MLP_HIDDEN}"),
                        &[0, d],
                        &shape,
                    ));
                }
            },
            None => None,
        };
        let eps_key = format!("{prefix}{LAYER_NORM_EPS_KEY}");
        let (_, metadata) = SafeTensors::read_metadata(bytes)?;
        let layer_norm_eps = match metadata.metadata().as_ref().and_then(|m| m.get(&eps_key)) {
            Some(text) => text.parse::<f32>().map_err(|_| Error::InvalidConfig {
                field: "layer_norm_eps",
                value: text.chars().take(40).collect(),
                reason: "the file's layer_norm_eps metadata must be a number",
            })?,
            None => crate::config::LAYER_NORM_EPS,
        };
        // A metadata value one of `allowed` (an unknown value is an error, not a default).
        let word = |key: &'static str, allowed: &[&'static str]| -> Result<Option<&'static str>> {
            let name = format!("{prefix}{key}");
            match metadata.metadata().as_ref().and_then(|m| m.get(&name)) {
                None => Ok(None),
                Some(text) => match allowed.iter().find(|a| **a == text.as_str()) {
                    Some(found) => Ok(Some(*found)),
                    None => Err(Error::InvalidConfig {
                        field: key,
                        value: text.chars().take(40).collect(),
                        reason: "the file's metadata holds a value the crate does not write \
                                 (memory: \"general\" or \"encoder_decoder\"; add_zero_attn: \
                                 \"true\" or \"false\")",
                    }),
                },
            }
        };
        // Only the metadata makes a cross-attention layer: without it, W_sk and W_rv of another
        // width than W_sq are misshaped, not a memory's.
        let memory = word(MEMORY_KEY, &["general", "encoder_decoder"])?.map(|kind| MemoryDims {
            key_dim: kdim,
            value_dim: vdim,
            encoder_decoder: kind == "encoder_decoder",
        });
        let zero_attn = word(ZERO_ATTN_KEY, &["true", "false"])? == Some("true");
        let (kdim, vdim) = memory.map_or((dim, dim), |m| (m.key_dim, m.value_dim));
        let has_bias_k = file.tensor(&format!("{prefix}{BIAS_K}")).is_ok();
        if has_bias_k != file.tensor(&format!("{prefix}{BIAS_V}")).is_ok() {
            let missing = if has_bias_k { BIAS_V } else { BIAS_K };
            return Err(Error::MissingTensor {
                name: format!("{prefix}{missing}"),
                context: Some("add_bias_kv needs both bias_k and bias_v".into()),
            });
        }
        let config = Config::new(dim)
            .dim_head(d)
            .num_searches(search_width / d)
            .num_retrievals(value_width / d)
            .prenorm(has_norm_weight)
            .causal(causal)
            .bias(bias)
            .selection_mlp(selection_mlp)
            .layer_norm_eps(layer_norm_eps)
            .memory(memory)
            .extra_keys(ExtraKeys {
                bias_kv: has_bias_k,
                zero_attn,
            });
        config.validate()?;

        let norm = if config.prenorm {
            Some((fetch(NORM_WEIGHT, &[dim])?, fetch(NORM_BIAS, &[dim])?))
        } else {
            None
        };
        Ok(Weights {
            norm,
            search_queries: fetch(SEARCH_QUERIES, &[search_width, dim])?,
            search_keys: fetch(SEARCH_KEYS, &[search_width, kdim])?,
            retrieval_values: fetch(RETRIEVAL_VALUES, &[value_width, vdim])?,
            retrieval_queries: fetch(RETRIEVAL_QUERIES, &[search_width, dim])?,
            retrieval_keys: fetch(RETRIEVAL_KEYS, &[d, d])?,
            out: fetch(OUT, &[dim, search_width])?,
            biases: match bias {
                true => Some(Biases {
                    search_queries: fetch(SEARCH_QUERIES_BIAS, &[search_width])?,
                    search_keys: fetch(SEARCH_KEYS_BIAS, &[search_width])?,
                    retrieval_values: fetch(RETRIEVAL_VALUES_BIAS, &[value_width])?,
                    retrieval_queries: fetch(RETRIEVAL_QUERIES_BIAS, &[search_width])?,
                    out: fetch(OUT_BIAS, &[dim])?,
                }),
                false => None,
            },
            selection_mlp: match selection_mlp {
                Some(hidden) => Some(SelectionMlp {
                    hidden: fetch(SELECTION_MLP_HIDDEN, &[hidden, d])?,
                    score: fetch(SELECTION_MLP_SCORE, &[hidden])?,
                }),
                None => None,
            },
            bias_kv: match has_bias_k {
                true => Some((
                    fetch(BIAS_K, &[search_width])?,
                    fetch(BIAS_V, &[value_width])?,
                )),
                false => None,
            },
            config,
        })
    }

    /// Serialises the parameters as safetensors bytes, `F32`, `state_dict` names. A LayerNorm
    /// epsilon other than PyTorch's default (a Keras checkpoint's 1e-3), which no tensor
    /// records, goes in the file's metadata as `layer_norm_eps`, and loads back from there; so
    /// do a cross-attention layer (`memory`) and `add_zero_attn`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut metadata = Vec::new();
        if self.config.layer_norm_eps != crate::config::LAYER_NORM_EPS {
            metadata.push((
                LAYER_NORM_EPS_KEY.to_string(),
                self.config.layer_norm_eps.to_string(),
            ));
        }
        if let Some(memory) = self.config.memory {
            let kind = match memory.encoder_decoder {
                true => "encoder_decoder",
                false => "general",
            };
            metadata.push((MEMORY_KEY.to_string(), kind.to_string()));
        }
        if self.config.extra_keys.zero_attn {
            metadata.push((ZERO_ATTN_KEY.to_string(), "true".to_string()));
        }
        let metadata = (!metadata.is_empty()).then(|| string_map(metadata));
        Ok(safetensors::serialize(self.named_tensors(), metadata)?)
    }

    /// Writes the parameters to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        io::write_file(path.as_ref(), &self.to_safetensors()?)
    }

    /// Every parameter as `(state_dict name, shape, data)`, in the order files are written
    /// ([`Weights::parameters`]).
    pub fn named_tensors(&self) -> Vec<(&'static str, F32Tensor<'_>)> {
        self.parameters()
            .into_iter()
            .map(|p| (p.name, F32Tensor::new(p.shape, p.data)))
            .collect()
    }

    /// The one table of the layer's parameters: each present parameter's `state_dict` name, its
    /// shape under the configuration, and its data, in the order files are written (LayerNorm,
    /// the six matrices, the biases, the score network). [`Weights::from_parts`] checks the
    /// data against it, [`Weights::named_tensors`] writes it, and the fuzz targets check loaded
    /// weights by it.
    pub fn parameters(&self) -> Vec<Parameter<'_>> {
        let c = &self.config;
        let (dim, d, sw, vw) = (c.dim, c.dim_head, c.search_width(), c.value_width());
        let (kdim, vdim) = c.key_value_dims();
        fn p<'a>(name: &'static str, shape: &[usize], data: &'a [f32]) -> Parameter<'a> {
            Parameter {
                name,
                shape: shape.to_vec(),
                data,
            }
        }
        let mut table = Vec::with_capacity(PARAMETER_NAMES.len());
        if let Some((gamma, beta)) = &self.norm {
            table.extend([p(NORM_WEIGHT, &[dim], gamma), p(NORM_BIAS, &[dim], beta)]);
        }
        table.extend([
            p(SEARCH_QUERIES, &[sw, dim], &self.search_queries),
            p(SEARCH_KEYS, &[sw, kdim], &self.search_keys),
            p(RETRIEVAL_VALUES, &[vw, vdim], &self.retrieval_values),
            p(RETRIEVAL_QUERIES, &[sw, dim], &self.retrieval_queries),
            p(RETRIEVAL_KEYS, &[d, d], &self.retrieval_keys),
            p(OUT, &[dim, sw], &self.out),
        ]);
        if let Some(b) = &self.biases {
            table.extend([
                p(SEARCH_QUERIES_BIAS, &[sw], &b.search_queries),
                p(SEARCH_KEYS_BIAS, &[sw], &b.search_keys),
                p(RETRIEVAL_VALUES_BIAS, &[vw], &b.retrieval_values),
                p(RETRIEVAL_QUERIES_BIAS, &[sw], &b.retrieval_queries),
                p(OUT_BIAS, &[dim], &b.out),
            ]);
        }
        if let (Some(m), Some(hidden)) = (&self.selection_mlp, c.selection_mlp) {
            table.extend([
                p(SELECTION_MLP_HIDDEN, &[hidden, d], &m.hidden),
                p(SELECTION_MLP_SCORE, &[hidden], &m.score),
            ]);
        }
        if let Some((bias_k, bias_v)) = &self.bias_kv {
            table.extend([p(BIAS_K, &[sw], bias_k), p(BIAS_V, &[vw], bias_v)]);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Config {
        Config::new(12)
            .dim_head(5)
            .num_searches(3)
            .num_retrievals(2)
            .prenorm(true)
    }

    #[test]
    fn round_trip_infers_the_configuration() {
        let weights = Weights::random(small(), 3).unwrap();
        let bytes = weights.to_safetensors().unwrap();
        let loaded = Weights::from_safetensors(&bytes, false, "").unwrap();
        assert_eq!(loaded, weights);
        let causal = Weights::from_safetensors(&bytes, true, "").unwrap();
        assert!(causal.config().causal);
    }

    /// A non-default LayerNorm epsilon (Keras') survives a save and a load, through the file's
    /// metadata; a malformed one is an error naming it.
    #[test]
    fn layer_norm_epsilon_round_trips() {
        let weights = Weights::random(small().layer_norm_eps(1e-3), 6).unwrap();
        let loaded =
            Weights::from_safetensors(&weights.to_safetensors().unwrap(), false, "").unwrap();
        assert_eq!(loaded.config().layer_norm_eps, 1e-3);
        assert_eq!(loaded, weights);
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(LAYER_NORM_EPS_KEY.to_string(), "tiny".to_string());
        let bytes = safetensors::serialize(
            weights.named_tensors(),
            Some(string_map(metadata.into_iter().collect())),
        )
        .unwrap();
        assert!(matches!(
            Weights::from_safetensors(&bytes, false, ""),
            Err(Error::InvalidConfig {
                field: "layer_norm_eps",
                ..
            })
        ));
    }

    #[test]
    fn biases_round_trip_and_must_be_complete() {
        let weights = Weights::random(small().bias(true), 5).unwrap();
        assert!(weights.biases.is_some());
        let bytes = weights.to_safetensors().unwrap();
        let loaded = Weights::from_safetensors(&bytes, false, "").unwrap();
        assert_eq!(loaded, weights);
        assert!(loaded.config().bias);
        // Four biases of five: the missing one is named.
        let tensors: Vec<_> = weights
            .named_tensors()
            .into_iter()
            .filter(|(name, _)| *name != RETRIEVAL_VALUES_BIAS)
            .collect();
        let bytes = safetensors::serialize(tensors, None).unwrap();
        match Weights::from_safetensors(&bytes, false, "") {
            Err(Error::MissingTensor { name, .. }) => assert_eq!(name, RETRIEVAL_VALUES_BIAS),
            other => panic!("expected the missing bias named, got {other:?}"),
        }
    }

    #[test]
    fn default_init_bounds() {
        let w = Weights::random(Config::new(100).dim_head(4), 1).unwrap();
        let bound = 1.0 / 10.0;
        assert!(w.search_queries.iter().all(|v| v.abs() <= bound));
        let max = w.search_queries.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.9 * bound, "draws should fill the range, max {max}");
        assert_ne!(w.search_queries, w.search_keys);
    }

    #[test]
    fn prefixed_state_dict() {
        let weights = Weights::random(small(), 4).unwrap();
        let tensors: Vec<_> = weights
            .named_tensors()
            .into_iter()
            .map(|(name, t)| (format!("blocks.0.attn.{name}"), t))
            .collect();
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let loaded = Weights::from_safetensors(&bytes, false, "blocks.0.attn.").unwrap();
        assert_eq!(loaded, weights);
        assert!(matches!(
            Weights::from_safetensors(&bytes, false, ""),
            Err(Error::UnexpectedTensor { .. })
        ));
    }
}
