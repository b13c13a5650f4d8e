//! Attention maps (`CompositionalAttention::forward_with_maps`): the search attention
//! `[b, s, q, n]` and the retrieval selection `[b, s, q, r]` against the f64 reference
//! (`reference::attention_maps`), on random problems with the named edge cases, the golden
//! cases, and every variant checkpoint; a subset of query rows; the typed refusals.

mod common;

use std::path::Path;

use common::{gpu, seed, variants};
use compositional_attention::checkpoint::Checkpoint;
use compositional_attention::io::{Input, read_output};
use compositional_attention::maps::{AttentionMaps, MapsOptions};
use compositional_attention::testing::{ErrorStats, random_problem};
use compositional_attention::{
    CompositionalAttention, Config, Error, Strategy, Weights, reference,
};

/// Probabilities in `[0, 1]`: the bar is absolute (max-abs over a max of about 1), as for outputs.
const TOLERANCE: f64 = 1e-4;

/// Runs `forward_with_maps` and checks the output against the f64 forward and both maps
/// against `reference::attention_maps`; returns the maps.
fn check(what: &str, weights: &Weights, input: &Input, options: &MapsOptions) -> AttentionMaps {
    let mut layer = CompositionalAttention::new(gpu(), weights).unwrap();
    let mask = input.mask.as_deref();
    let (y, maps) = layer
        .forward_with_maps_blocking(&input.x, input.batch, input.seq, mask, options)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        layer.strategy(),
        Strategy::Fused,
        "{what}: the strategy is left as set"
    );
    let expected_y = reference::forward(weights, &input.x, input.batch, input.seq, mask).unwrap();
    let stats = ErrorStats::compare(&y, &expected_y);
    assert!(stats.within(TOLERANCE), "{what}: output {stats}");

    let c = weights.config();
    let rows = options
        .resolve(input.batch, input.seq, c.num_searches, c.num_retrievals)
        .unwrap();
    assert_eq!(maps.query_rows, rows, "{what}");
    assert_eq!(
        (maps.batch, maps.searches, maps.retrievals, maps.seq),
        (input.batch, c.num_searches, c.num_retrievals, input.seq),
        "{what}"
    );
    let (search, selection) =
        reference::attention_maps(weights, &input.x, input.batch, input.seq, mask, &rows).unwrap();
    let search_stats = ErrorStats::compare(&maps.search, &search);
    let selection_stats = ErrorStats::compare(&maps.selection, &selection);
    assert!(
        search_stats.within(TOLERANCE),
        "{what}: search attention {search_stats}"
    );
    assert!(
        selection_stats.within(TOLERANCE),
        "{what}: retrieval selection {selection_stats}"
    );
    eprintln!("{what}: search {search_stats}; selection {selection_stats}");
    for (name, values, width) in [
        ("search", &maps.search, maps.seq),
        ("selection", &maps.selection, maps.retrievals),
    ] {
        for (k, row) in values.chunks_exact(width).enumerate() {
            let sum: f32 = row.iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-4,
                "{what}: {name} row {k} sums to {sum}"
            );
        }
    }
    maps
}

fn random(
    config: Config,
    batch: usize,
    seq: usize,
    lengths: Option<&[usize]>,
    scale: f32,
    name: &str,
) {
    let (seed, what) = seed(name);
    let (weights, input) = random_problem(config, batch, seq, lengths, scale, seed).unwrap();
    check(&what, &weights, &input, &MapsOptions::default());
}

#[test]
fn maps_odd_sizes_batch_causal_padding() {
    // 37 keys (no tile's multiple), batch 2, causal, prenorm, and the second batch row padded
    // to 20 keys.
    let config = Config::new(24)
        .dim_head(6)
        .num_searches(3)
        .num_retrievals(2)
        .causal(true)
        .prenorm(true);
    random(
        config,
        2,
        37,
        Some(&[37, 20]),
        1.0,
        "maps_odd_sizes_batch_causal_padding",
    );
}

