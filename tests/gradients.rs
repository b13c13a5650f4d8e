//! The reference backward (`reference::backward`, the f64 oracle of the layer's gradients),
//! checked two of the three ways the standards ask for:
//!
//! * against central finite differences of the reference forward, on seeded random problems
//!   that cover odd sizes, `s = 1`, `r = 1`, batch > 1, causal, key padding, a fully masked
//!   row, prenorm, biases and large magnitudes, and the training forward with dropout
//!   (`reference::forward_train` against `backward_train`, one seed, so one fixed mask);
//! * against PyTorch's float64 autograd (`tests/golden-grad/`, a copy of
//!   `shared/golden-grad/`), loaded through the crate's own readers.
//!
//! The third, the GPU backward against both, lands with the backward kernels. These tests run
//! on the CPU only.

mod common;

use std::path::Path;

use compositional_attention::checkpoint::{
    Checkpoint, Form, FormWeights, Format, Linear, Selection, SelectionWeights,
};
use compositional_attention::dropout::{Dropout, DropoutStream};
use compositional_attention::io::{self, Input};
use compositional_attention::reference::{self, backward::ReferenceGradients};
use compositional_attention::testing::{ErrorStats, normal, random_problem};
use compositional_attention::{Config, Error, Weights};

/// `L = Σ y ⊙ dy` of the reference forward: the evaluation forward, or the training forward of
/// the step seeded `dropout_seed`.
fn loss(weights: &Weights, input: &Input, dy: &[f32], dropout_seed: Option<u64>) -> f64 {
    let (x, batch, seq, mask) = (&input.x, input.batch, input.seq, input.mask.as_deref());
    let y = match dropout_seed {
        None => reference::forward(weights, x, batch, seq, mask),
        Some(seed) => reference::forward_train(weights, x, batch, seq, mask, seed),
    }
    .unwrap();
    y.iter().zip(dy).map(|(y, &g)| y * g as f64).sum()
}

/// The gradients of [`loss`] from the reference backward.
fn gradients(
    weights: &Weights,
    input: &Input,
    dy: &[f32],
    dropout_seed: Option<u64>,
) -> ReferenceGradients {
    let (x, batch, seq, mask) = (&input.x, input.batch, input.seq, input.mask.as_deref());
    match dropout_seed {
        None => reference::backward::backward(weights, x, batch, seq, mask, dy),
        Some(seed) => reference::backward::backward_train(weights, x, batch, seq, mask, dy, seed),
    }
    .unwrap()
}

/// The dropout seed of a test's step, drawn from the test's seed (so `COMPATTN_SEED` reproduces
/// it too).
fn dropout_seed_of(seed: u64) -> u64 {
    seed.rotate_left(29) ^ 0xd1b5_4a32_d192_ed03
}

/// The central difference of `L` along one f32 coordinate of value `v`: the steps are the f32
/// values actually stored (`fl(v ± h) − v`, exact in f64), so rounding the perturbed value
/// does not bias the quotient.
fn central_difference(v: f32, h: f32, mut loss_at: impl FnMut(f32) -> f64) -> f64 {
    let (up, down) = (v + h, v - h);
    (loss_at(up) - loss_at(down)) / ((up as f64 - v as f64) + (v as f64 - down as f64))
}

/// Coordinates spread over `len` (first, last, and seeded ones between).
fn coordinates(len: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut picks = vec![0, len - 1];
    let mut state = seed | 1;
    while picks.len() < count.min(len) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        picks.push((state % len as u64) as usize);
    }
    picks
}

/// The step and the tolerance: `L` is a smooth function of each coordinate whose scale the
/// input sets, and the difference's error is `O(h²·L''')` plus `L`'s f64 rounding over `h`.
const STEP: f32 = 1e-3;
const FD_TOLERANCE: f64 = 2e-4;

/// Which forward the finite differences differentiate.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `reference::forward` against `backward`.
    Evaluation,
    /// `reference::forward_train` against `backward_train`, one dropout seed.
    Training,
}

