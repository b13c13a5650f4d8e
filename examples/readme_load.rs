//! The README's second library snippet, built and run by CI: weights exported from PyTorch and
//! an input file. `cargo run --release --example readme_load -- [WEIGHTS] [INPUT]`; both default
//! to a reference case in `tests/golden/`, which holds weights and input in one file.

use compositional_attention::{CompositionalAttention, GpuContext, Input, Weights};

fn main() -> compositional_attention::Result<()> {
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/padding_mask.safetensors"
    );
    let mut args = std::env::args().skip(1);
    let weights_path = args.next().unwrap_or_else(|| golden.to_string());
    let input_path = args.next().unwrap_or_else(|| golden.to_string());

    let gpu = GpuContext::from_env_blocking()?;
    let weights = Weights::load(&weights_path, /* causal: */ false)?;
    let input = Input::load(&input_path)?; // `input` and optional `mask`
    let mut layer = CompositionalAttention::new(&gpu, &weights)?;
    let y = layer.forward_blocking(&input.x, input.batch, input.seq, input.mask.as_deref())?;
    // In async code (or on the web): `layer.forward(&x, batch, seq, mask).await`.
    println!(
        "{}: [{}, {}, {}] -> {} values",
        weights_path,
        input.batch,
        input.seq,
        input.dim,
        y.len()
    );
    Ok(())
}
