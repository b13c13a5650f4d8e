//! Checkpoints of the other implementations (issue 9): the Keras package, the official fairseq
//! module and xformers, in the general form (`checkpoint`), against
//!
//! * the reference cases of `tests/golden-variants/` (the original modules run in f64), read
//!   through the crate's own readers: the f64 general reference and the layer on every strategy
//!   and both kernel families, within 1e-4 of max|output|;
//! * random problems of every form against the f64 general reference (`reference::general`),
//!   with the usual edge cases;
//! * the options the crate does not implement, each refused with a typed error naming it.

mod common;

use common::variants::{
    CASES, case_bytes, case_dir, constructor_json, form, options, random_checkpoint,
};
use common::{assert_close, gpu, gpu_other_profile, seed};
use compositional_attention::checkpoint::{
    Checkpoint, CheckpointOptions, Constructor, Form, Format, Selection,
};
use compositional_attention::io::{Input, read_output};
use compositional_attention::rng::Rng;
use compositional_attention::testing::{ErrorStats, normal};
use compositional_attention::{CompositionalAttention, Error, Strategy, Weights, reference};

/// The suggested comparison of the golden-variants README, and the issue's bar.
const TOLERANCE: f64 = 1e-4;

struct Case {
    name: String,
    checkpoint: Checkpoint,
    input: Input,
    output: Vec<f32>,
}

fn load(folder: &str, case: &str) -> Case {
    let bytes = case_bytes(folder, case);
    let options = options(folder, case);
    let checkpoint = Checkpoint::from_safetensors(&bytes, &options)
        .unwrap_or_else(|e| panic!("{folder}/{case}: {e}"));
    assert_eq!(checkpoint.form.format.name(), folder);
    let input = Input::from_safetensors(&bytes).unwrap();
    let (_, output) = read_output(&bytes).unwrap().expect("the case's output");
    Case {
        name: format!("{folder}/{case}"),
        checkpoint,
        input,
        output,
    }
}

#[test]
fn golden_variants_through_the_f64_reference() {
    for (folder, case) in CASES {
        let c = load(folder, case);
        let y = reference::general::forward(
            &c.checkpoint,
            &c.input.x,
            c.input.batch,
            c.input.seq,
            c.input.mask.as_deref(),
        )
        .unwrap();
        let expected: Vec<f64> = c.output.iter().map(|&v| v as f64).collect();
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let stats = assert_close(
            &format!("{} (f64 reference)", c.name),
            &y32,
            &expected,
            1e-6,
        );
        eprintln!("{}: reference {stats}", c.name);
    }
}

/// The layer made from `weights` on both kernel families and every strategy, against
/// `expected` within `tol`. A layer with an MLP score network must refuse the fused strategy
/// with a typed error (only the unfused selection runs it).
#[allow(clippy::too_many_arguments)]
fn check_everywhere(
    what: &str,
    weights: &compositional_attention::Weights,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<&[bool]>,
    expected: &[f64],
    tol: f64,
) {
    for ctx in [gpu(), gpu_other_profile()] {
        let mut layer = CompositionalAttention::new(ctx, weights).unwrap();
        for strategy in Strategy::ALL {
            layer.set_strategy(strategy);
            let result = layer.forward_blocking(x, batch, seq, mask);
            let label = format!(
                "{what} [{strategy}, {:?} kernels]",
                ctx.kernel_family_request()
            );
            let stats = assert_close(&label, &result.unwrap(), expected, tol);
            eprintln!("{label}: {stats}");
        }
    }
}

#[test]
fn golden_variants_on_the_gpu() {
    for (folder, case) in CASES {
        let c = load(folder, case);
        let weights = c.checkpoint.layer_weights().unwrap();
        let expected: Vec<f64> = c.output.iter().map(|&v| v as f64).collect();
        let i = &c.input;
        check_everywhere(
            &c.name,
            &weights,
            &i.x,
            i.batch,
            i.seq,
            i.mask.as_deref(),
            &expected,
            TOLERANCE,
        );
    }
}