fn check_against_finite_differences(
    name: &str,
    config: Config,
    shape: (usize, usize),
    mask_lengths: Option<&[usize]>,
    scale: f32,
    mode: Mode,
) {
    let (seed, what) = common::seed(name);
    let (batch, seq) = shape;
    let (weights, input) = random_problem(config, batch, seq, mask_lengths, scale, seed).unwrap();
    let mut rng = compositional_attention::rng::Rng::seed_from_u64(seed ^ 0x9e37_79b9);
    let dy = normal(&mut rng, batch * seq * config.dim, 1.0);
    let dropout_seed = (mode == Mode::Training).then(|| dropout_seed_of(seed));
    let grads = gradients(&weights, &input, &dy, dropout_seed);
    if mode == Mode::Training {
        // The masks are in effect: the training gradients are not the evaluation ones.
        let evaluation = gradients(&weights, &input, &dy, None);
        assert_ne!(
            grads.input, evaluation.input,
            "{what}: dropout {} changed no gradient",
            config.dropout
        );
    }

    // The input.
    let mut numeric = Vec::new();
    let mut analytic = Vec::new();
    for k in coordinates(input.x.len(), 8, seed) {
        numeric.push(central_difference(input.x[k], STEP * scale, |value| {
            let mut perturbed = input.clone();
            perturbed.x[k] = value;
            loss(&weights, &perturbed, &dy, dropout_seed)
        }));
        analytic.push(grads.input[k]);
    }
    assert_close(&format!("{what}: input"), &numeric, &analytic);

    // Every parameter.
    let names: Vec<&'static str> = weights.parameters().iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        grads.parameters.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "{what}: the gradients follow Weights::parameters"
    );
    for name in names {
        let expected = grads.parameter(name).unwrap();
        let values = weights
            .parameters()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
            .data;
        let mut numeric = Vec::new();
        let mut analytic = Vec::new();
        for k in coordinates(expected.len(), 6, seed ^ name.len() as u64) {
            let original = values[k];
            let step = STEP * original.abs().max(0.1);
            numeric.push(central_difference(original, step, |value| {
                let mut perturbed = weights.clone();
                parameter_mut(&mut perturbed, name)[k] = value;
                loss(&perturbed, &input, &dy, dropout_seed)
            }));
            analytic.push(expected[k]);
        }
        assert_close(&format!("{what}: {name}"), &numeric, &analytic);
    }
}

/// The data of parameter `name`, mutable.
fn parameter_mut<'w>(weights: &'w mut Weights, name: &str) -> &'w mut Vec<f32> {
    use compositional_attention::weights as w;
    match name {
        w::NORM_WEIGHT => &mut weights.norm.as_mut().unwrap().0,
        w::NORM_BIAS => &mut weights.norm.as_mut().unwrap().1,
        w::SEARCH_QUERIES => &mut weights.search_queries,
        w::SEARCH_KEYS => &mut weights.search_keys,
        w::RETRIEVAL_VALUES => &mut weights.retrieval_values,
        w::RETRIEVAL_QUERIES => &mut weights.retrieval_queries,
        w::RETRIEVAL_KEYS => &mut weights.retrieval_keys,
        w::OUT => &mut weights.out,
        w::SEARCH_QUERIES_BIAS => &mut weights.biases.as_mut().unwrap().search_queries,
        w::SEARCH_KEYS_BIAS => &mut weights.biases.as_mut().unwrap().search_keys,
        w::RETRIEVAL_VALUES_BIAS => &mut weights.biases.as_mut().unwrap().retrieval_values,
        w::RETRIEVAL_QUERIES_BIAS => &mut weights.biases.as_mut().unwrap().retrieval_queries,
        w::OUT_BIAS => &mut weights.biases.as_mut().unwrap().out,
        other => panic!("no parameter {other}"),
    }
}

