//! The README's first library snippet, built and run by CI: a layer on random weights.

use compositional_attention::{CompositionalAttention, Config, GpuContext, Weights};

fn main() -> compositional_attention::Result<()> {
    let gpu = GpuContext::from_env_blocking()?; // WGPU_BACKEND, WGPU_ADAPTER_NAME, COMPATTN_LIMITS
    let config = Config::new(256)
        .dim_head(32)
        .num_searches(4)
        .num_retrievals(2);
    let weights = Weights::random(config, 0)?; // seeded, PyTorch's default initialisation
    let mut layer = CompositionalAttention::new(&gpu, &weights)?;
    let (batch, seq) = (2, 100);
    let x = vec![0.1f32; batch * seq * 256]; // [batch, seq, dim], row-major
    let y = layer.forward_blocking(&x, batch, seq, None)?; // [batch, seq, dim]
    assert_eq!(y.len(), x.len());
    println!("y[0..4] = {:?}", &y[..4]);
    Ok(())
}
