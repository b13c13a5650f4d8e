//! The README's f16 snippet, built and run by CI: f16 storage where the device has shader-f16
//! (Vulkan), the typed fallback to f32 where it does not (GL).

use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, Precision, Weights,
};

fn main() -> compositional_attention::Result<()> {
    let gpu = GpuContext::from_env_blocking()?;
    let weights = Weights::random(Config::new(64).dim_head(16).causal(true), 0)?;
    let mut layer = match CompositionalAttention::with_precision(&gpu, &weights, Precision::F16) {
        Ok(layer) => layer,
        // GL and SwiftShader have no shader-f16: fall back to f32.
        Err(Error::MissingFeature { .. }) => CompositionalAttention::new(&gpu, &weights)?,
        Err(e) => return Err(e),
    };
    let cache = layer.kv_cache(1, 1024)?; // f16 keys and values where the layer is f16
    println!(
        "{} storage, cache of {} bytes",
        layer.precision(),
        cache.gpu_bytes()
    );
    let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.1).sin()).collect();
    let y = layer.forward_blocking(&x, 1, 3, None)?;
    assert_eq!(y.len(), 3 * 64);
    Ok(())
}