/// Max-abs error over the larger of the two vectors' max magnitude, and the relative L2 norm.
#[track_caller]
fn assert_close(what: &str, numeric: &[f64], analytic: &[f64]) {
    let actual: Vec<f32> = numeric.iter().map(|&v| v as f32).collect();
    let stats = ErrorStats::compare(&actual, analytic);
    let scale = analytic
        .iter()
        .chain(numeric)
        .fold(1e-3f64, |m, v| m.max(v.abs()));
    let max_rel = stats.max_abs / scale;
    assert!(
        max_rel <= FD_TOLERANCE && stats.non_finite == 0,
        "{what}: finite differences against the reference backward: {stats}, max-abs over \
         max|gradient| {max_rel:.3e} exceeds {FD_TOLERANCE:e}\n numeric {numeric:?}\n analytic {analytic:?}"
    );
}

#[test]
fn finite_differences_odd_sizes_batch_and_padding() {
    check_against_finite_differences(
        "finite_differences_odd_sizes_batch_and_padding",
        Config::new(14)
            .dim_head(5)
            .num_searches(3)
            .num_retrievals(2),
        (2, 7),
        Some(&[7, 4]),
        1.0,
        Mode::Evaluation,
    );
}

#[test]
fn finite_differences_causal_prenorm_with_a_fully_masked_row() {
    check_against_finite_differences(
        "finite_differences_causal_prenorm_with_a_fully_masked_row",
        Config::new(12)
            .dim_head(4)
            .num_searches(2)
            .num_retrievals(3)
            .prenorm(true)
            .causal(true),
        (2, 6),
        Some(&[6, 0]),
        1.0,
        Mode::Evaluation,
    );
}

#[test]
fn finite_differences_one_search_one_retrieval_one_token() {
    check_against_finite_differences(
        "finite_differences_one_search_one_retrieval_one_token",
        Config::new(6).dim_head(3).num_searches(1).num_retrievals(1),
        (3, 1),
        None,
        1.0,
        Mode::Evaluation,
    );
}

#[test]
fn finite_differences_biases_and_large_magnitudes() {
    check_against_finite_differences(
        "finite_differences_biases_and_large_magnitudes",
        Config::new(10)
            .dim_head(5)
            .num_searches(2)
            .num_retrievals(2)
            .bias(true),
        (1, 5),
        None,
        4.0,
        Mode::Evaluation,
    );
}

#[test]
fn finite_differences_dropout_causal_prenorm_with_a_fully_masked_row() {
    check_against_finite_differences(
        "finite_differences_dropout_causal_prenorm_with_a_fully_masked_row",
        Config::new(14)
            .dim_head(5)
            .num_searches(2)
            .num_retrievals(3)
            .dropout(0.3)
            .prenorm(true)
            .causal(true),
        (2, 7),
        Some(&[7, 0]),
        1.0,
        Mode::Training,
    );
}

#[test]
fn finite_differences_dropout_padding_and_biases() {
    check_against_finite_differences(
        "finite_differences_dropout_padding_and_biases",
        Config::new(10)
            .dim_head(3)
            .num_searches(2)
            .num_retrievals(3)
            .dropout(0.3)
            .bias(true),
        (2, 5),
        Some(&[3, 5]),
        1.0,
        Mode::Training,
    );
}