// ---- random problems of every form ------------------------------------------------------------

/// A random problem of `form` on the GPU (every strategy, both families) against the general
/// f64 reference.
fn check_form(
    form: Form,
    bias: bool,
    batch: usize,
    seq: usize,
    lengths: Option<&[usize]>,
    name: &str,
) {
    let (seed, what) = seed(name);
    let checkpoint = random_checkpoint(form, bias, seed);
    let mut rng = Rng::seed_from_u64(seed ^ 0x5eed);
    let x = normal(&mut rng, batch * seq * form.dim, 1.0);
    let mask: Option<Vec<bool>> = lengths.map(|lengths| {
        (0..batch * seq)
            .map(|i| i % seq < lengths[i / seq])
            .collect()
    });
    let expected =
        reference::general::forward(&checkpoint, &x, batch, seq, mask.as_deref()).unwrap();
    let weights = checkpoint.layer_weights().unwrap();
    check_everywhere(
        &what,
        &weights,
        &x,
        batch,
        seq,
        mask.as_deref(),
        &expected,
        2e-5,
    );
}

#[test]
fn fairseq_dot_product_with_odd_widths_causal_and_padding() {
    // hd 5, vd 7, sel 3: every width different, none a multiple of four.
    let f = Form {
        causal: true,
        ..form(Format::Fairseq, 20, 4, 2, [5, 7, 3])
    };
    check_form(
        f,
        true,
        2,
        13,
        Some(&[13, 6]),
        "fairseq qk_rule, odd widths, causal, padding",
    );
}

#[test]
fn fairseq_linear_score_network_with_a_fully_masked_row() {
    let f = Form {
        selection: Selection::LinearScore,
        ..form(Format::Fairseq, 24, 3, 3, [8, 6, 5])
    };
    // The second sequence's every key is masked: uniform over all keys (the crate's choice
    // where fairseq gives NaN).
    check_form(
        f,
        true,
        2,
        9,
        Some(&[9, 0]),
        "fairseq linear score, fully masked row",
    );
}

#[test]
fn q_compose_with_one_search_and_one_retrieval() {
    let f = Form {
        q_compose: true,
        ..form(Format::Xformers, 16, 1, 1, [16, 4, 6])
    };
    check_form(f, true, 3, 7, None, "q_compose, s = 1, r = 1");
    let f = Form {
        q_compose: true,
        selection: Selection::LinearScore,
        ..form(Format::Fairseq, 18, 3, 2, [6, 9, 4])
    };
    check_form(f, true, 2, 11, None, "q_compose, linear score");
}

#[test]
fn forms_without_biases_and_with_prenorm() {
    let f = Form {
        prenorm: true,
        layer_norm_eps: 1e-3,
        causal: true,
        ..form(Format::Keras, 12, 2, 3, [4, 4, 4])
    };
    // lucidrains' own form: lowered to itself.
    check_form(f, false, 2, 10, None, "keras form, prenorm, causal");
    let f = Form {
        selection: Selection::LinearScore,
        ..form(Format::Xformers, 16, 2, 2, [8, 8, 8])
    };
    check_form(f, false, 1, 1, None, "linear score without biases, n = 1");
}

