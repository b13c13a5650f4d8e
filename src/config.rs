//! The layer's hyper-parameters, named as in the PyTorch package.
//!
//! `CompositionalAttention(dim, dim_head=64, num_searches=8, num_retrievals=2, dropout=0.,
//! prenorm=False, causal=False)`: the same names and defaults, so a model definition ports
//! field for field. Validation here covers what any device rejects (zero sizes, a dropout
//! outside `[0, 1)`); what depends on a particular device's limits is checked when a layer is
//! placed on it.

use crate::error::{Error, Result};

/// LayerNorm epsilon of the PyTorch reference (`nn.LayerNorm` default). The Keras package uses
/// 1e-3; weights ported from Keras with `prenorm` differ by that much.
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Hyper-parameters of one Compositional Attention layer.
///
/// Searches (`num_searches`, the paper's `S`) are attention heads that each find *where* to
/// look; retrievals (`num_retrievals`, the paper's `R`) are value projections that say *what*
/// to take from there. Every search is paired with every retrieval and a second, small
/// attention over the `R` retrieved vectors picks the mix for each search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Model width `D`: the last axis of the input and the output.
    pub dim: usize,
    /// Width `d` of every search query/key, retrieval value and retrieval query/key.
    pub dim_head: usize,
    /// Number of searches `s`.
    pub num_searches: usize,
    /// Number of retrievals `r`.
    pub num_retrievals: usize,
    /// Dropout probability `p` of training: `CompositionalAttention::forward_train` drops the
    /// search attention and the retrieval selection with it (SPEC §2.3, §6.4). Inference
    /// (`forward`) ignores it, as PyTorch's `.eval()` and Keras' default call do.
    pub dropout: f32,
    /// Apply `LayerNorm(dim)` (eps [`layer_norm_eps`](Self::layer_norm_eps)) to the input
    /// before the four input projections. There is no residual connection inside the layer
    /// either way.
    pub prenorm: bool,
    /// Query `i` may attend key `j` only when `j <= i`.
    pub causal: bool,
    /// Every projection has a bias (`y = x·Wᵀ + b`): the official fairseq module and xformers.
    /// The PyTorch and Keras packages have none (the default).
    pub bias: bool,
    /// The LayerNorm epsilon with `prenorm`: 1e-5 in the PyTorch package (the default), 1e-3 in
    /// the Keras package.
    pub layer_norm_eps: f32,
    /// The retrieval selection is an MLP score network with this many hidden units (fairseq's
    /// and xformers' `nonlinear=True`, lowered from a checkpoint: SPEC.md §9.1) instead of the
    /// dot product `Q̃·Ret` (`None`, the default). Only the unfused strategy runs it.
    pub selection_mlp: Option<usize>,
    /// Where keys and values come from: `None`, the query input (self-attention, every
    /// implementation's default); `Some`, a memory of its own widths (fairseq's
    /// `encoder_decoder_attention` or general attention with `kdim`/`vdim`, SPEC.md §9.2), which
    /// the layer projects once into a [`Memory`](crate::Memory) and attends with
    /// `forward_cross`.
    pub memory: Option<MemoryDims>,
    /// Extra key and value rows every query may attend, after the memory's (or the input's)
    /// own: fairseq's `add_bias_kv` and `add_zero_attn` (SPEC.md §9.2).
    pub extra_keys: ExtraKeys,
}

/// A cross-attention layer's key and value inputs ([`Config::memory`]): fairseq's `kdim` and
/// `vdim`, and which attention it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryDims {
    /// `kdim`: the width of the input the search keys are projected from.
    pub key_dim: usize,
    /// `vdim`: the width of the input the retrieval values are projected from.
    pub value_dim: usize,
    /// fairseq's `encoder_decoder_attention`: keys and values from one memory input (an
    /// encoder's output), and no self-attention. `false`: its general attention (neither flag),
    /// with separate key and value inputs, which also runs self-attention where both are as
    /// wide as the input.
    pub encoder_decoder: bool,
}