#[test]
fn maps_fully_masked_row_is_uniform() {
    // Batch row 1 allows no key: every one of its rows is uniform over all keys (SPEC §6).
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(3);
    let (seed, what) = seed("maps_fully_masked_row_is_uniform");
    let (weights, input) = random_problem(config, 2, 9, Some(&[9, 0]), 1.0, seed).unwrap();
    let maps = check(&what, &weights, &input, &MapsOptions::default());
    for sigma in 0..2 {
        for q in 0..9 {
            for &p in maps.search_row(1, sigma, q) {
                assert!((p - 1.0 / 9.0).abs() < 1e-6, "{what}: {p}");
            }
        }
    }
}

#[test]
fn maps_causal_never_look_ahead() {
    let config = Config::new(20)
        .dim_head(5)
        .num_searches(2)
        .num_retrievals(2)
        .causal(true);
    let (seed, what) = seed("maps_causal_never_look_ahead");
    let (weights, input) = random_problem(config, 1, 13, None, 1.0, seed).unwrap();
    let maps = check(&what, &weights, &input, &MapsOptions::default());
    for sigma in 0..2 {
        for i in 0..13 {
            let row = maps.search_row(0, sigma, i);
            assert!(
                row[i + 1..].iter().all(|&p| p == 0.0),
                "{what}: row {i}: {row:?}"
            );
        }
    }
}

#[test]
fn maps_s1_r1_and_one_token() {
    let config = Config::new(8).dim_head(8).num_searches(1).num_retrievals(1);
    random(config, 3, 1, None, 1.0, "maps_s1_r1_one_token");
    random(config, 1, 5, None, 1.0, "maps_s1_r1");
}

#[test]
fn maps_large_magnitudes() {
    // Sharp softmaxes: most rows put nearly all their mass on one key. At 12, as in
    // tests/forward.rs `large_magnitude_inputs`, the search logits still pass f32 `exp`'s
    // overflow; at 30 the f32 rounding of the logits (which grows with scale²), amplified by a
    // near one-hot softmax, reached 2.1e-4 of max|reference| in the output for
    // 1796610629366985799 in any f32 implementation (conditioning, not a bug). That seed stays
    // in CI's fixed list.
    let config = Config::new(16)
        .dim_head(8)
        .num_searches(2)
        .num_retrievals(3);
    random(config, 2, 11, None, 12.0, "maps_large_magnitudes");
}

#[test]
fn maps_of_chosen_rows_are_those_rows_of_the_full_maps() {
    let config = Config::new(24)
        .dim_head(8)
        .num_searches(3)
        .num_retrievals(2)
        .causal(true);
    let (seed, what) = seed("maps_of_chosen_rows");
    let (weights, input) = random_problem(config, 2, 21, Some(&[21, 15]), 1.0, seed).unwrap();
    let full = check(&what, &weights, &input, &MapsOptions::default());
    // Runs of consecutive rows and single rows, the first and the last.
    let rows = vec![0, 2, 3, 4, 9, 16, 17, 20];
    let chosen = check(&what, &weights, &input, &MapsOptions::rows(rows.clone()));
    for b in 0..2 {
        for sigma in 0..3 {
            for (q, &row) in rows.iter().enumerate() {
                assert_eq!(
                    chosen.search_row(b, sigma, q),
                    full.search_row(b, sigma, row)
                );
                assert_eq!(
                    chosen.selection_row(b, sigma, q),
                    full.selection_row(b, sigma, row)
                );
            }
        }
    }
    // The same layer again with other rows: the staging copies follow the request.
    let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
    for rows in [vec![20], vec![5, 6], vec![0, 20]] {
        let (_, maps) = layer
            .forward_with_maps_blocking(
                &input.x,
                2,
                21,
                input.mask.as_deref(),
                &MapsOptions::rows(rows.clone()),
            )
            .unwrap();
        for (q, &row) in rows.iter().enumerate() {
            assert_eq!(
                maps.search_row(1, 2, q),
                full.search_row(1, 2, row),
                "{what}"
            );
        }
    }
}

#[test]
fn maps_of_the_golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for case in [
        "causal",
        "padding_mask",
        "fully_masked_row",
        "prenorm",
        "r1_s1",
    ] {
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let sidecar = std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap();
        let causal = sidecar.contains("\"causal\": true");
        let weights = Weights::from_safetensors(&bytes, causal, "").unwrap();
        let input = Input::from_safetensors(&bytes).unwrap();
        check(
            &format!("golden {case}"),
            &weights,
            &input,
            &MapsOptions::default(),
        );
    }
}