/// `p = 0` keeps every element with factor 1, so the training forward and backward are the
/// evaluation ones bit for bit; and the evaluation forward ignores `Config::dropout`.
#[test]
fn dropout_zero_is_the_evaluation_pass_exactly() {
    let (seed, what) = common::seed("dropout_zero_is_the_evaluation_pass_exactly");
    let config = Config::new(12)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(3)
        .causal(true);
    let (batch, seq) = (2, 5);
    let (weights, input) = random_problem(config, batch, seq, Some(&[5, 2]), 1.0, seed).unwrap();
    let (x, mask) = (&input.x, input.mask.as_deref());
    let mut rng = compositional_attention::rng::Rng::seed_from_u64(seed ^ 0x9e37_79b9);
    let dy = normal(&mut rng, batch * seq * config.dim, 1.0);
    let y = reference::forward(&weights, x, batch, seq, mask).unwrap();
    let grads = gradients(&weights, &input, &dy, None);
    for dropout_seed in [0, dropout_seed_of(seed), u64::MAX] {
        let trained = reference::forward_train(&weights, x, batch, seq, mask, dropout_seed);
        assert_eq!(trained.unwrap(), y, "{what}: seed {dropout_seed}");
        let trained = gradients(&weights, &input, &dy, Some(dropout_seed));
        assert_eq!(trained.input, grads.input, "{what}: seed {dropout_seed}");
        assert_eq!(
            trained.parameters, grads.parameters,
            "{what}: seed {dropout_seed}"
        );
    }
    let with_dropout = Weights::from_parts(
        config.dropout(0.5),
        weights.norm.clone(),
        [
            weights.search_queries.clone(),
            weights.search_keys.clone(),
            weights.retrieval_values.clone(),
            weights.retrieval_queries.clone(),
            weights.retrieval_keys.clone(),
            weights.out.clone(),
        ],
        weights.biases.clone(),
        None,
    )
    .unwrap();
    let evaluation = reference::forward(&with_dropout, x, batch, seq, mask).unwrap();
    assert_eq!(
        evaluation, y,
        "{what}: the evaluation forward drops nothing"
    );
}

/// Another seed draws another mask, and the same seed the same one.
#[test]
fn dropout_seed_picks_the_mask() {
    let (seed, what) = common::seed("dropout_seed_picks_the_mask");
    let config = Config::new(12)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(3)
        .dropout(0.3);
    let (batch, seq) = (2, 5);
    let (weights, input) = random_problem(config, batch, seq, None, 1.0, seed).unwrap();
    let run = |dropout_seed| {
        reference::forward_train(&weights, &input.x, batch, seq, None, dropout_seed).unwrap()
    };
    let first = run(dropout_seed_of(seed));
    assert_eq!(first, run(dropout_seed_of(seed)), "{what}: same seed");
    assert_ne!(
        first,
        run(dropout_seed_of(seed) ^ 1),
        "{what}: another seed"
    );
    let evaluation = reference::forward(&weights, &input.x, batch, seq, None).unwrap();
    assert_ne!(first, evaluation, "{what}: p = 0.3 dropped nothing");
}

