//! Checkpoints of every implementation: lucidrains' PyTorch package, the Keras package, the
//! official fairseq module and xformers (SPEC.md §9, `SPEC-VARIANTS.md`).
//!
//! A reader turns a file into a [`Checkpoint`], the general form under one set of names; the
//! layer runs it through [`Checkpoint::layer_weights`] (`lower.rs`), and the f64 reference
//! computes it literally (`reference::general`).
//!
//! * The format is detected from the tensor names ([`detect_format`]) unless the options force
//!   one.
//! * What the shapes do not determine (fairseq's and xformers' `num_heads`, their
//!   `q_compose`...) comes from the original module's constructor arguments, under their
//!   original names, as JSON ([`Constructor`]); the same object may hold `"format"`.
//! * Options the crate does not implement are refused with [`Error::Unsupported`] naming them.

mod constructor;
mod form;
mod gradients;
mod keras;
mod lower;
mod state_dict;
mod tensors;
mod torch;

pub use constructor::Constructor;
pub use form::{
    Attention, Checkpoint, Form, FormWeights, Format, Linear, Selection, SelectionWeights,
};
pub use state_dict::NamedTensor;

use crate::error::{Error, Result};
use crate::weights::Weights;
use tensors::Tensors;

/// How to read a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// The original module's constructor arguments (and optionally `"format"`), parsed from
    /// JSON with [`Constructor::parse`]. Needed for fairseq and xformers (`num_heads`).
    pub constructor: Option<Constructor>,
    /// Forces the format; else the constructor's `"format"`, else detection.
    pub format: Option<Format>,
    /// Causal attention (fairseq passes it as an `attn_mask` at call time; the other formats
    /// may also set `causal` in the constructor).
    pub causal: bool,
    /// Prefix of the layer's parameter names inside a larger model's state dict.
    pub prefix: String,
}

impl CheckpointOptions {
    /// The format to read: forced, from the constructor, or detected from `names`.
    fn format<'a>(&self, names: impl IntoIterator<Item = &'a str> + Clone) -> Result<Format> {
        if let Some(format) = self.format {
            return Ok(format);
        }
        if let Some(format) = self.constructor.as_ref().and_then(Constructor::format) {
            return Ok(format);
        }
        detect_format(names)
    }
}

/// The format whose parameter names these are: `to_*.weight` (lucidrains), `to_*.kernel`
/// (Keras), `in_proj_container.*` (xformers), `q_proj.weight` with `value_q.weight` (fairseq).
/// One name is enough, so that a checkpoint missing a tensor is told which one by its reader.
pub fn detect_format<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Result<Format> {
    let has = |wanted: &str| names.clone().into_iter().any(|n| n == wanted);
    let has_prefix = |wanted: &str| names.clone().into_iter().any(|n| n.starts_with(wanted));
    let any = |test: fn(&str) -> bool| names.clone().into_iter().any(test);
    let format = if any(|n| n.starts_with("to_") && n.ends_with(".weight")) {
        Format::Lucidrains
    } else if any(|n| n.starts_with("to_") && n.ends_with(".kernel")) || has_prefix("layers/") {
        Format::Keras
    } else if has_prefix("in_proj_container.") {
        Format::Xformers
    } else if has("q_proj.weight") && has("value_q.weight") {
        Format::Fairseq
    } else {
        let mut listed: Vec<&str> = names.into_iter().take(8).collect();
        listed.sort_unstable();
        return Err(Error::ConfigMismatch(format!(
            "cannot tell the checkpoint's format from its tensor names ({}); expected \
             to_out.weight (lucidrains), to_out.kernel (keras), in_proj_container.q_proj.weight \
             (xformers) or q_proj.weight with value_q.weight (fairseq); set \"format\" in the \
             configuration to force one",
            listed.join(", ")
        )));
    };
    Ok(format)
}