/// The MLP score network (`nonlinear=True`) runs on both strategies: the fused kernel stores the
/// retrieved vectors and `retrieval_select` runs the network on them (a layer made from such a
/// checkpoint starts fused, as every layer); generation runs it too.
#[test]
fn the_mlp_score_network_runs_fused_and_unfused() {
    let f = Form {
        selection: Selection::MlpScore,
        causal: true,
        ..form(Format::Xformers, 20, 3, 3, [6, 5, 7])
    };
    check_form(
        f,
        true,
        2,
        11,
        Some(&[11, 4]),
        "MLP score network, causal, padding",
    );
    let f = Form {
        selection: Selection::MlpScore,
        q_compose: true,
        ..form(Format::Fairseq, 16, 2, 2, [8, 8, 4])
    };
    check_form(f, true, 1, 9, None, "MLP score network, q_compose");

    let checkpoint = random_checkpoint(
        Form {
            selection: Selection::MlpScore,
            causal: true,
            ..form(Format::Xformers, 16, 2, 2, [8, 8, 4])
        },
        true,
        7,
    );
    let weights = checkpoint.layer_weights().unwrap();
    assert_eq!(weights.config().selection_mlp, Some(4));
    let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
    assert_eq!(layer.strategy(), Strategy::Fused);
    assert!(layer.plan(1, 8).unwrap().core().name() == "fused");
    // In f16 storage it starts unfused (f32 intermediates); the fused strategy names itself.
    if compositional_attention::Precision::F16
        .check_supported(gpu())
        .is_ok()
    {
        let mut f16 = CompositionalAttention::with_precision(
            gpu(),
            &weights,
            compositional_attention::Precision::F16,
        )
        .unwrap();
        assert_eq!(f16.strategy(), Strategy::Unfused);
        f16.set_strategy(Strategy::Fused);
        match f16.plan(1, 8) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "strategy"),
            other => panic!("expected the fused strategy refused in f16, got {other:?}"),
        }
    }
    // Generation runs it after the split-KV core: a prefill equals the causal forward
    // (tests/decode.rs checks decode steps against the reference on prefixes).
    let x = normal(&mut Rng::seed_from_u64(7), 8 * 16, 1.0);
    let forward: Vec<f64> = layer
        .forward_blocking(&x, 1, 8, None)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut cache = layer.kv_cache(1, 8).unwrap();
    let prefilled = layer.prefill_blocking(&mut cache, &x, 8, None).unwrap();
    assert_close("MLP score network, prefill", &prefilled, &forward, 1e-4);
    // The lowered weights round-trip through safetensors, score network included.
    let bytes = weights.to_safetensors().unwrap();
    let loaded = compositional_attention::Weights::from_safetensors(&bytes, true, "").unwrap();
    assert_eq!(loaded, weights);
}

// ---- readers: detection, constructor arguments, refused options ------------------------------

fn fairseq_bytes() -> Vec<u8> {
    std::fs::read(case_dir().join("fairseq/f01_qk_rule.safetensors")).unwrap()
}

fn with(json: &str) -> CheckpointOptions {
    CheckpointOptions {
        constructor: Some(Constructor::parse(json).unwrap()),
        ..Default::default()
    }
}