/// The training forward drops `A` and `C` at SPEC §6.4's positions, and `A` at rate `p`.
///
/// The weights make the output count the kept elements: `W_sq = 0` makes `A` uniform (`1/n`),
/// `W_rk = 0` makes `C` uniform (`1/r`), the retrieved values are the constants `v_ρ = 2^ρ`
/// (`W_rv = 0`, bias `v_ρ`) and `W_o` is the identity (`dim = s·d`), so
/// `y[b, i, σ·d] · n·r·(1 − p)² = k_A · Σ_ρ keep_C[ρ]·2^ρ` where `k_A` is the number of `A`'s
/// row `(b, σ, i)` kept: an integer the test computes from `Dropout::keeps` at
/// `((b·s + σ)·n + i)·n + j` and `((b·s + σ)·n + i)·r + ρ`.
#[test]
fn dropout_masks_sit_at_their_positions_and_keep_one_minus_p() {
    let (seed, what) = common::seed("dropout_masks_sit_at_their_positions_and_keep_one_minus_p");
    let (s, r, d, p) = (2, 2, 4, 0.3f32);
    let config = Config::new(s * d)
        .dim_head(d)
        .num_searches(s)
        .num_retrievals(r)
        .dropout(p)
        .bias(true);
    let (batch, seq) = (2, 64);
    let (mut weights, input) = random_problem(config, batch, seq, None, 1.0, seed).unwrap();
    weights.search_queries.fill(0.0);
    weights.retrieval_keys.fill(0.0);
    weights.retrieval_values.fill(0.0);
    weights.out.fill(0.0);
    for k in 0..s * d {
        weights.out[k * s * d + k] = 1.0;
    }
    let biases = weights.biases.as_mut().unwrap();
    biases.search_queries.fill(0.0);
    biases.out.fill(0.0);
    for (feature, v) in biases.retrieval_values.iter_mut().enumerate() {
        *v = (1 << (feature / d)) as f32;
    }
    let dropout_seed = dropout_seed_of(seed);
    let y = reference::forward_train(&weights, &input.x, batch, seq, None, dropout_seed).unwrap();
    let dropout = Dropout::new(p, dropout_seed).unwrap();
    let keep = 1.0 - p as f64;
    let (mut kept, mut drawn) = (0u64, 0u64);
    for b in 0..batch {
        for sigma in 0..s {
            for i in 0..seq {
                let row = ((b * s + sigma) * seq + i) as u64;
                let kept_a = (0..seq as u64)
                    .filter(|&j| {
                        dropout.keeps(DropoutStream::SearchAttention, row * seq as u64 + j)
                    })
                    .count() as f64;
                let selected: f64 = (0..r as u64)
                    .filter(|&rho| {
                        dropout.keeps(DropoutStream::RetrievalSelection, row * r as u64 + rho)
                    })
                    .map(|rho| (1u64 << rho) as f64)
                    .sum();
                let counted = y[(b * seq + i) * s * d + sigma * d] * (seq * r) as f64 * keep * keep;
                let expected = kept_a * selected;
                assert!(
                    (counted - expected).abs() <= 1e-9 * expected.max(1.0),
                    "{what}: row (b {b}, σ {sigma}, i {i}) counts {counted}, the masks at SPEC \
                     §6.4's positions {expected} (k_A {kept_a}, selection {selected})"
                );
                if selected > 0.0 {
                    kept += (counted / selected).round() as u64;
                    drawn += seq as u64;
                }
            }
        }
    }
    // Binomial: σ = sqrt(p(1 − p)/N) ≈ 0.004 for N ≈ 15000; 5σ.
    let fraction = kept as f64 / drawn as f64;
    let sigma = (p as f64 * keep / drawn as f64).sqrt();
    assert!(
        (fraction - keep).abs() <= 5.0 * sigma,
        "{what}: A kept {fraction} of {drawn}, expected {keep} ± {:.4}",
        5.0 * sigma
    );
}

/// The reference backward reproduces PyTorch's float64 autograd (stored as f32), which makes
/// it the oracle for the GPU backward.
#[test]
fn reference_backward_matches_pytorch_autograd() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-grad");
    let mut checked = 0;
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    for path in paths {
        let sidecar = std::fs::read_to_string(path.with_extension("json")).unwrap();
        let causal = sidecar.contains("\"causal\": true");
        let bytes = std::fs::read(&path).unwrap();
        let weights = Weights::from_safetensors(&bytes, causal, "").unwrap();
        let input = Input::from_safetensors(&bytes).unwrap();
        let tensor = |name: &str| io::read_tensor(&bytes, name).unwrap().unwrap().1;
        let grads = reference::backward::backward(
            &weights,
            &input.x,
            input.batch,
            input.seq,
            input.mask.as_deref(),
            &tensor(io::GRAD_OUTPUT),
        )
        .unwrap();
        let what = path.file_name().unwrap().to_string_lossy().to_string();
        let compare = |name: &str, expected: &[f32], ours: &[f64]| {
            // Ours (f64) against PyTorch's f64 stored as f32: the storage's rounding, 6e-8 of
            // each value, is the floor.
            let stats = ErrorStats::compare(expected, ours);
            let scale = ours.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                stats.max_abs <= 1e-5 * scale && stats.rel_l2 <= 1e-5,
                "{what}: {name}: {stats} against PyTorch's autograd"
            );
            eprintln!("{what}: {name}: {stats}");
        };
        compare("grad_input", &tensor(io::GRAD_INPUT), &grads.input);
        for (name, ours) in &grads.parameters {
            let expected = tensor(&format!("{}{name}", io::GRAD_PREFIX));
            compare(name, &expected, ours);
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the 4 shipped cases, found {checked}"
    );
}

