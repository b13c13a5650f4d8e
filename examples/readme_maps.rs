//! README, "Attention maps": what each search attends to and which retrieval it picks.

use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, MapsOptions, Weights,
};

fn main() -> compositional_attention::Result<()> {
    let gpu = GpuContext::from_env_blocking()?;
    let config = Config::new(64)
        .dim_head(16)
        .num_searches(4)
        .num_retrievals(2)
        .causal(true);
    let weights = Weights::random(config, 0)?;
    let mut layer = CompositionalAttention::new(&gpu, &weights)?;
    let (batch, seq) = (1, 12);
    let x: Vec<f32> = (0..batch * seq * 64)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();

    // Every query row: search attention [1, 4, 12, 12], retrieval selection [1, 4, 12, 2].
    let (y, maps) =
        layer.forward_with_maps_blocking(&x, batch, seq, None, &MapsOptions::default())?;
    assert_eq!(y.len(), batch * seq * 64);
    let last = maps.search_row(0, 2, seq - 1); // search 2 of the last token, over the 12 keys
    let strongest = (0..seq)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    println!(
        "search 2 of token {} looks most at token {strongest}",
        seq - 1
    );
    println!(
        "and weighs its retrievals {:?}",
        maps.selection_row(0, 2, seq - 1)
    );

    // Only some query rows, under a size limit of your own.
    let options = MapsOptions::rows([0, 5, 11]).max_bytes(1 << 20);
    let (_, some) = layer.forward_with_maps_blocking(&x, batch, seq, None, &options)?;
    assert_eq!(some.search_row(0, 2, 2), last);
    std::fs::write(
        std::env::temp_dir().join("maps.safetensors"),
        some.to_safetensors()?,
    )
    .expect("writable temp dir");

    // Too large for the limit: a typed error, before anything runs.
    match layer.forward_with_maps_blocking(
        &x,
        batch,
        seq,
        None,
        &MapsOptions::default().max_bytes(64),
    ) {
        Err(Error::MapsTooLarge { bytes, limit, .. }) => {
            println!("refused: {bytes} > {limit} bytes")
        }
        other => panic!("expected MapsTooLarge, got {other:?}"),
    }
    Ok(())
}