/// The extra key rows of fairseq's module ([`Config::extra_keys`]), always attendable, causal
/// or not: a learned row (`bias_k`, `bias_v`: [`Weights::bias_kv`](crate::Weights)) and a zero
/// row. fairseq appends them after the keys the projections give; a `Memory` keeps them in
/// front (the order does not change a softmax).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExtraKeys {
    /// `add_bias_kv`: one learned key row and value row.
    pub bias_kv: bool,
    /// `add_zero_attn`: one zero key row and value row.
    pub zero_attn: bool,
}

impl ExtraKeys {
    /// How many rows: 0, 1 or 2.
    pub fn rows(&self) -> usize {
        self.bias_kv as usize + self.zero_attn as usize
    }
}

impl Config {
    /// A configuration with the reference defaults for everything but `dim`:
    /// `dim_head 64, num_searches 8, num_retrievals 2, dropout 0, prenorm false, causal false`.
    pub fn new(dim: usize) -> Self {
        Config {
            dim,
            dim_head: 64,
            num_searches: 8,
            num_retrievals: 2,
            dropout: 0.0,
            prenorm: false,
            causal: false,
            bias: false,
            layer_norm_eps: LAYER_NORM_EPS,
            selection_mlp: None,
            memory: None,
            extra_keys: ExtraKeys::default(),
        }
    }

    /// Sets `memory`: `Some` makes a cross-attention layer.
    pub fn memory(mut self, memory: Option<MemoryDims>) -> Self {
        self.memory = memory;
        self
    }

    /// Sets `extra_keys`.
    pub fn extra_keys(mut self, extra_keys: ExtraKeys) -> Self {
        self.extra_keys = extra_keys;
        self
    }

    /// The widths `(kdim, vdim)` the search keys and retrieval values are projected from:
    /// `(dim, dim)` for self-attention.
    pub fn key_value_dims(&self) -> (usize, usize) {
        self.memory
            .map_or((self.dim, self.dim), |m| (m.key_dim, m.value_dim))
    }

    /// Whether the layer's self-attention is plain: keys and values projected from the input
    /// (no memory, or fairseq's general attention with `kdim = vdim = embed_dim`) and no extra
    /// key rows. Such a layer runs on the self-attention cores, trains, generates over a KV
    /// cache and draws attention maps; every other layer attends through a
    /// [`Memory`](crate::Memory) (SPEC.md §9.2).
    pub fn plain_self_attention(&self) -> bool {
        self.runs_self_attention() && self.extra_keys.rows() == 0
    }

    /// Whether the layer's keys and values may come from its own input: no memory, or fairseq's
    /// general attention as wide as the input (not encoder-decoder attention).
    pub fn runs_self_attention(&self) -> bool {
        match self.memory {
            None => true,
            Some(m) => !m.encoder_decoder && (m.key_dim, m.value_dim) == (self.dim, self.dim),
        }
    }

    /// Sets `selection_mlp`.
    pub fn selection_mlp(mut self, hidden: Option<usize>) -> Self {
        self.selection_mlp = hidden;
        self
    }

    /// Sets `bias`.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets `layer_norm_eps`.
    pub fn layer_norm_eps(mut self, eps: f32) -> Self {
        self.layer_norm_eps = eps;
        self
    }

    /// Sets `dim_head`.
    pub fn dim_head(mut self, dim_head: usize) -> Self {
        self.dim_head = dim_head;
        self
    }

    /// Sets `num_searches`.
    pub fn num_searches(mut self, num_searches: usize) -> Self {
        self.num_searches = num_searches;
        self
    }

    /// Sets `num_retrievals`.
    pub fn num_retrievals(mut self, num_retrievals: usize) -> Self {
        self.num_retrievals = num_retrievals;
        self
    }

    /// Sets `dropout` (identity at inference; see the field's documentation).
    pub fn dropout(mut self, dropout: f32) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets `prenorm`.
    pub fn prenorm(mut self, prenorm: bool) -> Self {
        self.prenorm = prenorm;
        self
    }