// ---- gradients of the checkpoint's own tensors (Checkpoint::gradients) ----------------------

/// Every tensor of a general-form checkpoint, mutable, under a name of its place in the form.
fn checkpoint_tensors(w: &mut FormWeights) -> Vec<(String, &mut Vec<f32>)> {
    let mut table: Vec<(String, &mut Vec<f32>)> = Vec::new();
    if let Some((gamma, beta)) = &mut w.norm {
        table.push(("norm.gamma".into(), gamma));
        table.push(("norm.beta".into(), beta));
    }
    let selection: Vec<(&str, &mut Linear)> = match &mut w.selection {
        SelectionWeights::DotProduct { value_k } => vec![("value_k", value_k)],
        SelectionWeights::LinearScore { score } => vec![("score", score)],
        SelectionWeights::MlpScore { hidden, score } => vec![("hidden", hidden), ("score", score)],
    };
    let linears = [
        ("q", &mut w.q),
        ("k", &mut w.k),
        ("v", &mut w.v),
        ("value_q", &mut w.value_q),
        ("out", &mut w.out),
    ];
    for (name, l) in linears.into_iter().chain(selection) {
        table.push((format!("{name}.weight"), &mut l.weight));
        if let Some(bias) = &mut l.bias {
            table.push((format!("{name}.bias"), bias));
        }
    }
    table
}

/// The gradients of a checkpoint's own tensors, through the layer's lowered parameters
/// (`reference::backward` on `Checkpoint::layer_weights`, then `Checkpoint::gradients`),
/// against central finite differences of the general form's f64 forward
/// (`reference::general::forward`, which shares nothing with the lowering).
fn check_checkpoint_gradients(
    name: &str,
    form: Form,
    bias: bool,
    (batch, seq): (usize, usize),
    lengths: Option<&[usize]>,
) {
    let (seed, what) = common::seed(name);
    let checkpoint = common::variants::random_checkpoint(form, bias, seed);
    let mut rng = compositional_attention::rng::Rng::seed_from_u64(seed ^ 0x77);
    let x = normal(&mut rng, batch * seq * form.dim, 1.0);
    let dy = normal(&mut rng, batch * seq * form.dim, 1.0);
    let mask: Option<Vec<bool>> =
        lengths.map(|l| (0..batch * seq).map(|i| i % seq < l[i / seq]).collect());
    let mask = mask.as_deref();
    let loss = |c: &Checkpoint| -> f64 {
        let y = reference::general::forward(c, &x, batch, seq, mask).unwrap();
        y.iter().zip(&dy).map(|(y, &g)| y * g as f64).sum()
    };
    let lowered = checkpoint.layer_weights().unwrap();
    let layer_gradients = reference::backward::backward(&lowered, &x, batch, seq, mask, &dy)
        .unwrap()
        .to_weights(&lowered)
        .unwrap();
    let mut gradients = checkpoint.gradients(&layer_gradients).unwrap();
    assert_eq!(gradients.form, checkpoint.form, "{what}: the same form");
    let analytic: Vec<(String, Vec<f32>)> = checkpoint_tensors(&mut gradients.weights)
        .into_iter()
        .map(|(n, g)| (n, g.clone()))
        .collect();
    let mut perturbed = checkpoint.clone();
    let count = checkpoint_tensors(&mut perturbed.weights).len();
    assert_eq!(count, analytic.len(), "{what}: a gradient for every tensor");
    for (t, (tensor, expected)) in analytic.iter().enumerate() {
        let mut numeric = Vec::new();
        let mut ours = Vec::new();
        for k in coordinates(expected.len(), 6, seed ^ t as u64) {
            let original = checkpoint_tensors(&mut perturbed.weights)[t].1[k];
            let step = STEP * original.abs().max(0.1);
            numeric.push(central_difference(original, step, |value| {
                checkpoint_tensors(&mut perturbed.weights)[t].1[k] = value;
                let l = loss(&perturbed);
                checkpoint_tensors(&mut perturbed.weights)[t].1[k] = original;
                l
            }));
            ours.push(expected[k] as f64);
        }
        assert_close(&format!("{what}: {tensor}"), &numeric, &ours);
    }
}

