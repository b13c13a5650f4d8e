//! The README's checkpoint snippet, built and run by CI: a fairseq checkpoint (a case of
//! tests/golden-variants/) through the crate's reader, on the GPU, against fairseq's output.

use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions, Constructor};
use compositional_attention::io::{Input, read_output};
use compositional_attention::{CompositionalAttention, GpuContext};

fn main() -> compositional_attention::Result<()> {
    let options = CheckpointOptions {
        constructor: Some(Constructor::parse(
            r#"{"format": "fairseq", "embed_dim": 32, "num_heads": 4, "num_rules": 2, "qk_rule": true}"#,
        )?),
        ..Default::default()
    };
    let path = "tests/golden-variants/fairseq/f01_qk_rule.safetensors";
    let bytes = compositional_attention::io::read_file(path.as_ref())?;
    let checkpoint = Checkpoint::from_bytes(&bytes, &options)?;
    let gpu = GpuContext::from_env_blocking()?;
    let mut layer = CompositionalAttention::new(&gpu, &checkpoint.layer_weights()?)?;
    let input = Input::from_safetensors(&bytes)?; // the case's x [2, 12, 32]
    let y = layer.forward_blocking(&input.x, input.batch, input.seq, None)?;
    let (_, expected) = read_output(&bytes)?.expect("the case's output");
    let max_err = y
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!(
        "{} checkpoint, max |y - fairseq's y| = {max_err:.1e}",
        checkpoint.form.format
    );
    assert!(max_err < 1e-4);
    Ok(())
}