    /// Sets `causal`.
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// Checks the device-independent rules: positive sizes, `0 <= dropout < 1`, and sizes whose
    /// products fit the 32-bit indices the kernels use.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("dim", self.dim),
            ("dim_head", self.dim_head),
            ("num_searches", self.num_searches),
            ("num_retrievals", self.num_retrievals),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        if let Some(memory) = self.memory {
            for (field, value) in [
                ("memory.key_dim", memory.key_dim),
                ("memory.value_dim", memory.value_dim),
            ] {
                if value == 0 {
                    return Err(Error::InvalidConfig {
                        field,
                        value: "0".into(),
                        reason: "must be at least 1",
                    });
                }
            }
            if self.causal {
                return Err(Error::InvalidConfig {
                    field: "causal",
                    value: "true".into(),
                    reason: "causal does not apply to attention over a memory: every query sees \
                             every memory position (SPEC.md §9.2)",
                });
            }
        }
        if self.prenorm && (self.memory.is_some() || self.extra_keys.rows() > 0) {
            return Err(Error::InvalidConfig {
                field: "prenorm",
                value: "true".into(),
                reason: "a memory or extra key rows come from fairseq's module, which has no \
                         LayerNorm: the layer does not normalise a memory",
            });
        }
        if let Some(hidden) = self.selection_mlp
            && !(1..=self.dim_head).contains(&hidden)
        {
            return Err(Error::InvalidConfig {
                field: "selection_mlp",
                value: hidden.to_string(),
                reason: "the hidden width must be between 1 and dim_head (its inputs sit in the \
                         retrieval-query block of a head)",
            });
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "layer_norm_eps",
                value: self.layer_norm_eps.to_string(),
                reason: "must be positive and finite",
            });
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(Error::InvalidConfig {
                field: "dropout",
                value: self.dropout.to_string(),
                reason: "must satisfy 0 <= dropout < 1",
            });
        }
        // Checked: a huge dim_head must be an error here, not an overflow in the product.
        let projection_width = (self.num_searches as u64)
            .checked_mul(3)
            .and_then(|s3| s3.checked_add(self.num_retrievals as u64))
            .and_then(|heads| heads.checked_mul(self.dim_head as u64));
        let (kdim, vdim) = self.key_value_dims();
        let widest = projection_width.map(|w| w.max(self.dim.max(kdim).max(vdim) as u64));
        if widest.is_none_or(|w| w > u32::MAX as u64 / 4) {
            return Err(Error::InvalidConfig {
                field: "dim_head",
                value: self.dim_head.to_string(),
                reason: "(3·num_searches + num_retrievals)·dim_head must fit in 32-bit indices",
            });
        }
        Ok(())
    }

    /// `s·d`: the width of the search queries, search keys, retrieval queries and of the
    /// concatenated searches that feed the output projection.
    pub fn search_width(&self) -> usize {
        self.num_searches * self.dim_head
    }

    /// `r·d`: the width of the retrieval values.
    pub fn value_width(&self) -> usize {
        self.num_retrievals * self.dim_head
    }

    /// `(3s + r)·d`: the width of the packed input projection `[SQ | SK | RQ | RV]`.
    pub fn projection_width(&self) -> usize {
        3 * self.search_width() + self.value_width()
    }

    /// The softmax scale `dim_head^-0.5` applied to search and retrieval queries.
    pub fn scale(&self) -> f64 {
        (self.dim_head as f64).powf(-0.5)
    }

    /// Number of parameters: `D·d·(4s + r) + d²` (`D` the key and value inputs' widths for
    /// `W_sk`, `W_rv` with a memory), plus `2D` with `prenorm`, plus the biases `(3s + r)·d + D`
    /// with `bias`, plus `(s + r)·d` with `add_bias_kv` (`usize::MAX` where that does not fit
    /// `usize`).
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count().unwrap_or(usize::MAX)
    }

    /// [`Config::parameter_count`] in checked arithmetic: `None` when it does not fit `usize`
    /// (huge sizes on a 32-bit target), so that callers sizing host memory by it get an error
    /// rather than a wrapped count.
    pub fn checked_parameter_count(&self) -> Option<usize> {
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let (kdim, vdim) = self.key_value_dims();
        let queries_out = mul(mul(self.dim, self.dim_head)?, mul(3, self.num_searches)?)?;
        let keys = mul(mul(kdim, self.dim_head)?, self.num_searches)?;
        let values = mul(mul(vdim, self.dim_head)?, self.num_retrievals)?;
        let matrices = queries_out.checked_add(keys)?.checked_add(values)?;
        let extra = if self.extra_keys.bias_kv {
            mul(self.num_searches + self.num_retrievals, self.dim_head)?
        } else {
            0
        };
        let norm = if self.prenorm { mul(2, self.dim)? } else { 0 };
        let bias = if self.bias {
            let width = mul(3, self.num_searches)?
                .checked_add(self.num_retrievals)
                .and_then(|h| h.checked_mul(self.dim_head))?;
            width.checked_add(self.dim)?
        } else {
            0
        };
        matrices
            .checked_add(mul(self.dim_head, self.dim_head)?)?
            .checked_add(norm)?
            .checked_add(bias)?
            .checked_add(extra)
    }

    /// FLOPs of one forward pass as SPEC §7 counts them (multiply-add = 2), for throughput
    /// reports: projections, `QKᵀ`, `r` times `A·V`, the retrieval keys and the selection. The
    /// one place the count is written: [`Config::core_flops`] is its attention-core part.
    pub fn forward_flops(&self, batch: usize, seq: usize) -> f64 {
        let (b, n) = (batch as f64, seq as f64);
        let (dim, d) = (self.dim as f64, self.dim_head as f64);
        let (s, r) = (self.num_searches as f64, self.num_retrievals as f64);
        let projections = 2.0 * b * n * dim * d * (4.0 * s + r);
        let retrieval_keys = 2.0 * b * s * r * n * d * d;
        projections + retrieval_keys + self.core_flops(batch, seq)
    }

    /// FLOPs of the attention core (what the fused kernel computes once the projections exist):
    /// `QKᵀ` and `r` times `A·V`, `2·b·s·n²·d·(1 + r)`, plus the retrieval selection
    /// `4·b·s·r·n·d` (SPEC §7 without the projections and the `d × d` retrieval keys).
    pub fn core_flops(&self, batch: usize, seq: usize) -> f64 {
        let (b, n) = (batch as f64, seq as f64);
        let d = self.dim_head as f64;
        let (s, r) = (self.num_searches as f64, self.num_retrievals as f64);
        let attention = 2.0 * b * s * n * n * d * (1.0 + r);
        let selection = 4.0 * b * s * r * n * d;
        attention + selection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_are_named() {
        for (config, field) in [
            (Config::new(0), "dim"),
            (Config::new(8).dim_head(0), "dim_head"),
            (Config::new(8).num_searches(0), "num_searches"),
            (Config::new(8).num_retrievals(0), "num_retrievals"),
        ] {
            match config.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn dropout_range() {
        assert!(Config::new(8).dropout(0.1).validate().is_ok());
        for p in [-0.1, 1.0, f32::NAN] {
            assert!(matches!(
                Config::new(8).dropout(p).validate(),
                Err(Error::InvalidConfig {
                    field: "dropout",
                    ..
                })
            ));
        }
    }

    #[test]
    fn spec_flop_examples() {
        // SPEC §7: (b1,n512,D1024,d64,s8,r2) 3.16 GFLOP; (b1,n2048,D512,d64,s8,r2) 17.7 GFLOP.
        let readme = Config::new(1024);
        assert!((readme.forward_flops(1, 512) / 1e9 - 3.16).abs() < 0.01);
        let long = Config::new(512);
        assert!((long.forward_flops(1, 2048) / 1e9 - 17.7).abs() < 0.1);
        let wide = Config::new(512).num_searches(4).num_retrievals(4);
        assert!((wide.forward_flops(8, 256) / 1e9 - 4.30).abs() < 0.01);
    }

    #[test]
    fn parameter_count_matches_spec() {
        let c = Config::new(16)
            .dim_head(8)
            .num_searches(2)
            .num_retrievals(2);
        // 4 matrices [16,16] (sq, sk, rq, out) + rv [16,16] + rk [8,8]
        assert_eq!(c.parameter_count(), 5 * 256 + 64);
        assert_eq!(c.prenorm(true).parameter_count(), 5 * 256 + 64 + 32);
    }
}