fn general_form(
    format: Format,
    dim: usize,
    heads: usize,
    rules: usize,
    widths: [usize; 3],
) -> Form {
    common::variants::form(format, dim, heads, rules, widths)
}

#[test]
fn checkpoint_gradients_fairseq_dot_product_odd_widths_causal_and_padding() {
    let form = Form {
        causal: true,
        ..general_form(Format::Fairseq, 20, 4, 2, [5, 7, 3])
    };
    check_checkpoint_gradients(
        "checkpoint_gradients_fairseq_dot_product_odd_widths_causal_and_padding",
        form,
        true,
        (2, 7),
        Some(&[7, 4]),
    );
}

#[test]
fn checkpoint_gradients_linear_score_network_with_a_fully_masked_row() {
    let form = Form {
        selection: Selection::LinearScore,
        ..general_form(Format::Fairseq, 24, 3, 3, [8, 6, 5])
    };
    check_checkpoint_gradients(
        "checkpoint_gradients_linear_score_network_with_a_fully_masked_row",
        form,
        true,
        (2, 5),
        Some(&[5, 0]),
    );
}

#[test]
fn checkpoint_gradients_q_compose() {
    let dot = Form {
        q_compose: true,
        ..general_form(Format::Xformers, 18, 3, 2, [6, 9, 4])
    };
    check_checkpoint_gradients("checkpoint_gradients_q_compose", dot, true, (1, 6), None);
    let score = Form {
        q_compose: true,
        selection: Selection::LinearScore,
        ..general_form(Format::Fairseq, 16, 1, 1, [16, 4, 6])
    };
    check_checkpoint_gradients("checkpoint_gradients_q_compose", score, false, (2, 3), None);
}

#[test]
fn checkpoint_gradients_of_forms_that_lower_to_themselves() {
    // Keras with prenorm, and xformers with equal widths and no biases: the layer's tensors
    // are the checkpoint's.
    let keras = Form {
        prenorm: true,
        ..general_form(Format::Keras, 12, 2, 3, [4, 4, 4])
    };
    check_checkpoint_gradients(
        "checkpoint_gradients_of_forms_that_lower_to_themselves",
        keras,
        false,
        (1, 5),
        None,
    );
    let xformers = general_form(Format::Xformers, 16, 2, 2, [8, 8, 8]);
    check_checkpoint_gradients(
        "checkpoint_gradients_of_forms_that_lower_to_themselves",
        xformers,
        true,
        (2, 4),
        Some(&[4, 2]),
    );
}

#[test]
fn checkpoint_gradients_refuse_another_layer_and_the_mlp_score_network() {
    let (seed, what) = common::seed("checkpoint_gradients_refuse_another_layer");
    let fairseq = common::variants::random_checkpoint(
        general_form(Format::Fairseq, 20, 4, 2, [5, 7, 3]),
        true,
        seed,
    );
    let other = common::variants::random_checkpoint(
        general_form(Format::Fairseq, 20, 4, 2, [5, 8, 3]),
        true,
        seed,
    );
    let err = fairseq
        .gradients(&other.layer_weights().unwrap())
        .unwrap_err();
    assert!(
        matches!(err, Error::TrainingMismatch(_)),
        "{what}: another layer's gradients: {err}"
    );
    let mlp = common::variants::random_checkpoint(
        Form {
            selection: Selection::MlpScore,
            ..general_form(Format::Xformers, 20, 3, 3, [6, 5, 7])
        },
        true,
        seed,
    );
    let err = mlp.gradients(&mlp.layer_weights().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::TrainingUnsupported { .. }),
        "{what}: the MLP score network: {err}"
    );
}
