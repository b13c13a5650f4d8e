//! The README's generation snippet, built and run by CI: prefill a prompt, then decode.

use compositional_attention::{CompositionalAttention, Config, GpuContext, Weights};

fn main() -> compositional_attention::Result<()> {
    let gpu = GpuContext::from_env_blocking()?;
    let config = Config::new(64)
        .dim_head(16)
        .num_searches(4)
        .num_retrievals(2)
        .causal(true);
    let mut layer = CompositionalAttention::new(&gpu, &Weights::random(config, 0)?)?;
    let (batch, prompt, max_seq) = (2, 10, 64);
    let mut cache = layer.kv_cache(batch, max_seq)?;
    let x = vec![0.1f32; batch * prompt * 64];
    let mut y = layer.prefill_blocking(&mut cache, &x, prompt, None)?; // [batch, prompt, dim]
    while cache.len() < 20 {
        // A model would embed the tokens it sampled from `y`; here, a stand-in.
        let next = vec![0.01 * cache.len() as f32; batch * 64]; // [batch, 1, dim]
        y = layer.decode_blocking(&mut cache, &next, None)?; // [batch, 1, dim]
    }
    println!(
        "generated {} positions; last y[0..4] = {:?}",
        cache.len(),
        &y[..4]
    );
    Ok(())
}
