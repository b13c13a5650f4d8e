//! Training: the forward that keeps what its backward needs, the backward, the gradients and
//! the AdamW optimiser, all on the layer's device.
//!
//! | file | what |
//! |---|---|
//! | [`activations`] | [`Activations`]: what a training forward keeps (linear in `n`) |
//! | [`gradients`] | [`Gradients`]: one buffer per parameter, accumulated by each backward |
//! | `forward` | `forward_train`, `encode_forward_train`: LayerNorm → projections → search statistics → retrieval → selection → output |
//! | `backward` | `backward`, `encode_backward`: the same steps in reverse |
//! | [`adamw`] | [`AdamW`]: PyTorch's update rule on the device |
//! | `prepare` | `prepare_training`: every pipeline of a step compiled ahead of the first |
//!
//! The kernels live with the forward's in `src/ops/` (`attention_train`, `layer_norm_backward`,
//! `matmul`, `adamw`). Training reads the layer's parameters in their checkpoint
//! form (`device_parameters.rs`), never the folded forms inference reads, so every gradient is
//! with respect to a named tensor of [`Weights::parameters`](crate::Weights::parameters). A
//! checkpoint of another form trains as the layer it lowers to;
//! [`Checkpoint::gradients`](crate::checkpoint::Checkpoint::gradients) takes these gradients
//! back to its own tensors.
//!
//! What trains: the lucidrains and Keras forms (LayerNorm included) and the general form's
//! biases, in f32 storage. An f16-storage layer, the MLP score network, cross-attention and the
//! extra key rows are refused with [`Error::TrainingUnsupported`].

pub mod activations;
pub mod adamw;
mod backward;
mod forward;
pub mod gradients;

mod prepare;

pub use activations::Activations;
pub use adamw::AdamW;
pub use gradients::Gradients;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::precision::Precision;

/// Refuses a layer whose form cannot train.
pub(crate) fn check_trainable(config: &Config, precision: Precision) -> Result<()> {
    if precision != Precision::F32 {
        return Err(Error::TrainingUnsupported {
            what: format!("a layer stored in {precision}"),
            reason: "training keeps f32 parameters and gradients: make the layer with \
                     CompositionalAttention::new (f32 storage) to train it, then store it in f16 \
                     for inference",
        });
    }
    if let Some(hidden) = config.selection_mlp {
        return Err(Error::TrainingUnsupported {
            what: format!("the MLP score network (selection_mlp = {hidden})"),
            reason: "its backward is not written yet; the dot-product selection trains",
        });
    }
    if !config.plain_self_attention() {
        return Err(Error::TrainingUnsupported {
            what: "attention over a memory (cross-attention, add_bias_kv, add_zero_attn)".into(),
            reason: "its backward is not written yet; self-attention without extra key rows \
                     trains",
        });
    }
    Ok(())
}