/// The Keras cases' `.weights.h5` (as `model.save_weights` wrote them) read through the crate's
/// HDF5 reader: the same checkpoint as their safetensors, and the same output.
#[test]
fn keras_weights_h5_equal_their_safetensors() {
    for case in ["k01_defaults", "k02_prenorm"] {
        let dir = case_dir().join("keras");
        let h5 = std::fs::read(dir.join(format!("{case}.weights.h5"))).unwrap();
        // Without a configuration (the layer found by its attributes) and with one.
        for options in [
            CheckpointOptions::default(),
            with(&constructor_json("keras", case)),
        ] {
            let from_h5 = Checkpoint::from_bytes(&h5, &options)
                .unwrap_or_else(|e| panic!("{case}.weights.h5: {e}"));
            assert_eq!(from_h5, load("keras", case).checkpoint, "{case}");
        }
        // A name that is not in the file.
        let err = Checkpoint::from_bytes(&h5, &with(r#"{"format": "keras", "name": "other"}"#))
            .unwrap_err();
        assert!(err.to_string().contains("\"other\""), "{err}");
    }
}

/// Found by the `checkpoint`, `keras_h5` and `constructor` fuzz targets: a Keras checkpoint's
/// layer weights saved and loaded again lost the LayerNorm epsilon 1e-3 (no tensor records it),
/// silently. It now travels in the file's metadata.
#[test]
fn lowered_keras_weights_keep_their_epsilon_through_a_file() {
    let weights = load("keras", "k02_prenorm")
        .checkpoint
        .layer_weights()
        .unwrap();
    assert_eq!(weights.config().layer_norm_eps, 1e-3);
    let bytes = weights.to_safetensors().unwrap();
    let again = compositional_attention::Weights::from_safetensors(&bytes, false, "").unwrap();
    assert_eq!(again, weights);
}

#[test]
fn formats_are_detected_from_the_names() {
    for (folder, case) in CASES {
        let bytes =
            std::fs::read(case_dir().join(folder).join(format!("{case}.safetensors"))).unwrap();
        let json = constructor_json(folder, case);
        // Without "format": detected.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value.as_object_mut().unwrap().remove("format");
        let checkpoint = Checkpoint::from_safetensors(&bytes, &with(&value.to_string())).unwrap();
        assert_eq!(checkpoint.form.format.name(), folder, "{case}");
    }
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let bytes = fairseq_bytes();
    let base =
        r#""format": "fairseq", "embed_dim": 32, "num_heads": 4, "num_rules": 2, "qk_rule": true"#;
    let expect_unsupported = |extra: &str, option: &str, got: Result<(), Error>| match got {
        Err(Error::Unsupported {
            option: o, format, ..
        }) => {
            assert_eq!((o.as_str(), format), (option, "fairseq"), "{extra}")
        }
        other => panic!("{extra}: expected Unsupported({option}), got {other:?}"),
    };
    // Refused by the reader.
    for (extra, option) in [
        (r#""gumbel": true"#, "gumbel=True"),
        (r#""q_noise": 0.1"#, "q_noise"),
        (r#""num_head": 4"#, "num_head"),
    ] {
        let options = with(&format!("{{{base}, {extra}}}"));
        let got = Checkpoint::from_safetensors(&bytes, &options).map(|_| ());
        expect_unsupported(extra, option, got);
    }
    // Read, and lowered onto the layer (issue 19): the extra zero row, and a memory layer.
    for (extra, memory) in [
        (r#""add_zero_attn": true"#, false),
        (r#""encoder_decoder_attention": true"#, true),
    ] {
        let options = with(&format!("{{{base}, {extra}}}"));
        let checkpoint = Checkpoint::from_safetensors(&bytes, &options).unwrap();
        let config = *checkpoint.layer_weights().unwrap().config();
        // Neither flag is fairseq's general attention: a memory layer as wide as its input.
        assert!(config.memory.is_some(), "{extra}");
        assert_eq!(config.extra_keys.zero_attn, !memory, "{extra}");
    }
    // What the file contradicts: kdim against k_proj's width, add_bias_kv without its rows.
    let options = with(&format!(r#"{{{base}, "kdim": 16}}"#));
    let err = Checkpoint::from_safetensors(&bytes, &options).unwrap_err();
    assert!(
        matches!(&err, Error::ConfigMismatch(m) if m.contains("kdim = 16")),
        "{err}"
    );
    let options = with(&format!(r#"{{{base}, "add_bias_kv": true}}"#));
    let err = Checkpoint::from_safetensors(&bytes, &options).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "bias_k"),
        "{err}"
    );
    // xformers' custom projection container.
    let bytes =
        std::fs::read(case_dir().join("xformers/x01_defaults_shared_proj.safetensors")).unwrap();
    let options = with(r#"{"dim_model": 32, "num_heads": 4, "in_proj_container": "custom"}"#);
    assert!(matches!(
        Checkpoint::from_safetensors(&bytes, &options),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn missing_and_contradicting_arguments_are_errors() {
    let bytes = fairseq_bytes();
    // No constructor: fairseq does not record num_heads.
    let err = Checkpoint::from_safetensors(&bytes, &CheckpointOptions::default()).unwrap_err();
    assert!(err.to_string().contains("num_heads"), "{err}");
    // A constructor that contradicts the shapes.
    let err = Checkpoint::from_safetensors(
        &bytes,
        &with(r#"{"format": "fairseq", "num_heads": 4, "num_rules": 3}"#),
    )
    .unwrap_err();
    assert!(err.to_string().contains("num_rules"), "{err}");
    // Not a JSON object, or an unknown format.
    assert!(Constructor::parse("[1, 2]").is_err());
    assert!(matches!(
        Constructor::parse(r#"{"format": "jax"}"#),
        Err(Error::InvalidConfig {
            field: "format",
            ..
        })
    ));
}

#[test]
fn golden_variant_errors_are_small_against_the_original_f32() {
    // The layer is as close to the f64 original as the original's own f32 forward (the JSON's
    // stats), within a factor that leaves room for a different summation order.
    for (folder, case) in CASES {
        let c = load(folder, case);
        let weights = c.checkpoint.layer_weights().unwrap();
        let mut layer = CompositionalAttention::new(gpu(), &weights).unwrap();
        let y = layer
            .forward_blocking(
                &c.input.x,
                c.input.batch,
                c.input.seq,
                c.input.mask.as_deref(),
            )
            .unwrap();
        let expected: Vec<f64> = c.output.iter().map(|&v| v as f64).collect();
        let stats = ErrorStats::compare(&y, &expected);
        assert!(
            stats.max_abs / stats.max_expected < 2e-5,
            "{}: {stats}",
            c.name
        );
    }
}

/// A layer lowered from a checkpoint with an MLP score network and saved with
/// `Weights::to_safetensors` is a lucidrains-named file with `selection_mlp.*`. Read back for
/// running (`layer_weights_from_bytes`, what `compattn forward` and the browser's `load` call) it
/// is the same layer and computes the original form; read as a general-form `Checkpoint` it is
/// refused by name (it once lost its MLP there and ran a dot-product selection).
#[test]
fn a_saved_layer_with_an_mlp_score_network_reads_back_whole() {
    use compositional_attention::checkpoint::layer_weights_from_bytes;
    let (seed, what) = seed("a_saved_layer_with_an_mlp_score_network_reads_back_whole");
    let f = Form {
        selection: Selection::MlpScore,
        ..form(Format::Xformers, 20, 3, 3, [6, 5, 7])
    };
    let checkpoint = random_checkpoint(f, true, seed);
    let lowered = checkpoint.layer_weights().unwrap();
    assert!(lowered.config().selection_mlp.is_some());
    let saved = lowered.to_safetensors().unwrap();
    let (read, format) = layer_weights_from_bytes(&saved, &CheckpointOptions::default()).unwrap();
    assert_eq!(format, Format::Lucidrains);
    assert_eq!(read, lowered);
    let (batch, seq) = (2, 9);
    let x = normal(&mut Rng::seed_from_u64(seed ^ 1), batch * seq * 20, 1.0);
    let expected = reference::general::forward(&checkpoint, &x, batch, seq, None).unwrap();
    let mut layer = CompositionalAttention::new(gpu(), &read).unwrap();
    let y = layer.forward_blocking(&x, batch, seq, None).unwrap();
    assert_close(&what, &y, &expected, TOLERANCE);
    match Checkpoint::from_safetensors(&saved, &CheckpointOptions::default()) {
        Err(Error::Unsupported { option, .. }) => assert_eq!(option, "selection_mlp.hidden"),
        other => panic!("{what}: expected the MLP refused by name, got {other:?}"),
    }
}

/// `Checkpoint::to_safetensors` writes what the readers read: every format's checkpoint reads
/// back equal, under its own names (the gradients of `Checkpoint::gradients` reach files so).
#[test]
fn checkpoints_write_what_their_readers_read() {
    let (seed, what) = seed("checkpoints_write_what_their_readers_read");
    let cases = [
        (
            Form {
                selection: Selection::LinearScore,
                ..form(Format::Fairseq, 24, 3, 3, [8, 6, 5])
            },
            true,
            r#"{"format": "fairseq", "num_heads": 3, "self_attention": true}"#,
        ),
        (
            Form {
                q_compose: true,
                ..form(Format::Xformers, 18, 3, 2, [6, 9, 4])
            },
            false,
            r#"{"format": "xformers", "num_heads": 3}"#,
        ),
        (
            Form {
                selection: Selection::MlpScore,
                ..form(Format::Fairseq, 20, 3, 3, [6, 5, 7])
            },
            true,
            r#"{"format": "fairseq", "num_heads": 3, "self_attention": true}"#,
        ),
        (
            Form {
                prenorm: true,
                layer_norm_eps: 1e-3,
                ..form(Format::Keras, 12, 2, 3, [4, 4, 4])
            },
            false,
            r#"{"format": "keras"}"#,
        ),
    ];
    for (i, (form, bias, json)) in cases.into_iter().enumerate() {
        let checkpoint = random_checkpoint(form, bias, seed ^ i as u64);
        let bytes = checkpoint.to_safetensors().unwrap();
        let back = Checkpoint::from_safetensors(&bytes, &with(json))
            .unwrap_or_else(|e| panic!("{what}: {} reads back: {e}", form.format));
        assert_eq!(back, checkpoint, "{what}: {}", form.format);
    }
    // lucidrains: a layer's own file, through the general form and back.
    let weights = Weights::random(
        compositional_attention::Config::new(16)
            .dim_head(4)
            .num_searches(2)
            .num_retrievals(3)
            .prenorm(true)
            .bias(true)
            .layer_norm_eps(1e-4),
        seed,
    )
    .unwrap();
    let lucidrains =
        Checkpoint::from_safetensors(&weights.to_safetensors().unwrap(), &Default::default())
            .unwrap();
    let back =
        Checkpoint::from_safetensors(&lucidrains.to_safetensors().unwrap(), &Default::default())
            .unwrap();
    assert_eq!(back, lucidrains, "{what}: lucidrains");
}

// ---- fairseq cross-attention and the extra key rows (issue 19) -------------------------------

/// `tests/golden-variants/fairseq-cross/` (the official module run in f64): read through the
/// fairseq reader, computed by the f64 reference (`forward_cross` for the encoder-decoder
/// cases, `forward` for self-attention with `add_bias_kv`) and by the layer on both kernel
/// families (through a memory, or `forward`), within the README's 1e-4 of max|output|.
#[test]
fn fairseq_cross_cases_through_the_f64_reference() {
    let dir = case_dir().join("fairseq-cross");
    let mut checked = 0;
    for case in common::variants::CROSS_CASES {
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let mut constructor = json["constructor"].as_object().unwrap().clone();
        constructor.insert("format".into(), "fairseq".into());
        let options = with(&serde_json::Value::Object(constructor).to_string());
        let checkpoint = Checkpoint::from_safetensors(&bytes, &options)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let f32s = |name: &str| -> Option<(Vec<usize>, Vec<f32>)> {
            let view = file.tensor(name).ok()?;
            let data = compositional_attention::io::tensor_to_f32(name, &view).unwrap();
            Some((view.shape().to_vec(), data))
        };
        let (shape, x) = f32s("input").unwrap();
        let (batch, n_q) = (shape[0], shape[1]);
        let mask: Option<Vec<bool>> = file
            .tensor("mask")
            .ok()
            .map(|view| view.data().iter().map(|&m| m != 0).collect());
        let (_, expected) = f32s("output").unwrap();
        let y = match f32s("memory") {
            Some((memory_shape, memory)) => {
                let values = f32s("value_input").map(|(_, v)| v);
                reference::general::forward_cross(
                    &checkpoint,
                    &x,
                    batch,
                    n_q,
                    &memory,
                    values.as_deref(),
                    memory_shape[1],
                    mask.as_deref(),
                )
            }
            None => reference::general::forward(&checkpoint, &x, batch, n_q, mask.as_deref()),
        }
        .unwrap_or_else(|e| panic!("{case}: {e}"));
        let stats = ErrorStats::compare(&expected, &y);
        assert!(
            stats.within(TOLERANCE),
            "{case}: the f64 reference against the original: {stats}"
        );
        // The layer on the GPU, both kernel families: through a memory, or (self-attention
        // with add_bias_kv) through forward.
        let weights = checkpoint.layer_weights().unwrap();
        let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        for ctx in [gpu(), gpu_other_profile()] {
            let mut layer = CompositionalAttention::new(ctx, &weights).unwrap();
            let label = format!("{case} [{:?} kernels]", ctx.kernel_family_request());
            let y = match f32s("memory") {
                Some((memory_shape, memory)) => {
                    let n_kv = memory_shape[1];
                    let memory = match f32s("value_input") {
                        Some((_, values)) => layer
                            .memory_kv_blocking(&memory, &values, batch, n_kv, mask.as_deref())
                            .unwrap(),
                        None => layer
                            .memory_blocking(&memory, batch, n_kv, mask.as_deref())
                            .unwrap(),
                    };
                    layer.forward_cross_blocking(&x, &memory, n_q).unwrap()
                }
                None => layer
                    .forward_blocking(&x, batch, n_q, mask.as_deref())
                    .unwrap(),
            };
            let stats = assert_close(&label, &y, &expected, TOLERANCE);
            eprintln!("{label}: {stats}");
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// The reader's cross-attention arguments: `kdim`/`vdim` from the shapes, the refused
/// `add_bias_kv` with `attn_dim ≠ embed_dim`, and the reference's typed errors for a call of
/// the wrong kind.
#[test]
fn cross_attention_arguments_and_calls_are_checked() {
    let (seed, what) = seed("cross_attention_arguments_and_calls_are_checked");
    // attn_dim 18 ≠ embed_dim 24 with add_bias_kv: the original crashes; refused by name.
    let mut checkpoint = random_checkpoint(form(Format::Fairseq, 24, 3, 3, [8, 6, 8]), true, seed);
    checkpoint.weights.bias_kv = Some((vec![0.5; 24], vec![0.5; 24]));
    let bytes = checkpoint.to_safetensors().unwrap();
    checkpoint.weights.bias_kv = None;
    let json = r#"{"format": "fairseq", "num_heads": 3, "num_rules": 3, "attn_dim": 18, "add_bias_kv": true}"#;
    match Checkpoint::from_safetensors(&bytes, &with(json)) {
        Err(Error::Unsupported { option, .. }) => {
            assert!(option.starts_with("add_bias_kv"), "{what}: {option}")
        }
        other => panic!("{what}: expected Unsupported(add_bias_kv), got {other:?}"),
    }
    // Encoder-decoder attention over a memory 40 wide.
    let cross = Checkpoint {
        form: Form {
            attention: compositional_attention::checkpoint::Attention::EncoderDecoder {
                memory_dim: 40,
            },
            ..checkpoint.form
        },
        weights: compositional_attention::checkpoint::FormWeights {
            bias_kv: None,
            k: common::variants::random_linear(
                &mut compositional_attention::rng::Rng::seed_from_u64(seed),
                24,
                40,
                true,
            ),
            v: common::variants::random_linear(
                &mut compositional_attention::rng::Rng::seed_from_u64(seed ^ 1),
                18,
                40,
                true,
            ),
            ..checkpoint.weights.clone()
        },
    };
    cross.validate().unwrap();
    let read = Checkpoint::from_safetensors(
        &cross.to_safetensors().unwrap(),
        &with(r#"{"format": "fairseq", "num_heads": 3, "num_rules": 3, "attn_dim": 18, "kdim": 40, "vdim": 40, "encoder_decoder_attention": true}"#),
    )
    .unwrap();
    assert_eq!(read, cross, "{what}: kdim and vdim read back");
    let x = vec![0.25f32; 2 * 3 * 24];
    let memory = vec![0.5f32; 2 * 4 * 40];
    assert!(reference::general::forward_cross(&cross, &x, 2, 3, &memory, None, 4, None).is_ok());
    // The wrong call: self-attention of a cross checkpoint, cross of a self one, a separate
    // value input for encoder-decoder attention, a memory of the wrong width.
    assert!(matches!(
        reference::general::forward(&cross, &x, 2, 3, None),
        Err(Error::ConfigMismatch(_))
    ));
    assert!(matches!(
        reference::general::forward_cross(&checkpoint, &x, 2, 3, &x, None, 3, None),
        Err(Error::ConfigMismatch(_))
    ));
    assert!(matches!(
        reference::general::forward_cross(&cross, &x, 2, 3, &memory, Some(&memory), 4, None),
        Err(Error::ConfigMismatch(_))
    ));
    assert!(
        reference::general::forward_cross(&cross, &x, 2, 3, &memory[..2 * 4 * 24], None, 4, None)
            .is_err()
    );
    // Causal does not apply to attention over a memory.
    let causal = with(
        r#"{"format": "fairseq", "num_heads": 3, "num_rules": 3, "attn_dim": 18, "kdim": 40, "vdim": 40, "encoder_decoder_attention": true}"#,
    );
    let causal = CheckpointOptions {
        causal: true,
        ..causal
    };
    assert!(matches!(
        Checkpoint::from_safetensors(&cross.to_safetensors().unwrap(), &causal),
        Err(Error::ConfigMismatch(_))
    ));
}

/// `add_zero_attn`'s row is a key of logit 0 and a value of 0: the same as `add_bias_kv` with
/// zero rows, in self-attention (causal, padded, a fully masked row) and over a memory.
#[test]
fn a_zero_attention_row_is_a_zero_bias_row() {
    let (seed, what) = seed("a_zero_attention_row_is_a_zero_bias_row");
    let base = random_checkpoint(
        Form {
            causal: true,
            ..form(Format::Fairseq, 24, 3, 2, [8, 12, 8])
        },
        true,
        seed,
    );
    let zero = Checkpoint {
        form: Form {
            zero_attention: true,
            ..base.form
        },
        weights: base.weights.clone(),
    };
    let mut bias = base.clone();
    bias.weights.bias_kv = Some((vec![0.0; 24], vec![0.0; 24]));
    let (batch, seq) = (2, 5);
    let x = normal(&mut Rng::seed_from_u64(seed), batch * seq * 24, 1.0);
    let mask: Vec<bool> = (0..batch * seq)
        .map(|i| i / seq == 0 && i % 2 == 0)
        .collect();
    let y_zero = reference::general::forward(&zero, &x, batch, seq, Some(&mask)).unwrap();
    let y_bias = reference::general::forward(&bias, &x, batch, seq, Some(&mask)).unwrap();
    let y_base = reference::general::forward(&base, &x, batch, seq, Some(&mask)).unwrap();
    assert_eq!(y_zero, y_bias, "{what}: self-attention");
    assert_ne!(y_zero, y_base, "{what}: the row changes the output");
    let memory_form = |c: &Checkpoint| Checkpoint {
        form: Form {
            causal: false,
            attention: compositional_attention::checkpoint::Attention::General {
                key_dim: 24,
                value_dim: 24,
            },
            ..c.form
        },
        weights: c.weights.clone(),
    };
    let memory = normal(&mut Rng::seed_from_u64(seed ^ 3), batch * 7 * 24, 1.0);
    let cross = |c: &Checkpoint| {
        reference::general::forward_cross(&memory_form(c), &x, batch, seq, &memory, None, 7, None)
            .unwrap()
    };
    assert_eq!(cross(&zero), cross(&bias), "{what}: over a memory");
}
