//! The options that name a checkpoint (`--weights`, `--config`, `--causal`, `--prefix`), shared
//! by `forward` and `train` so that both read every format the crate reads (`checkpoint`) the
//! same way.

use std::path::PathBuf;

use compositional_attention::checkpoint::{self, CheckpointOptions, Constructor, Format};
use compositional_attention::{Error, Weights, io};

#[derive(clap::Args)]
pub struct CheckpointArgs {
    /// Weights: a safetensors file (lucidrains', fairseq's or xformers' `state_dict()` saved
    /// with `safetensors.torch.save_file`, or the Keras layer's kernels under their attribute
    /// names) or a Keras `.weights.h5` (`model.save_weights`). The format is detected from the
    /// tensor names unless --config sets "format".
    #[arg(long, value_name = "W")]
    pub weights: PathBuf,
    /// The original module's constructor arguments as a JSON object, under their original
    /// names, with "format": one of lucidrains, keras, fairseq, xformers. Required for fairseq
    /// and xformers (num_heads); optional for lucidrains and Keras, whose shapes say everything.
    #[arg(long, value_name = "C.json")]
    pub config: Option<PathBuf>,
    /// Causal attention (query i attends keys j <= i). Not stored in the weights: pass it when
    /// the module was built with `causal=True`. The same as `"causal": true` in --config (either
    /// one is enough; both agree); with `"causal": false` there, an error.
    #[arg(long)]
    pub causal: bool,
    /// Prefix of the layer's parameter names inside a larger model's state_dict
    /// (e.g. `layers.0.attn.`).
    #[arg(long, default_value = "", value_name = "P")]
    pub prefix: String,
}

impl CheckpointArgs {
    /// The layer's weights from `--weights` (and `--config`), and the format they came in.
    pub fn load(&self) -> Result<(Weights, Format), Error> {
        let bytes = io::read_file(&self.weights)?;
        let constructor = match &self.config {
            Some(path) => {
                let text =
                    String::from_utf8(io::read_file(path)?).map_err(|_| Error::InvalidConfig {
                        field: "--config",
                        value: path.display().to_string(),
                        reason: "must be a UTF-8 JSON file",
                    })?;
                Some(Constructor::parse(&text)?)
            }
            None => None,
        };
        let options = CheckpointOptions {
            constructor,
            format: None,
            causal: self.causal,
            prefix: self.prefix.clone(),
        };
        checkpoint::layer_weights_from_bytes(&bytes, &options)
    }
}
