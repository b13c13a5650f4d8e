//! What a training forward keeps for its backward: FlashAttention-2's per-row statistics and
//! the retrieved values instead of the `b·s·n²` search weights, so it grows linearly in `n`.

use crate::config::Config;
use crate::dropout::Dropout;

/// The tensors a training forward keeps for its backward, on the layer's device.
///
/// Per token: the input (and the LayerNorm's output, with `prenorm`), the packed projections
/// `[SQ | SK | RQ | RV]`, `Q̃ = RQ·W_rk` and the searches' concatenated output; per query row of
/// each search: the search softmax's running maximum and sum (the backward recomputes every
/// search weight from them), the retrieved values `Ret [r·d]` and the selection `C [r]`. The
/// dropout masks are not kept: the backward draws them again from the seed.
///
/// It belongs to the layer that made it, at the parameters of that forward: a backward after
/// an optimiser step computes the gradient at the old activations and the new parameters,
/// which is rarely what a training loop wants.
pub struct Activations {
    pub(crate) layer: u64,
    pub(crate) config: Config,
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) dropout: Dropout,
    /// `x [b·n, dim]` (a copy: the caller may reuse its buffer).
    pub(crate) input: wgpu::Buffer,
    /// `LayerNorm(x) [b·n, dim]`, with `prenorm`.
    pub(crate) normed: Option<wgpu::Buffer>,
    /// `[b, n]` u32, 0 = key masked.
    pub(crate) mask: wgpu::Buffer,
    /// `[b·n, (3s + r)·d]`: `[SQ | SK | RQ | RV]`.
    pub(crate) proj: wgpu::Buffer,
    /// `Q̃ = RQ·W_rk [b·n, s·d]`.
    pub(crate) qt: wgpu::Buffer,
    /// `[b·s·n]` vec4: `(m, l, D, 0)`; the backward writes `D`.
    pub(crate) stats: wgpu::Buffer,
    /// `Ret [b·s·n, r·d]`.
    pub(crate) ret: wgpu::Buffer,
    /// `C [b·s·n, r]`, before dropout.
    pub(crate) selection: wgpu::Buffer,
    /// `[b·n, s·d]`: the output projection's input.
    pub(crate) concat: wgpu::Buffer,
    /// The most bytes the forward or a backward of these activations allocated for itself.
    pub(crate) scratch_bytes: std::sync::atomic::AtomicU64,
}

impl Activations {
    /// Batch size of the forward.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Sequence length of the forward.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// The step's dropout seed.
    pub fn dropout_seed(&self) -> u64 {
        self.dropout.seed()
    }

    /// Bytes of GPU memory kept for the backward: linear in `batch·seq`, never `seq²`.
    pub fn gpu_bytes(&self) -> u64 {
        [
            &self.input,
            &self.mask,
            &self.proj,
            &self.qt,
            &self.stats,
            &self.ret,
            &self.selection,
            &self.concat,
        ]
        .iter()
        .map(|b| b.size())
        .sum::<u64>()
            + self.normed.as_ref().map_or(0, wgpu::Buffer::size)
    }

    /// The most GPU bytes the forward that made these activations, or a backward of them so
    /// far, allocated for itself beyond the activations and the gradients (gradient buffers of
    /// the intermediates, the attention core's scratch), freed when it finished. A training
    /// step's peak is the layer's, the gradients' and the activations' bytes plus this.
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a pass's own allocations (keeps the largest).
    pub(crate) fn record_scratch(&self, bytes: u64) {
        self.scratch_bytes
            .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The configuration of the layer that made it.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl std::fmt::Debug for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activations")
            .field("batch", &self.batch)
            .field("seq", &self.seq)
            .field("dropout", &self.dropout)
            .field("gpu_bytes", &self.gpu_bytes())
            .field("scratch_bytes", &self.scratch_bytes())
            .finish()
    }
}
