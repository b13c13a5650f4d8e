//! The README's tuning snippet, built and run by CI: a shape class's candidate tilings timed
//! ahead of the first forward, the fastest kept (in memory here, so CI writes no cache file).

use compositional_attention::{CompositionalAttention, Config, GpuContext, TuneMode, Weights};

fn main() -> compositional_attention::Result<()> {
    let ctx = GpuContext::from_env_blocking()?;
    ctx.set_tune_mode(TuneMode::On); // the default, unless COMPATTN_TUNE says otherwise
    ctx.set_tune_cache_path(None); // memory only; by default ~/.cache/compattn/tuning.json
    let weights = Weights::random(Config::new(64).dim_head(16).num_retrievals(5), 0)?;
    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
    if let Some(report) = layer.tune_blocking(2, 100)? {
        for candidate in &report.candidates {
            println!("{:<28} {:8.2} ms", candidate.choice, candidate.ms);
        }
        println!("{}: {}", report.class, report.chosen);
    }
    let x: Vec<f32> = (0..2 * 100 * 64).map(|i| (i as f32 * 0.1).sin()).collect();
    let y = layer.forward_blocking(&x, 2, 100, None)?; // runs the chosen tiling
    assert_eq!(y.len(), x.len());
    Ok(())
}