/// The file's tensors and its format (forced, from the constructor, or detected from the names
/// under the prefix).
fn safetensors_format<'a>(
    bytes: &'a [u8],
    options: &CheckpointOptions,
) -> Result<(safetensors::SafeTensors<'a>, Format)> {
    let file = safetensors::SafeTensors::deserialize(bytes)?;
    let names: Vec<String> = file
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(options.prefix.as_str()).map(str::to_string))
        .collect();
    let format = options.format(names.iter().map(String::as_str))?;
    log::info!("checkpoint format: {format}");
    Ok((file, format))
}

/// The layer's weights from a checkpoint file of any format, and the format: what `compattn
/// forward` and the browser's `load` run. A lucidrains file is the layer's own form and is read
/// as it is, with everything `Weights::to_safetensors` writes (biases, the LayerNorm epsilon, an
/// MLP score network); the other formats go through [`Checkpoint`] and its lowering.
pub fn layer_weights_from_bytes(
    bytes: &[u8],
    options: &CheckpointOptions,
) -> Result<(Weights, Format)> {
    if !is_keras_h5(bytes) && safetensors_format(bytes, options)?.1 == Format::Lucidrains {
        return Ok((
            torch::lucidrains_weights(bytes, options)?,
            Format::Lucidrains,
        ));
    }
    let checkpoint = Checkpoint::from_bytes(bytes, options)?;
    Ok((checkpoint.layer_weights()?, checkpoint.form.format))
}

/// Whether `bytes` start with the HDF5 signature (a Keras `.weights.h5`).
pub fn is_keras_h5(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89HDF\r\n\x1a\n")
}

impl Checkpoint {
    /// Reads a safetensors checkpoint of any format (see the module documentation). The case
    /// tensors `input`, `mask` and `output` may sit beside the parameters.
    pub fn from_safetensors(bytes: &[u8], options: &CheckpointOptions) -> Result<Checkpoint> {
        let (file, format) = safetensors_format(bytes, options)?;
        if format == Format::Lucidrains {
            return torch::lucidrains(&torch::lucidrains_weights(bytes, options)?);
        }
        let tensors = Tensors::from_safetensors(&file, &options.prefix)?;
        Self::from_tensors(format, tensors, options)
    }

    /// Reads a Keras `.weights.h5` (`model.save_weights`, Keras 3) holding one
    /// `CompositionalAttention` layer: `layers/<name>/<attribute>/vars/<i>`, with `<name>` the
    /// constructor's `"name"` or the one layer in the file that has the layer's attributes.
    pub fn from_keras_h5(bytes: &[u8], options: &CheckpointOptions) -> Result<Checkpoint> {
        let datasets = crate::hdf5::read_datasets(bytes)?;
        let tensors = keras::tensors_from_h5(datasets, options.constructor.as_ref())?;
        Self::from_tensors(Format::Keras, tensors, options)
    }

    /// Reads a checkpoint file of any format the crate reads: a Keras `.weights.h5` (by the
    /// HDF5 signature) or safetensors.
    pub fn from_bytes(bytes: &[u8], options: &CheckpointOptions) -> Result<Checkpoint> {
        if is_keras_h5(bytes) {
            Self::from_keras_h5(bytes, options)
        } else {
            Self::from_safetensors(bytes, options)
        }
    }

    fn from_tensors(
        format: Format,
        tensors: Tensors,
        options: &CheckpointOptions,
    ) -> Result<Checkpoint> {
        let constructor = options.constructor.as_ref();
        let checkpoint = match format {
            Format::Keras => keras::read(tensors, constructor, options.causal)?,
            Format::Fairseq => torch::fairseq(tensors, constructor, options.causal)?,
            Format::Xformers => torch::xformers(tensors, constructor, options.causal)?,
            Format::Lucidrains => {
                return Err(Error::ConfigMismatch(
                    "lucidrains checkpoints are read by Weights::from_safetensors".into(),
                ));
            }
        };
        checkpoint.validate()?;
        Ok(checkpoint)
    }
}
