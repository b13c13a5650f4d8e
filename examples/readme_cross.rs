//! The README's cross-attention example: a fairseq encoder-decoder attention checkpoint
//! (`tests/golden-variants/fairseq-cross/c02_encdec_kdim_vdim`, an encoder 40 wide beside a
//! decoder 24 wide), its memory projected once, attended by the whole target and then decoded
//! one query row at a time over the same memory.

use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions, Constructor};
use compositional_attention::io::{Input, MemoryInput, read_output};
use compositional_attention::{CompositionalAttention, GpuContext};

fn main() -> compositional_attention::Result<()> {
    let options = CheckpointOptions {
        constructor: Some(Constructor::parse(
            r#"{"format": "fairseq", "embed_dim": 24, "num_heads": 3, "num_rules": 3,
                "selection_dim": 5, "attn_dim": 18, "kdim": 40, "vdim": 40,
                "encoder_decoder_attention": true}"#,
        )?),
        ..Default::default()
    };
    let path = "tests/golden-variants/fairseq-cross/c02_encdec_kdim_vdim.safetensors";
    let bytes = compositional_attention::io::read_file(path.as_ref())?;
    let checkpoint = Checkpoint::from_bytes(&bytes, &options)?;
    let gpu = GpuContext::from_env_blocking()?;
    let mut layer = CompositionalAttention::new(&gpu, &checkpoint.layer_weights()?)?;
    let target = Input::from_safetensors(&bytes)?; // the decoder's x [2, 5, 24]
    let encoder = MemoryInput::from_safetensors(&bytes)?.expect("the case's memory [2, 9, 40]");
    // Projected once; every call below reads it without projecting again.
    let memory = layer.memory_blocking(&encoder.keys, encoder.batch, encoder.seq, None)?;
    let y = layer.forward_cross_blocking(&target.x, &memory, target.seq)?;
    let (_, expected) = read_output(&bytes)?.expect("the case's output");
    let max_err = y
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    println!(
        "cross-attention over a memory of {}: max |y - fairseq's y| = {max_err:.1e}",
        memory.len()
    );
    assert!(max_err < 1e-4);
    // Decoding: one new query row per sequence and step, over the same memory.
    let dim = 24;
    for t in 0..target.seq {
        let row: Vec<f32> = (0..target.batch)
            .flat_map(|b| target.x[(b * target.seq + t) * dim..][..dim].to_vec())
            .collect();
        let step = layer.forward_cross_blocking(&row, &memory, 1)?;
        let whole = &y[t * dim..][..dim]; // sequence 0, row t
        assert!(
            step[..dim]
                .iter()
                .zip(whole)
                .all(|(a, b)| (a - b).abs() < 1e-5)
        );
    }
    println!("{} decode steps equal the whole target's rows", target.seq);
    Ok(())
}