#[test]
fn maps_of_every_checkpoint_format() {
    // Lowered to the layer's weights, with the MLP score network of f02 on the unfused selection:
    // the maps are the original module's (the lowering keeps the search logits, and the
    // selection terms it drops cancel in the selection softmax).
    for (folder, case) in variants::CASES {
        let bytes = variants::case_bytes(folder, case);
        let options = variants::options(folder, case);
        let checkpoint = Checkpoint::from_safetensors(&bytes, &options).unwrap();
        let weights = checkpoint.layer_weights().unwrap();
        let input = Input::from_safetensors(&bytes).unwrap();
        let what = format!("{folder}/{case}");
        let maps = check(&what, &weights, &input, &MapsOptions::default());
        // The maps of the original module, computed literally from SPEC-VARIANTS.
        let (search, selection) = reference::general::attention_maps(
            &checkpoint,
            &input.x,
            input.batch,
            input.seq,
            input.mask.as_deref(),
        )
        .unwrap();
        let search_stats = ErrorStats::compare(&maps.search, &search);
        let selection_stats = ErrorStats::compare(&maps.selection, &selection);
        assert!(
            search_stats.within(TOLERANCE),
            "{what}: search {search_stats}"
        );
        assert!(
            selection_stats.within(TOLERANCE),
            "{what}: selection {selection_stats}"
        );
        eprintln!(
            "{what} against the original module: search {search_stats}; selection {selection_stats}"
        );
        // And the output is the original implementation's.
        let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
        let (y, _) = layer
            .forward_with_maps_blocking(
                &input.x,
                input.batch,
                input.seq,
                input.mask.as_deref(),
                &MapsOptions::rows([maps.seq - 1]),
            )
            .unwrap();
        let (_, expected) = read_output(&bytes).unwrap().unwrap();
        let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let stats = ErrorStats::compare(&y, &expected);
        assert!(stats.within(TOLERANCE), "{folder}/{case}: {stats}");
    }
}

#[test]
fn maps_refusals_are_typed() {
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(2);
    let (weights, input) = random_problem(config, 2, 10, None, 1.0, 5).unwrap();
    let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
    let mut ask = |x: &[f32], options: MapsOptions| {
        layer
            .forward_with_maps_blocking(x, 2, 10, None, &options)
            .unwrap_err()
    };
    // 2·2·10·(10 + 2)·4 = 1920 bytes.
    match ask(&input.x, MapsOptions::default().max_bytes(1919)) {
        Error::MapsTooLarge {
            queries: 10,
            bytes: 1920,
            limit: 1919,
        } => {}
        other => panic!("{other}"),
    }
    // With fewer rows the same limit is enough.
    assert!(
        layer
            .forward_with_maps_blocking(
                &input.x,
                2,
                10,
                None,
                &MapsOptions::rows([0, 9]).max_bytes(1919)
            )
            .is_ok()
    );
    let mut ask = |x: &[f32], options: MapsOptions| {
        layer
            .forward_with_maps_blocking(x, 2, 10, None, &options)
            .unwrap_err()
    };
    for rows in [vec![10], vec![3, 2], vec![]] {
        let error = ask(&input.x, MapsOptions::rows(rows.clone()));
        assert!(
            error.to_string().contains("query_rows"),
            "{rows:?}: {error}"
        );
    }
    assert!(matches!(
        ask(&input.x[1..], MapsOptions::default()),
        Error::Shape { .. }
    ));
    let mut bad = input.x.clone();
    bad[7] = f32::NAN;
    assert!(matches!(
        ask(&bad, MapsOptions::default()),
        Error::NonFinite { .. }
    ));
}

#[test]
fn maps_file_round_trip() {
    let config = Config::new(16)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(3);
    let (seed, what) = seed("maps_file_round_trip");
    let (weights, input) = random_problem(config, 1, 7, None, 1.0, seed).unwrap();
    let maps = check(&what, &weights, &input, &MapsOptions::rows([1, 2, 6]));
    let bytes = maps.to_safetensors().unwrap();
    assert_eq!(AttentionMaps::from_safetensors(&bytes).unwrap(), maps);
}
