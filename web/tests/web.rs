//! The layer in a real browser: WebGPU through wgpu's `BROWSER_WEBGPU` backend, checked against
//! the `f64` CPU reference compiled to wasm as well.
//!
//! Run by `web/test.sh` with `wasm-bindgen-test-runner` in headless Chromium (WebGPU on
//! SwiftShader there). Covers the PyTorch reference cases of `tests/golden/` (embedded at
//! compile time) and random problems with the edge cases that matter (odd sizes, causal, a padding
//! mask with a fully masked row, `s = r = 1`, a batch, `n = 1`), on every strategy in
//! `Strategy::ALL`, at tolerance 1e-4. Inputs come from a fresh seed each run, printed on failure;
//! `COMPATTN_SEED=N bash web/test.sh` fixes it (read at compile time: the browser has no env).

#![cfg(all(target_arch = "wasm32", feature = "page"))]

use std::cell::RefCell;

use compattn_web::{RunOptions, SAMPLED_ROWS, TOLERANCE, browser_options, check_size, run_on};
use compositional_attention::io::{Input, read_output};
use compositional_attention::testing::{self, ErrorStats};
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, GpuOptions, LimitsPolicy, Precision,
    Strategy, TuneMode, Weights, reference,
};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! case {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../tests/golden/", $name, ".safetensors")).as_slice(),
            include_str!(concat!("../../tests/golden/", $name, ".json")),
        )
    };
}

/// The PyTorch reference cases: name, safetensors bytes, JSON sidecar.
const GOLDEN: [(&str, &[u8], &str); 7] = [
    case!("causal"),
    case!("fully_masked_row"),
    case!("odd_sizes"),
    case!("padding_mask"),
    case!("prenorm"),
    case!("r1_s1"),
    case!("tiny"),
];

thread_local! {
    static GPU: RefCell<Option<GpuContext>> = const { RefCell::new(None) };
}

/// One device for the whole test module, opened with WebGPU's default limits: what every
/// browser grants without asking, so passing here means the kernels fit everywhere.
async fn gpu() -> GpuContext {
    if let Some(ctx) = GPU.with(|g| g.borrow().clone()) {
        return ctx;
    }
    let ctx = GpuContext::new(&browser_options(LimitsPolicy::WebGpuDefaults))
        .await
        .unwrap_or_else(|e| panic!("no WebGPU device in this browser: {e}"));
    console_log!("testing on {}", compattn_web::describe(&ctx).await);
    GPU.with(|g| *g.borrow_mut() = Some(ctx.clone()));
    ctx
}

/// `COMPATTN_SEED` at compile time, else fresh from the clock.
fn seed() -> u64 {
    option_env!("COMPATTN_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| js_sys::Date::now() as u64)
}

/// Compares with the reference; logs the result and records a failure rather than stopping, so
/// one run shows every case that fails.
fn check(failures: &mut Vec<String>, what: &str, actual: &[f32], expected: &[f64]) {
    let stats = ErrorStats::compare(actual, expected);
    if stats.within(TOLERANCE) {
        console_log!("{what}: {stats}");
    } else {
        console_log!("FAILED {what}: {stats}");
        failures.push(format!("{what}: {stats} exceeds tolerance {TOLERANCE}"));
    }
}

#[track_caller]
fn assert_none_failed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[wasm_bindgen_test]
async fn golden_cases_on_every_strategy() {
    let gpu = gpu().await;
    let mut failures = Vec::new();
    for (name, bytes, sidecar) in GOLDEN {
        let causal = sidecar.contains("\"causal\": true");
        assert_eq!(
            causal,
            name == "causal",
            "{name}: the sidecar's causal flag changed"
        );
        let weights = Weights::from_safetensors(bytes, causal, "").unwrap();
        every_strategy(&gpu, name, &weights, bytes, &mut failures).await;
    }
    assert_none_failed(&failures);
}

/// The case file's `input` through a layer of `weights` on every strategy, against its `output`.
async fn every_strategy(
    gpu: &GpuContext,
    name: &str,
    weights: &Weights,
    bytes: &[u8],
    failures: &mut Vec<String>,
) {
    let input = Input::from_safetensors(bytes).unwrap();
    let (shape, expected) = read_output(bytes).unwrap().expect("case has `output`");
    assert_eq!(shape, [input.batch, input.seq, input.dim]);
    let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
    for strategy in Strategy::ALL {
        let mut layer = CompositionalAttention::new(gpu, weights).unwrap();
        layer.set_strategy(strategy);
        let what = format!("{name} ({strategy})");
        match layer.forward_input(&input).await {
            Ok(y) => check(failures, &what, &y, &expected),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
}

/// One checkpoint of each other implementation (tests/golden-variants/: Keras with prenorm,
/// fairseq's score network with padding, xformers' shared projection) through the crate's
/// readers and the layer in the browser, against the original module's f64 output.
#[wasm_bindgen_test]
async fn variant_checkpoints_of_every_format() {
    use compositional_attention::checkpoint::{Checkpoint, CheckpointOptions, Constructor};
    let gpu = gpu().await;
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "keras/k02_prenorm",
            include_bytes!("../../tests/golden-variants/keras/k02_prenorm.safetensors"),
            r#"{"format": "keras", "dim": 24, "dim_head": 6, "num_searches": 3, "num_retrievals": 4, "prenorm": true}"#,
        ),
        (
            "fairseq/f02_score_net_padding",
            include_bytes!("../../tests/golden-variants/fairseq/f02_score_net_padding.safetensors"),
            r#"{"format": "fairseq", "embed_dim": 24, "num_heads": 3, "num_rules": 3, "selection_dim": 5, "attn_dim": 18}"#,
        ),
        (
            "xformers/x01_defaults_shared_proj",
            include_bytes!(
                "../../tests/golden-variants/xformers/x01_defaults_shared_proj.safetensors"
            ),
            r#"{"format": "xformers", "dim_model": 32, "num_heads": 4}"#,
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, constructor) in cases {
        let options = CheckpointOptions {
            constructor: Some(Constructor::parse(constructor).unwrap()),
            ..Default::default()
        };
        let weights = Checkpoint::from_safetensors(bytes, &options)
            .and_then(|c| c.layer_weights())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        every_strategy(&gpu, name, &weights, bytes, &mut failures).await;
    }
    assert_none_failed(&failures);
}

/// Generation in the browser: the causal reference case, a prefill of the first tokens and then
/// one decode step per token over the GPU-resident KV cache, against PyTorch's output (no row of
/// the case has every causal key masked, so the prefix and full-sequence definitions agree).
#[wasm_bindgen_test]
async fn golden_causal_case_prefill_then_decode() {
    let gpu = gpu().await;
    let (name, bytes, _) = GOLDEN[0];
    assert_eq!(name, "causal");
    let weights = Weights::from_safetensors(bytes, true, "").unwrap();
    let input = Input::from_safetensors(bytes).unwrap();
    let (_, expected) = read_output(bytes).unwrap().expect("case has `output`");
    let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
    let (batch, seq, dim) = (input.batch, input.seq, input.dim);
    let rows = |t0: usize, t1: usize| -> Vec<f32> {
        (0..batch)
            .flat_map(|b| input.x[(b * seq + t0) * dim..(b * seq + t1) * dim].to_vec())
            .collect()
    };
    let mut layer = CompositionalAttention::new(&gpu, &weights).unwrap();
    let mut cache = layer.kv_cache(batch, seq).unwrap();
    let prompt = 5;
    let mut generated = vec![f32::NAN; batch * seq * dim];
    let y = layer
        .prefill(&mut cache, &rows(0, prompt), prompt, None)
        .await
        .unwrap();
    for b in 0..batch {
        generated[b * seq * dim..][..prompt * dim]
            .copy_from_slice(&y[b * prompt * dim..][..prompt * dim]);
    }
    for t in prompt..seq {
        let y = layer
            .decode(&mut cache, &rows(t, t + 1), None)
            .await
            .unwrap();
        for b in 0..batch {
            generated[(b * seq + t) * dim..][..dim].copy_from_slice(&y[b * dim..][..dim]);
        }
    }
    assert_eq!(cache.len(), seq);
    let mut failures = Vec::new();
    check(
        &mut failures,
        "causal, prefill then decode",
        &generated,
        &expected,
    );
    assert_none_failed(&failures);
}

/// The CPU reference compiled to wasm reproduces PyTorch's output too.
#[wasm_bindgen_test]
fn reference_matches_pytorch_in_wasm() {
    for (name, bytes, sidecar) in GOLDEN {
        let causal = sidecar.contains("\"causal\": true");
        let weights = Weights::from_safetensors(bytes, causal, "").unwrap();
        let input = Input::from_safetensors(bytes).unwrap();
        let (_, expected) = read_output(bytes).unwrap().unwrap();
        let y = reference::forward(
            &weights,
            &input.x,
            input.batch,
            input.seq,
            input.mask.as_deref(),
        )
        .unwrap();
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let stats = ErrorStats::compare(&y32, &expected);
        assert!(stats.within(1e-6), "{name}: {stats}");
    }
}

/// `(what, config, batch, seq, key lengths per batch row)`.
fn random_cases() -> Vec<(&'static str, Config, usize, usize, Option<Vec<usize>>)> {
    vec![
        (
            "odd sizes",
            Config::new(37)
                .dim_head(7)
                .num_searches(3)
                .num_retrievals(2),
            2,
            13,
            None,
        ),
        (
            "causal",
            Config::new(32)
                .dim_head(8)
                .num_searches(2)
                .num_retrievals(3)
                .causal(true),
            2,
            21,
            None,
        ),
        (
            "padding mask with a fully masked row",
            Config::new(24)
                .dim_head(6)
                .num_searches(2)
                .num_retrievals(2),
            3,
            9,
            Some(vec![9, 4, 0]),
        ),
        (
            "causal, masked, prenorm",
            Config::new(20)
                .dim_head(5)
                .num_searches(3)
                .num_retrievals(2)
                .causal(true)
                .prenorm(true),
            2,
            11,
            Some(vec![7, 11]),
        ),
        (
            "s = 1, r = 1",
            Config::new(16)
                .dim_head(16)
                .num_searches(1)
                .num_retrievals(1),
            1,
            5,
            None,
        ),
        (
            "batch > 1, prenorm",
            Config::new(40)
                .dim_head(10)
                .num_searches(4)
                .num_retrievals(3)
                .prenorm(true),
            5,
            6,
            None,
        ),
        (
            "one token",
            Config::new(12)
                .dim_head(4)
                .num_searches(2)
                .num_retrievals(2),
            3,
            1,
            None,
        ),
        (
            "several key tiles, causal",
            Config::new(32)
                .dim_head(8)
                .num_searches(2)
                .num_retrievals(2)
                .causal(true),
            1,
            40,
            None,
        ),
        (
            "several key tiles",
            Config::new(64)
                .dim_head(16)
                .num_searches(2)
                .num_retrievals(2),
            1,
            70,
            Some(vec![67]),
        ),
    ]
}

#[wasm_bindgen_test]
async fn random_problems_on_every_strategy() {
    let gpu = gpu().await;
    let seed = seed();
    let mut failures = Vec::new();
    for (i, (what, config, batch, seq, lengths)) in random_cases().into_iter().enumerate() {
        let case_seed = seed.wrapping_add(i as u64);
        let (weights, input) =
            testing::random_problem(config, batch, seq, lengths.as_deref(), 1.0, case_seed)
                .unwrap();
        let expected =
            reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref()).unwrap();
        for strategy in Strategy::ALL {
            let mut layer = CompositionalAttention::new(&gpu, &weights).unwrap();
            layer.set_strategy(strategy);
            let label = format!("{what} ({strategy}; COMPATTN_SEED={seed})");
            let y = match layer.forward_input(&input).await {
                Ok(y) => y,
                Err(e) => {
                    failures.push(format!("{label}: {e}"));
                    continue;
                }
            };
            check(&mut failures, &label, &y, &expected);
            // A second call reuses the workspace and must give the same answer.
            match layer.forward_input(&input).await {
                Ok(again) if again == y => {}
                Ok(_) => failures.push(format!("{label}: the second forward differs")),
                Err(e) => failures.push(format!("{label}: second forward: {e}")),
            }
        }
    }
    assert_none_failed(&failures);
}

/// The page's path: `GpuOptions::default()` (all backends, adapter limits) and the entry
/// crate's `run_on`, which the demo page calls through `Session.run`.
#[wasm_bindgen_test]
async fn page_path_with_adapter_limits() {
    let ctx = GpuContext::new(&GpuOptions {
        tune: TuneMode::Off,
        ..GpuOptions::default()
    })
    .await
    .expect("GpuOptions::default() opens the browser's adapter");
    assert_eq!(ctx.info().backend, wgpu::Backend::BrowserWebGpu);
    for strategy in Strategy::ALL {
        let options = RunOptions {
            config: Config::new(48)
                .dim_head(12)
                .num_searches(3)
                .num_retrievals(2)
                .causal(true),
            batch: 2,
            seq: 17,
            strategy,
            seed: seed(),
            mask_lengths: Some(vec![17, 5]),
            repeats: 2,
        };
        let report = run_on(&ctx, &options).await.unwrap();
        assert!(
            report.within,
            "{strategy}: {} (seed {})",
            report.stats, options.seed
        );
        assert!(report.forward_ms.is_some_and(|ms| ms >= 0.0));
        console_log!(
            "page path ({strategy}) on {}: first {:.1} ms, forward {:.2} ms, {}",
            report.adapter,
            report.first_ms,
            report.forward_ms.unwrap_or(f64::NAN),
            report.stats
        );
    }
}

/// Bad input is an error, not a panic, in the browser too.
#[wasm_bindgen_test]
async fn errors_are_returned() {
    let gpu = gpu().await;
    let weights = Weights::random(Config::new(8).dim_head(4).num_searches(2), 3).unwrap();
    let mut layer = CompositionalAttention::new(&gpu, &weights).unwrap();
    let err = layer.forward(&[0.0; 7], 1, 1, None).await.unwrap_err();
    assert!(err.to_string().contains("input"), "{err}");
    let err = layer.forward(&[f32::NAN; 8], 1, 1, None).await.unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    // An oversized problem is refused before anything is allocated: the unfused strategy's
    // 2·8192² logits (512 MiB) exceed WebGPU's 128 MiB binding limit.
    let mut big = CompositionalAttention::new(&gpu, &weights).unwrap();
    big.set_strategy(Strategy::Unfused);
    let err = big.prepare(1, 8192).await.unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
}

/// f16 storage in the browser: a typed error naming `shader-f16` where the browser's adapter
/// lacks it (SwiftShader), else a forward within 1e-2 of the f64 reference.
#[wasm_bindgen_test]
async fn f16_storage_or_a_typed_error() {
    let gpu = gpu().await;
    let config = Config::new(24).dim_head(8).num_searches(3).causal(true);
    let weights = Weights::random(config, seed()).unwrap();
    match CompositionalAttention::with_precision(&gpu, &weights, Precision::F16) {
        Err(err) => {
            assert!(!gpu.supports_f16(), "{err}");
            assert!(
                matches!(
                    err,
                    Error::MissingFeature {
                        feature: "shader-f16",
                        ..
                    }
                ),
                "{err}"
            );
        }
        Ok(mut layer) => {
            let x: Vec<f32> = (0..2 * 9 * 24).map(|i| (i as f32 * 0.37).sin()).collect();
            let y = layer.forward(&x, 2, 9, None).await.unwrap();
            let expected = reference::forward(&weights, &x, 2, 9, None).unwrap();
            let stats = ErrorStats::compare(&y, &expected);
            assert!(stats.within(1e-2), "f16 forward: {stats}");
        }
    }
}

/// A long sequence through the page's path: the reference checks sampled rows only.
#[wasm_bindgen_test]
async fn long_sequence_with_sampled_rows() {
    let gpu = gpu().await;
    let mut failures = Vec::new();
    for strategy in Strategy::ALL {
        let options = RunOptions {
            config: Config::new(32)
                .dim_head(8)
                .num_searches(4)
                .num_retrievals(2),
            batch: 1,
            seq: 1100,
            strategy,
            seed: seed(),
            mask_lengths: Some(vec![1000]),
            repeats: 0,
        };
        match run_on(&gpu, &options).await {
            Ok(report) => {
                assert_eq!(report.checked_rows, SAMPLED_ROWS);
                let what = format!(
                    "seq 1100, {SAMPLED_ROWS} rows ({strategy}; seed {})",
                    options.seed
                );
                if report.within {
                    console_log!("{what}: {}", report.stats);
                } else {
                    failures.push(format!("{what}: {}", report.stats));
                }
            }
            Err(e) => failures.push(format!("{strategy}: {e}")),
        }
    }
    assert_none_failed(&failures);
}

/// Sizes past 32 bits are refused by the page's path before anything is allocated (on wasm32
/// the crate's `usize` size arithmetic would wrap).
#[wasm_bindgen_test]
fn sizes_past_32_bits_are_refused() {
    let mut options = RunOptions {
        config: Config::new(8).dim_head(4).num_searches(2),
        batch: 64,
        seq: 8192,
        strategy: Strategy::Unfused,
        ..RunOptions::default()
    };
    let err = check_size(&options).unwrap_err();
    assert!(err.contains("2³²"), "{err}");
    options.strategy = Strategy::Fused;
    assert!(check_size(&options).is_ok());
}

/// Training in the browser: the GPU backward of a PyTorch autograd case (`tests/golden-grad/`)
/// within 2e-4 of each gradient's max|grad|, as natively (tests/training.rs).
#[wasm_bindgen_test]
async fn training_matches_pytorch_autograd() {
    let bytes = include_bytes!("../../tests/golden-grad/g01_tiny.safetensors");
    let ctx = gpu().await;
    let weights = Weights::from_safetensors(bytes, false, "").unwrap();
    let Input {
        batch,
        seq,
        x,
        mask,
        ..
    } = Input::from_safetensors(bytes).unwrap();
    let tensor = |name: &str| -> Vec<f64> {
        compositional_attention::io::read_tensor(bytes, name)
            .unwrap()
            .unwrap()
            .1
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
    let mut grads = layer.gradients().unwrap();
    let (y, act) = layer
        .forward_train(&x, batch, seq, mask.as_deref(), 3)
        .await
        .unwrap();
    let dy: Vec<f32> = tensor(compositional_attention::io::GRAD_OUTPUT)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let dx = layer.backward(&act, &dy, &mut grads).await.unwrap();
    let mut failures = Vec::new();
    let mut compare = |what: &str, actual: &[f32], expected: &[f64]| {
        let stats = ErrorStats::compare(actual, expected);
        console_log!("g01_tiny {what}: {stats}");
        if !stats.within(2e-4) {
            failures.push(format!("g01_tiny {what}: {stats} exceeds 2e-4"));
        }
    };
    compare("output", &y, &tensor(compositional_attention::io::OUTPUT));
    compare(
        "grad_input",
        &dx,
        &tensor(compositional_attention::io::GRAD_INPUT),
    );
    let g = grads.to_weights().await.unwrap();
    for p in g.parameters() {
        let name = format!("{}{}", compositional_attention::io::GRAD_PREFIX, p.name);
        compare(p.name, p.data, &tensor(&name));
    }
    assert_none_failed(&failures);
}

// ---- The JavaScript API (`CompositionalAttention`, `KvCache`, `readCase`) ----------------------

mod js_api {
    use super::*;
    use compattn_web::{
        ApiError, CallOptions, JsCompositionalAttention, JsMapsOptions, LoadOptions, RandomOptions,
        read_case,
    };
    use js_sys::{Float32Array, Object, Reflect, Uint8Array};
    use wasm_bindgen::{JsCast, JsValue};

    /// `(code, message)` of a thrown value, checked to be a `CompattnError`: an `Error` whose
    /// `name` is `"CompattnError"` and whose `code` is a string.
    fn thrown(value: JsValue) -> (String, String) {
        let error = value
            .dyn_into::<js_sys::Error>()
            .unwrap_or_else(|v| panic!("not an Error: {v:?}"));
        assert_eq!(String::from(error.name()), "CompattnError");
        let code = Reflect::get(&error, &"code".into())
            .unwrap()
            .as_string()
            .expect("a string code");
        (code, String::from(error.message()))
    }

    /// The code of a failed call, as JavaScript sees it.
    fn code(e: ApiError) -> String {
        thrown(JsValue::from(e)).0
    }

    /// The message of a failed call, as JavaScript sees it.
    fn message(e: ApiError) -> String {
        thrown(JsValue::from(e)).1
    }

    fn object(fields: &[(&str, JsValue)]) -> Object {
        let o = Object::new();
        for (k, v) in fields {
            Reflect::set(&o, &(*k).into(), v).unwrap();
        }
        o
    }

    fn field(o: &JsValue, key: &str) -> JsValue {
        Reflect::get(o, &key.into()).unwrap()
    }

    async fn load(bytes: &[u8], fields: &[(&str, JsValue)]) -> JsCompositionalAttention {
        let mut fields = fields.to_vec();
        fields.push(("limits", "webgpu".into()));
        let options: LoadOptions = JsValue::from(object(&fields)).unchecked_into();
        JsCompositionalAttention::load(Uint8Array::from(bytes).into(), Some(options))
            .await
            .unwrap_or_else(|e| panic!("load: {}", message(e)))
    }

    async fn random(fields: &[(&str, JsValue)]) -> JsCompositionalAttention {
        let mut fields = fields.to_vec();
        fields.push(("limits", "webgpu".into()));
        let options: RandomOptions = JsValue::from(object(&fields)).unchecked_into();
        JsCompositionalAttention::random(Some(options))
            .await
            .unwrap_or_else(|e| panic!("random: {}", message(e)))
    }

    /// `readCase` of a file: x, batch, seq, mask bytes, output.
    fn case_of(bytes: &[u8]) -> (Vec<f32>, f64, f64, Option<Vec<u8>>, Option<Vec<f32>>) {
        let case = read_case(bytes.to_vec()).unwrap_or_else(|e| panic!("{}", message(e)));
        let array = |key: &str| {
            let v = field(&case, key);
            (!v.is_null()).then_some(v)
        };
        let x = array("input").map_or_else(Vec::new, |v| Float32Array::from(v).to_vec());
        let mask = array("mask").map(|v| Uint8Array::from(v).to_vec());
        let output = array("output").map(|v| Float32Array::from(v).to_vec());
        let batch = field(&case, "batch").as_f64().unwrap_or(0.0);
        let seq = field(&case, "seq").as_f64().unwrap_or(0.0);
        (x, batch, seq, mask, output)
    }

    /// Training through the JavaScript API: a student learns a teacher (`forwardTrain`,
    /// `backward`, `gradients`, `AdamW`) and the loss falls at least 5×; a dropout seed is a
    /// number or a BigInt, anything else an Error.
    #[wasm_bindgen_test]
    async fn a_student_learns_a_teacher_through_the_js_api() {
        use compattn_web::JsAdamW;
        let sizes = |seed: f64| {
            vec![
                ("dim", JsValue::from(16.0)),
                ("dimHead", 4.0.into()),
                ("searches", 2.0.into()),
                ("retrievals", 2.0.into()),
                ("seed", seed.into()),
            ]
        };
        let teacher = random(&sizes(3.0)).await;
        let student = random(&sizes(4.0)).await;
        let grads = student
            .gradients()
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let opt = JsAdamW::new(&student, 1e-2, None).unwrap_or_else(|e| panic!("{}", message(e)));
        let (batch, seq, dim) = (4usize, 8usize, 16usize);
        let seed = super::seed();
        let mut rng = compositional_attention::rng::Rng::seed_from_u64(seed);
        let mut losses = Vec::new();
        // 100 steps: at 60, 2 of 12 input seeds fell below the 5× bound (3.9× and 4.5×, the
        // same fit run natively); at 100 the same 12 fell 8.9× to 19×.
        for step in 0..100u32 {
            let x = testing::normal(&mut rng, batch * seq * dim, 1.0);
            let target = teacher
                .forward_vec(x.clone(), batch as f64, seq as f64, None)
                .await
                .unwrap_or_else(|e| panic!("{}", message(e)));
            let (y, act) = student
                .forward_train_vec(
                    x,
                    batch as f64,
                    seq as f64,
                    None,
                    &JsValue::from(step),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("{}", message(e)));
            let n = y.len() as f32;
            let loss: f32 = y
                .iter()
                .zip(&target)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / n;
            let dy: Vec<f32> = y
                .iter()
                .zip(&target)
                .map(|(a, b)| 2.0 * (a - b) / n)
                .collect();
            grads.zero().unwrap_or_else(|e| panic!("{}", message(e)));
            student
                .backward_vec(act.inner(), dy, &grads, None)
                .await
                .unwrap_or_else(|e| panic!("{}", message(e)));
            opt.step_async(&student, &grads, None)
                .await
                .unwrap_or_else(|e| panic!("{}", message(e)));
            losses.push(loss);
        }
        let first = losses[..5].iter().sum::<f32>() / 5.0;
        let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
        console_log!(
            "js training: loss {first:.4e} -> {last:.4e} ({:.1}x)",
            first / last
        );
        assert!(
            first / last >= 5.0,
            "the loss fell only {:.2}x (seed {seed}: COMPATTN_SEED={seed} bash web/test.sh)",
            first / last
        );
        let x = vec![0.5f32; seq * dim];
        let big = JsValue::from(js_sys::BigInt::from(u64::MAX));
        assert!(
            student
                .forward_train_vec(x.clone(), 1.0, seq as f64, None, &big, None)
                .await
                .is_ok()
        );
        for bad in [JsValue::from(-1.0), JsValue::from(0.5), JsValue::from("7")] {
            let e = student
                .forward_train_vec(x.clone(), 1.0, seq as f64, None, &bad, None)
                .await
                .err()
                .map(message)
                .unwrap_or_default();
            assert!(e.contains("dropoutSeed"), "{bad:?}: {e}");
        }
    }

    /// `load` of every format the crate reads (lucidrains, Keras safetensors and .weights.h5,
    /// fairseq with its constructor as an object, xformers with it as JSON text), the forward of
    /// the file's input against the file's output.
    #[wasm_bindgen_test]
    async fn load_every_format_and_match_the_output() {
        let keras_h5 = include_bytes!("../../tests/golden-variants/keras/k02_prenorm.weights.h5");
        let keras = include_bytes!("../../tests/golden-variants/keras/k02_prenorm.safetensors");
        let fairseq =
            include_bytes!("../../tests/golden-variants/fairseq/f02_score_net_padding.safetensors");
        let xformers = include_bytes!(
            "../../tests/golden-variants/xformers/x01_defaults_shared_proj.safetensors"
        );
        let fairseq_config = js_sys::JSON::parse(
            r#"{"embed_dim": 24, "num_heads": 3, "num_rules": 3, "selection_dim": 5, "attn_dim": 18}"#,
        )
        .unwrap();
        let cases: Vec<(&str, &[u8], &[u8], Vec<(&str, JsValue)>, &str)> = vec![
            ("tiny", GOLDEN[6].1, GOLDEN[6].1, vec![], "lucidrains"),
            (
                "causal",
                GOLDEN[0].1,
                GOLDEN[0].1,
                vec![("causal", true.into())],
                "lucidrains",
            ),
            (
                "padding_mask",
                GOLDEN[3].1,
                GOLDEN[3].1,
                vec![],
                "lucidrains",
            ),
            ("keras safetensors", keras, keras, vec![], "keras"),
            // The .weights.h5 holds the same weights; its case tensors are in the safetensors.
            ("keras .weights.h5", keras_h5, keras, vec![], "keras"),
            (
                "fairseq",
                fairseq,
                fairseq,
                vec![("config", fairseq_config), ("format", "fairseq".into())],
                "fairseq",
            ),
            (
                "xformers",
                xformers,
                xformers,
                vec![(
                    "config",
                    r#"{"format": "xformers", "dim_model": 32, "num_heads": 4}"#.into(),
                )],
                "xformers",
            ),
        ];
        let mut failures = Vec::new();
        for (name, weights, case, options, format) in cases {
            let layer = load(weights, &options).await;
            let info = layer.info();
            assert_eq!(field(&info, "format").as_string().as_deref(), Some(format));
            assert_eq!(field(&info, "dim").as_f64(), Some(layer.dim() as f64));
            let (x, batch, seq, mask, output) = case_of(case);
            let expected: Vec<f64> = output.unwrap().iter().map(|&v| v as f64).collect();
            match layer.forward_vec(x, batch, seq, mask).await {
                Ok(y) => check(
                    &mut failures,
                    &format!("load + forward: {name}"),
                    &y,
                    &expected,
                ),
                Err(e) => failures.push(format!("{name}: {}", message(e))),
            }
        }
        assert_none_failed(&failures);
    }

    macro_rules! cross_case {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(
                    "../../tests/golden-variants/fairseq-cross/",
                    $name,
                    ".safetensors"
                ))
                .as_slice(),
                include_str!(concat!(
                    "../../tests/golden-variants/fairseq-cross/",
                    $name,
                    ".json"
                )),
            )
        };
    }

    /// The fairseq cross-attention cases (`tests/golden-variants/fairseq-cross/`, the official
    /// module in f64): name, safetensors bytes, JSON sidecar (its `constructor`).
    const CROSS: [(&str, &[u8], &str); 3] = [
        cross_case!("c01_encdec_same_width"),
        cross_case!("c02_encdec_kdim_vdim"),
        cross_case!("c07_self_add_bias_kv"),
    ];

    /// `load` of a fairseq-cross case with its sidecar's constructor as the `config` object.
    async fn load_cross(bytes: &[u8], sidecar: &str) -> JsCompositionalAttention {
        let sidecar = js_sys::JSON::parse(sidecar).unwrap();
        let constructor = field(&sidecar, "constructor");
        Reflect::set(&constructor, &"format".into(), &"fairseq".into()).unwrap();
        load(bytes, &[("config", constructor)]).await
    }

    /// Query row `t` of every sequence of `v [batch, seq, dim]`: `[batch, 1, dim]`.
    fn row<T: Copy>(v: &[T], [batch, seq, dim]: [usize; 3], t: usize) -> Vec<T> {
        (0..batch)
            .flat_map(|b| v[(b * seq + t) * dim..(b * seq + t + 1) * dim].to_vec())
            .collect()
    }

    /// Cross-attention through the JavaScript API against the official fairseq module:
    /// encoder-decoder attention over a padded memory as wide as the queries (c01) and over an
    /// encoder output 40 wide for queries 24 wide (c02): `readCase`'s memory and mask,
    /// `layer.memory`, `forwardCross` of every query row, then of one row at a time over the
    /// same memory (a decode step); self-attention with `add_bias_kv` through `forward` with the
    /// file's mask (c07). The config reports the key and value widths and the extra key rows;
    /// the memory its sizes and GPU bytes. Tolerance 1e-4 of max|output|.
    #[wasm_bindgen_test]
    async fn cross_attention_matches_fairseq() {
        use compattn_web::JsMemory;
        use wasm_bindgen::convert::TryFromJsValue;
        use wasm_bindgen_futures::JsFuture;
        let mut failures = Vec::new();
        for (name, bytes, sidecar) in CROSS {
            let layer = load_cross(bytes, sidecar).await;
            let config = layer.config();
            let number = |o: &JsValue, key: &str| field(o, key).as_f64();
            let case =
                read_case(bytes.to_vec()).unwrap_or_else(|e| panic!("{name}: {}", message(e)));
            let floats = |key: &str| {
                let v = field(&case, key);
                (!v.is_null()).then(|| Float32Array::from(v).to_vec())
            };
            let mask = Some(field(&case, "mask"))
                .filter(|v| !v.is_null())
                .map(|v| Uint8Array::from(v).to_vec());
            let x = floats("input").unwrap();
            let expected: Vec<f64> = floats("output")
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let (batch, seq) = (
                number(&case, "batch").unwrap(),
                number(&case, "seq").unwrap(),
            );
            assert!(floats("valueInput").is_none(), "{name}: one memory input");
            let Some(memory) = floats("memory") else {
                // Self-attention with add_bias_kv: forward, its mask on the input's keys.
                assert!(field(&config, "keyDim").is_null(), "{name}");
                assert!(field(&config, "valueDim").is_null(), "{name}");
                assert_eq!(field(&config, "encoderDecoder"), false, "{name}");
                assert_eq!(number(&config, "extraKeyRows"), Some(1.0), "{name}");
                assert!(mask.is_some(), "{name}: the file's key padding");
                match layer.forward_vec(x, batch, seq, mask).await {
                    Ok(y) => check(&mut failures, &format!("forward: {name}"), &y, &expected),
                    Err(e) => failures.push(format!("{name}: forward: {}", message(e))),
                }
                continue;
            };
            let memory_seq = number(&case, "memorySeq").unwrap();
            let kdim = memory.len() as f64 / (batch * memory_seq);
            assert_eq!(number(&config, "keyDim"), Some(kdim), "{name}");
            assert_eq!(number(&config, "valueDim"), Some(kdim), "{name}");
            assert_eq!(number(&config, "extraKeyRows"), Some(0.0), "{name}");
            assert_eq!(field(&config, "encoderDecoder"), true, "{name}");
            assert_eq!(
                number(&layer.info(), "keyDim"),
                Some(kdim),
                "{name}: info() has the config's fields"
            );
            if let Some(mask) = &mask {
                assert_eq!(
                    mask.len() as f64,
                    batch * memory_seq,
                    "{name}: the memory's mask"
                );
            }
            let made = JsFuture::from(layer.memory(memory, batch, memory_seq, mask, None)).await;
            let memory = match made {
                Ok(m) => JsMemory::try_from_js_value(m).expect("a Memory"),
                Err(e) => {
                    failures.push(format!("{name}: memory: {}", thrown(e).1));
                    continue;
                }
            };
            assert_eq!(
                (
                    memory.batch() as f64,
                    memory.len() as f64,
                    memory.extra_rows()
                ),
                (batch, memory_seq, 0),
                "{name}"
            );
            let projected = memory.gpu_bytes();
            assert!(projected > 0.0, "{name}");
            match JsFuture::from(layer.forward_cross(x.clone(), &memory, seq, None)).await {
                Ok(y) => check(
                    &mut failures,
                    &format!("memory + forwardCross: {name}"),
                    &Float32Array::from(y).to_vec(),
                    &expected,
                ),
                Err(e) => failures.push(format!("{name}: forwardCross: {}", thrown(e).1)),
            }
            assert!(
                memory.gpu_bytes() > projected,
                "{name}: the query shape's workspace counts in gpuBytes"
            );
            // One query row at a time over the same memory: the rows of the whole.
            let shape = [batch as usize, seq as usize, layer.dim()];
            for t in [0, shape[1] - 1] {
                match layer
                    .forward_cross_vec(row(&x, shape, t), &memory, 1.0)
                    .await
                {
                    Ok(y) => check(
                        &mut failures,
                        &format!("forwardCross, seq 1, row {t}: {name}"),
                        &y,
                        &row(&expected, shape, t),
                    ),
                    Err(e) => failures.push(format!("{name} row {t}: {}", message(e))),
                }
            }
        }
        assert_none_failed(&failures);
    }

    /// Cross-attention's typed errors, `CompattnError`s in the JavaScript API's terms:
    /// `forwardCross` and `memory` on a self-attention layer, another layer's memory, `forward`
    /// on a layer whose memory is wider than its queries (`INVALID_ARGUMENT`); inputs of the
    /// wrong length (`SHAPE`); an aborted `forwardCross` (`ABORTED`).
    #[wasm_bindgen_test]
    async fn cross_attention_errors_are_typed() {
        use wasm_bindgen_futures::JsFuture;
        let (c01, c02, c07) = (CROSS[0], CROSS[1], CROSS[2]);
        let cross = load_cross(c01.1, c01.2).await;
        let own_keys = load_cross(c07.1, c07.2).await;
        let plain = random(&[("dim", 32.into()), ("dimHead", 8.into())]).await;
        let (batch, seq, memory_seq, dim) = (2usize, 3usize, 4usize, 32usize);
        let memory = cross
            .memory_vec(
                vec![0.25; batch * memory_seq * dim],
                batch as f64,
                memory_seq as f64,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("memory: {}", message(e)));
        let x = vec![0.5f32; batch * seq * dim];
        let rejected = |promise: js_sys::Promise| async move {
            thrown(JsFuture::from(promise).await.expect_err("a rejection"))
        };
        // forwardCross on self-attention layers (plain, and with add_bias_kv).
        for layer in [&plain, &own_keys] {
            let x = vec![0.5f32; batch * seq * layer.dim()];
            let (c, e) = rejected(layer.forward_cross(x, &memory, seq as f64, None)).await;
            assert_eq!(c, "INVALID_ARGUMENT", "{e}");
            assert!(e.contains("forwardCross: a self-attention layer"), "{e}");
        }
        let (c, e) = rejected(plain.memory(vec![0.0; 8], 1.0, 1.0, None, None)).await;
        assert!(c == "INVALID_ARGUMENT" && e.contains("memory:"), "{c}: {e}");
        let (c, e) =
            rejected(plain.memory_kv(vec![0.0; 8], vec![0.0; 8], 1.0, 1.0, None, None)).await;
        assert!(
            c == "INVALID_ARGUMENT" && e.contains("memoryKv:"),
            "{c}: {e}"
        );
        // Another layer's memory.
        let other = load_cross(c01.1, c01.2).await;
        let (c, e) = rejected(other.forward_cross(x.clone(), &memory, seq as f64, None)).await;
        assert!(
            c == "INVALID_ARGUMENT" && e.contains("another layer"),
            "{c}: {e}"
        );
        // Encoder-decoder attention takes one memory input and runs no self-attention.
        let (c, e) = rejected(cross.memory_kv(
            vec![0.25; batch * memory_seq * dim],
            vec![0.25; batch * memory_seq * dim],
            batch as f64,
            memory_seq as f64,
            None,
            None,
        ))
        .await;
        assert!(
            c == "INVALID_ARGUMENT" && e.contains("call memory"),
            "{c}: {e}"
        );
        let e = cross
            .forward_vec(x.clone(), 2.0, 3.0, None)
            .await
            .unwrap_err();
        assert_eq!(code(e.clone()), "INVALID_ARGUMENT", "{}", message(e));
        // forward on a layer whose memory is 40 wide, its queries 24: the crate's refusal, in
        // the JavaScript API's terms.
        let wide = load_cross(c02.1, c02.2).await;
        let e = wide
            .forward_vec(vec![0.5; 24], 1.0, 1.0, None)
            .await
            .unwrap_err();
        assert_eq!(code(e.clone()), "INVALID_ARGUMENT");
        let e = message(e);
        assert!(
            e.contains("forwardCross") && e.contains("layer.memory") && !e.contains("_cross"),
            "{e}"
        );
        // Lengths: the memory, its mask, the queries.
        let e = cross
            .memory_vec(vec![0.0; 7], 1.0, 1.0, None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code(e.clone()), "SHAPE");
        assert!(message(e).contains("memory: expected batch·memorySeq·kdim = 1·1·32 = 32"));
        let e = cross
            .memory_vec(vec![0.0; 64], 1.0, 2.0, Some(vec![1; 3]))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code(e.clone()), "SHAPE");
        assert!(message(e).contains("mask: expected batch·memorySeq = 1·2 = 2"));
        let e = cross
            .forward_cross_vec(vec![0.0; 7], &memory, 1.0)
            .await
            .unwrap_err();
        assert_eq!(code(e.clone()), "SHAPE");
        assert!(message(e).contains("x: expected batch·seq·dim = 2·1·32 = 64"));
        let e = cross
            .forward_cross_vec(vec![0.0; 64], &memory, 0.0)
            .await
            .unwrap_err();
        assert!(message(e).contains("seq must be a whole number"));
        // Aborted before its turn: runs nothing; the memory still serves the next call.
        let controller =
            js_sys::Function::new_no_args("const c = new AbortController(); c.abort(); return c")
                .call0(&JsValue::NULL)
                .unwrap();
        let options: JsValue = object(&[("signal", field(&controller, "signal"))]).into();
        let (c, _) = rejected(cross.forward_cross(
            x.clone(),
            &memory,
            seq as f64,
            Some(options.clone().unchecked_into()),
        ))
        .await;
        assert_eq!(c, "ABORTED");
        let (c, _) = rejected(cross.memory(
            vec![0.25; batch * memory_seq * dim],
            batch as f64,
            memory_seq as f64,
            None,
            Some(options.unchecked_into()),
        ))
        .await;
        assert_eq!(c, "ABORTED");
        let y = cross
            .forward_cross_vec(x, &memory, seq as f64)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        assert_eq!(y.len(), batch * seq * dim);
    }

    /// `kvCache` + `prefill` + `decode` give the rows of the full causal forward.
    #[wasm_bindgen_test]
    async fn decode_matches_the_causal_forward() {
        let seed = seed();
        let layer = random(&[
            ("dim", 20.into()),
            ("dimHead", 5.into()),
            ("searches", 3.into()),
            ("retrievals", 2.into()),
            ("causal", true.into()),
            ("seed", ((seed % 1_000_000) as f64).into()),
        ])
        .await;
        let (batch, seq, dim, prompt) = (2usize, 9usize, 20usize, 3usize);
        let x: Vec<f32> = compattn_web::random_normal((batch * seq * dim) as f64, 5.0)
            .unwrap_or_else(|e| panic!("{}", message(e)))
            .to_vec();
        let full = layer
            .forward_vec(x.clone(), batch as f64, seq as f64, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let rows = |v: &[f32], t0: usize, t1: usize| -> Vec<f32> {
            (0..batch)
                .flat_map(|b| v[(b * seq + t0) * dim..(b * seq + t1) * dim].to_vec())
                .collect()
        };
        let cache = layer
            .kv_cache(batch as f64, seq as f64)
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let mut failures = Vec::new();
        let y = layer
            .prefill_vec(&cache, rows(&x, 0, prompt), prompt as f64, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let expected =
            |t0, t1| -> Vec<f64> { rows(&full, t0, t1).iter().map(|&v| v as f64).collect() };
        check(
            &mut failures,
            &format!("prefill (seed {seed})"),
            &y,
            &expected(0, prompt),
        );
        for t in prompt..seq {
            let y = layer
                .prefill_vec(&cache, rows(&x, t, t + 1), 1.0, None)
                .await
                .unwrap_or_else(|e| panic!("{}", message(e)));
            check(
                &mut failures,
                &format!("decode token {t} (seed {seed})"),
                &y,
                &expected(t, t + 1),
            );
        }
        assert_eq!(cache.len(), seq);
        // Full: one more token is a typed error; `clear` starts again.
        let err = layer
            .prefill_vec(&cache, rows(&x, 0, 1), 1.0, None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code(err.clone()), "CACHE_FULL");
        console_log!("past capacity: {}", message(err));
        cache.clear().unwrap_or_else(|e| panic!("{}", message(e)));
        assert_eq!(cache.len(), 0);
        assert_none_failed(&failures);
    }

    /// `forwardWithMaps` against `reference::attention_maps` (f64): the golden padding-mask case
    /// (loaded as the page loads it) with every row, and a random causal problem with a padding
    /// mask (a fully masked batch row included) with every row and with `rows`; its output
    /// against the file's output / the f64 forward.
    #[wasm_bindgen_test]
    async fn forward_with_maps_matches_the_reference() {
        let seed = seed();
        let mut failures = Vec::new();
        let maps_options = |fields: &[(&str, JsValue)]| -> JsValue { object(fields).into() };
        let rows_array = |rows: &[usize]| -> JsValue {
            rows.iter()
                .map(|&r| JsValue::from(r as f64))
                .collect::<js_sys::Array>()
                .into()
        };

        // The golden case through `load`, every row.
        let (_, bytes, _) = GOLDEN[3];
        let layer = load(bytes, &[]).await;
        let (x, batch, seq, mask, output) = case_of(bytes);
        let weights = Weights::from_safetensors(bytes, false, "").unwrap();
        let bool_mask: Option<Vec<bool>> =
            mask.as_ref().map(|m| m.iter().map(|&v| v != 0).collect());
        let (b, n) = (batch as usize, seq as usize);
        let (y, maps) = layer
            .forward_with_maps_vec(x.clone(), batch, seq, mask.clone(), JsValue::UNDEFINED)
            .await
            .unwrap_or_else(|e| panic!("padding_mask: {}", message(e)));
        assert_eq!(maps.query_rows, (0..n).collect::<Vec<_>>());
        let all: Vec<usize> = (0..n).collect();
        let (search, selection) =
            reference::attention_maps(&weights, &x, b, n, bool_mask.as_deref(), &all).unwrap();
        check(
            &mut failures,
            "maps padding_mask: search",
            &maps.search,
            &search,
        );
        check(
            &mut failures,
            "maps padding_mask: selection",
            &maps.selection,
            &selection,
        );
        let expected: Vec<f64> = output.unwrap().iter().map(|&v| v as f64).collect();
        check(&mut failures, "maps padding_mask: output", &y, &expected);

        // A random causal problem with a padding mask (batch row 1 fully masked), odd sizes.
        let (dim, dim_head, searches, retrievals) = (20usize, 5usize, 3usize, 2usize);
        let weight_seed = seed % 1_000_000;
        let layer = random(&[
            ("dim", (dim as f64).into()),
            ("dimHead", (dim_head as f64).into()),
            ("searches", (searches as f64).into()),
            ("retrievals", (retrievals as f64).into()),
            ("causal", true.into()),
            ("seed", (weight_seed as f64).into()),
        ])
        .await;
        let config = Config::new(dim)
            .dim_head(dim_head)
            .num_searches(searches)
            .num_retrievals(retrievals)
            .causal(true);
        let weights = Weights::random(config, weight_seed).unwrap();
        let (b, n) = (3usize, 13usize);
        let x: Vec<f32> = compattn_web::random_normal((b * n * dim) as f64, (seed % 1000) as f64)
            .unwrap_or_else(|e| panic!("{}", message(e)))
            .to_vec();
        let lengths = [13usize, 0, 6];
        let mask: Vec<u8> = lengths
            .iter()
            .flat_map(|&len| (0..n).map(move |j| (j < len) as u8))
            .collect();
        let bool_mask: Vec<bool> = mask.iter().map(|&m| m != 0).collect();
        for rows in [None, Some(vec![0usize, 5, 12])] {
            let options = match &rows {
                None => JsValue::UNDEFINED,
                Some(rows) => maps_options(&[("rows", rows_array(rows))]),
            };
            let what = format!("maps random causal padded, rows {rows:?} (seed {seed})");
            let (y, maps) = match layer
                .forward_with_maps_vec(x.clone(), b as f64, n as f64, Some(mask.clone()), options)
                .await
            {
                Ok(result) => result,
                Err(e) => {
                    failures.push(format!("{what}: {}", message(e)));
                    continue;
                }
            };
            let query_rows = rows.clone().unwrap_or_else(|| (0..n).collect());
            assert_eq!(maps.query_rows, query_rows, "{what}");
            assert_eq!(
                (maps.batch, maps.searches, maps.retrievals, maps.seq),
                (b, searches, retrievals, n)
            );
            assert_eq!(maps.search.len(), b * searches * query_rows.len() * n);
            assert_eq!(
                maps.selection.len(),
                b * searches * query_rows.len() * retrievals
            );
            let (search, selection) =
                reference::attention_maps(&weights, &x, b, n, Some(&bool_mask), &query_rows)
                    .unwrap();
            check(
                &mut failures,
                &format!("{what}: search"),
                &maps.search,
                &search,
            );
            check(
                &mut failures,
                &format!("{what}: selection"),
                &maps.selection,
                &selection,
            );
            let expected = reference::forward(&weights, &x, b, n, Some(&bool_mask)).unwrap();
            check(&mut failures, &format!("{what}: output"), &y, &expected);
            // Each search row sums to 1; causal: nothing past the query's own position (in
            // batch rows with at least one visible key).
            for bi in 0..b {
                for sigma in 0..searches {
                    for (q, &row) in query_rows.iter().enumerate() {
                        let r = maps.search_row(bi, sigma, q);
                        let sum: f32 = r.iter().sum();
                        assert!((sum - 1.0).abs() < 1e-4, "{what}: row sum {sum}");
                        if lengths[bi] > 0 {
                            assert!(r[row + 1..].iter().all(|&v| v == 0.0), "{what}: causal");
                        }
                    }
                }
            }
        }
        assert_none_failed(&failures);
    }

    /// `forwardWithMaps`' options and errors: the JS object comes back with its fields; bad
    /// rows, rows out of order or range and maps past `maxBytes` (MapsTooLarge) are Errors.
    #[wasm_bindgen_test]
    async fn forward_with_maps_options_and_errors() {
        let layer = random(&[
            ("dim", 8.into()),
            ("dimHead", 4.into()),
            ("searches", 2.into()),
            ("retrievals", 3.into()),
        ])
        .await;
        let (b, n) = (2usize, 5usize);
        let x: Vec<f32> = compattn_web::random_normal((b * n * 8) as f64, 9.0)
            .unwrap_or_else(|e| panic!("{}", message(e)))
            .to_vec();
        let options = |fields: &[(&str, JsValue)]| -> JsMapsOptions {
            JsValue::from(object(fields)).unchecked_into()
        };
        let rows = |rows: &[f64]| -> JsValue {
            rows.iter()
                .map(|&r| JsValue::from(r))
                .collect::<js_sys::Array>()
                .into()
        };
        // The JS method: a MapsResult object.
        let promise = layer.forward_with_maps(
            x.clone(),
            b as f64,
            n as f64,
            None,
            Some(options(&[("rows", rows(&[1.0, 4.0]))])),
        );
        let result = wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .unwrap_or_else(|e| panic!("forwardWithMaps: {e:?}"));
        let len = |key: &str| Float32Array::from(field(&result, key)).length() as usize;
        assert_eq!(len("output"), b * n * 8);
        assert_eq!(len("search"), b * 2 * 2 * n);
        assert_eq!(len("selection"), b * 2 * 2 * 3);
        for (key, want) in [
            ("batch", 2.0),
            ("searches", 2.0),
            ("retrievals", 3.0),
            ("seq", 5.0),
        ] {
            assert_eq!(field(&result, key).as_f64(), Some(want), "{key}");
        }
        let query_rows: Vec<f64> = js_sys::Array::from(&field(&result, "queryRows"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(query_rows, [1.0, 4.0]);

        let maps_err = |options: JsValue| {
            let (layer, x) = (layer.clone(), x.clone());
            async move {
                let promise = layer.forward_with_maps(
                    x,
                    b as f64,
                    n as f64,
                    None,
                    Some(options.unchecked_into()),
                );
                let e = wasm_bindgen_futures::JsFuture::from(promise)
                    .await
                    .unwrap_err();
                let (code, message) = thrown(e);
                format!("{code}: {message}")
            }
        };
        // MapsTooLarge: every row takes 4·2·2·5·(5 + 3) = 640 bytes.
        let e = maps_err(object(&[("maxBytes", 639.into())]).into()).await;
        assert!(
            e.starts_with("MAPS_TOO_LARGE: ")
                && e.contains("640 bytes")
                && e.contains("maxBytes (639)"),
            "{e}"
        );
        assert!(
            !e.contains("MapsOptions"),
            "the browser's message names JS options: {e}"
        );
        let e = maps_err(object(&[("rows", rows(&[2.0])), ("maxBytes", 100.into())]).into()).await;
        assert!(e.contains("need 128 bytes"), "{e}");
        // At the limit it runs.
        let ok = layer
            .forward_with_maps_vec(
                x.clone(),
                b as f64,
                n as f64,
                None,
                options(&[("maxBytes", 640.into())]).into(),
            )
            .await;
        assert!(ok.is_ok());
        for (bad, wanted) in [
            (rows(&[-1.0]), "whole numbers ≥ 0"),
            (rows(&[1.5]), "whole numbers ≥ 0"),
            (JsValue::from("0,1"), "array"),
            (rows(&[3.0, 1.0]), "strictly increasing"),
            (rows(&[1.0, 1.0]), "strictly increasing"),
            (rows(&[5.0]), "query_rows"),
            (rows(&[]), "at least one"),
        ] {
            let e = maps_err(object(&[("rows", bad.clone())]).into()).await;
            assert!(e.contains(wanted), "rows {bad:?}: {e}");
        }
        let e = maps_err(object(&[("maxBytes", (-1).into())]).into()).await;
        assert!(e.contains("maxBytes must be a whole number"), "{e}");
        let e = maps_err(JsValue::from(7)).await;
        assert!(e.contains("options must be an object"), "{e}");
        // The usual input checks apply.
        let e = message(
            layer
                .forward_with_maps_vec(vec![0.0; 7], 1.0, 1.0, None, JsValue::UNDEFINED)
                .await
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(e.contains("x: expected batch·seq·dim"), "{e}");
    }

    /// A small random layer (dim 16, d 4, 2 searches) and an input `[2, 5, 16]` drawn from
    /// `seed`, for the tests of how calls run rather than what they compute.
    async fn small_layer(seed: f64) -> (JsCompositionalAttention, Vec<f32>) {
        let layer = random(&[
            ("dim", 16.into()),
            ("dimHead", 4.into()),
            ("searches", 2.into()),
        ])
        .await;
        let x = compattn_web::random_normal(2.0 * 5.0 * 16.0, seed)
            .unwrap()
            .to_vec();
        (layer, x)
    }

    #[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
export async function interopRoundTrip(layer, x, batch, seq) {
  const device = layer.device;
  const n = x.length;
  const bytes = n * 4;
  const U = GPUBufferUsage;
  const staging = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_DST });
  device.queue.writeBuffer(staging, 0, x);
  const input = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_SRC });
  const output = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_DST });
  const result = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_SRC });
  const read = device.createBuffer({ size: bytes, usage: U.MAP_READ | U.COPY_DST });
  const module = device.createShaderModule({ code: `
    @group(0) @binding(0) var<storage, read> src: array<f32>;
    @group(0) @binding(1) var<storage, read_write> dst: array<f32>;
    @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
      if (id.x < arrayLength(&dst)) { dst[id.x] = 2.0 * src[id.x]; }
    }` });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const double = (src, dst) => {
    const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [
      { binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }] });
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(Math.ceil(n / 64));
    pass.end();
    device.queue.submit([encoder.finish()]);
  };
  double(staging, input);                                 // the page's pass writes the input, 2x
  await layer.forwardGpu(input, output, batch, seq);      // the layer, no readback
  double(output, result);                                 // the page's pass reads the output, 2y
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(result, 0, read, 0, bytes);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const values = new Float32Array(read.getMappedRange().slice(0));
  read.unmap();
  return values;
}
export async function decodeOnGpu(layer, cache, prompt, token, seq) {
  const device = layer.device;
  const U = GPUBufferUsage;
  const buffer = (bytes) => device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_SRC | U.COPY_DST });
  const filled = (data) => { const b = buffer(data.byteLength); device.queue.writeBuffer(b, 0, data); return b; };
  const read = async (source) => {
    const staging = device.createBuffer({ size: source.size, usage: U.MAP_READ | U.COPY_DST });
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(source, 0, staging, 0, source.size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const values = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    return values;
  };
  const promptOut = buffer(prompt.byteLength);
  const tokenOut = buffer(token.byteLength);
  await layer.prefillGpu(cache, filled(prompt), promptOut, seq);
  // A buffer of another device: refused before the layer records anything (the cache stays).
  const other = await (await navigator.gpu.requestAdapter()).requestDevice();
  const foreign = other.createBuffer({ size: token.byteLength, usage: U.STORAGE | U.COPY_SRC });
  const refused = await layer.decodeGpu(cache, foreign, tokenOut).then(() => null, (e) => e);
  const lenAfterRefusal = cache.len;
  other.destroy();
  await layer.decodeGpu(cache, filled(token), tokenOut);
  const first = await read(tokenOut);
  // A second step of the same size reuses the layer's own buffers of the first.
  await layer.decodeGpu(cache, filled(token.map((v) => -v)), tokenOut);
  const full = await layer.decodeGpu(cache, filled(token), tokenOut).then(() => null, (e) => e);
  return [await read(promptOut), first, full, refused, lenAfterRefusal, await read(tokenOut)];
}
export function notABuffer(layer) {
  return layer.forwardGpu(new Float32Array(4), new Float32Array(4), 1, 1).then(() => null, (e) => e);
}
export function tooSmall(layer, batch, seq) {
  const b = layer.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  return layer.forwardGpu(b, b, batch, seq).then(() => null, (e) => e);
}
"#)]
    extern "C" {
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = interopRoundTrip)]
        async fn interop_round_trip(
            layer: JsValue,
            x: Float32Array,
            batch: f64,
            seq: f64,
        ) -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = decodeOnGpu)]
        async fn decode_on_gpu(
            layer: JsValue,
            cache: JsValue,
            prompt: Float32Array,
            token: Float32Array,
            seq: f64,
        ) -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = notABuffer)]
        async fn not_a_buffer(layer: JsValue) -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = tooSmall)]
        async fn too_small(layer: JsValue, batch: f64, seq: f64) -> JsValue;
    }

    /// The page's own WGSL pass writes the input on `layer.device`, `forwardGpu` runs the layer
    /// on the page's buffers, and the page's pass reads the output: the result is `forward`'s.
    /// Buffers that are not GPUBuffers, or too small, are typed errors.
    #[wasm_bindgen_test]
    async fn forward_gpu_runs_on_the_pages_buffers() {
        let (layer, x) = small_layer(11.0).await;
        let doubled: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
        let y = layer
            .forward_vec(doubled, 2.0, 5.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let js = JsValue::from(layer.clone());
        let x = Float32Array::from(&x[..]);
        let out = Float32Array::from(interop_round_trip(js.clone(), x, 2.0, 5.0).await).to_vec();
        let expected: Vec<f32> = y.iter().map(|v| 2.0 * v).collect();
        assert_eq!(out, expected, "the page's passes around forwardGpu");
        assert_eq!(thrown(not_a_buffer(js.clone()).await).0, "INVALID_ARGUMENT");
        assert_eq!(thrown(too_small(js, 2.0, 5.0).await).0, "SHAPE");
    }

    /// `prefillGpu` and `decodeGpu` on the page's buffers give what `prefill` and `decode` give
    /// on the host, and advance the cache; a buffer of another device is refused before
    /// anything runs (the cache stays, and the next step still equals the host's); a full cache
    /// is `CACHE_FULL`.
    #[wasm_bindgen_test]
    async fn decode_gpu_runs_on_the_pages_buffers() {
        let layer = random(&[
            ("dim", 12.into()),
            ("dimHead", 4.into()),
            ("searches", 3.into()),
            ("causal", true.into()),
            ("seed", 9.into()),
        ])
        .await;
        let prompt = compattn_web::random_normal(5.0 * 12.0, 21.0)
            .unwrap()
            .to_vec();
        let token = compattn_web::random_normal(12.0, 22.0).unwrap().to_vec();
        let host = layer
            .kv_cache(1.0, 7.0)
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let y = layer.prefill_vec(&host, prompt.clone(), 5.0, None).await;
        let y = y.unwrap_or_else(|e| panic!("{}", message(e)));
        let next = layer.prefill_vec(&host, token.clone(), 1.0, None).await;
        let next = next.unwrap_or_else(|e| panic!("{}", message(e)));
        let negated: Vec<f32> = token.iter().map(|v| -v).collect();
        let second = layer.prefill_vec(&host, negated, 1.0, None).await;
        let second = second.unwrap_or_else(|e| panic!("{}", message(e)));
        let gpu = layer
            .kv_cache(1.0, 7.0)
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let out = decode_on_gpu(
            layer.clone().into(),
            gpu.clone().into(),
            Float32Array::from(&prompt[..]),
            Float32Array::from(&token[..]),
            5.0,
        )
        .await;
        let out = js_sys::Array::from(&out);
        assert_eq!(Float32Array::from(out.get(0)).to_vec(), y, "prefillGpu");
        assert_eq!(Float32Array::from(out.get(1)).to_vec(), next, "decodeGpu");
        assert_eq!(
            Float32Array::from(out.get(5)).to_vec(),
            second,
            "a second decodeGpu"
        );
        assert_eq!(gpu.len(), 7);
        assert_eq!(thrown(out.get(2)).0, "CACHE_FULL");
        let (code, text) = thrown(out.get(3));
        assert_eq!(code, "INVALID_ARGUMENT", "{text}");
        assert!(text.contains("nothing ran"), "{text}");
        assert_eq!(
            out.get(4).as_f64(),
            Some(5.0),
            "the refused step left the cache"
        );
    }

    /// A call whose `AbortSignal` aborts before its turn rejects with `ABORTED` and runs
    /// nothing; the calls around it are unaffected.
    #[wasm_bindgen_test]
    async fn aborted_calls_reject_with_aborted() {
        use wasm_bindgen_futures::JsFuture;
        let (layer, x) = small_layer(3.0).await;
        let controller = || {
            js_sys::Function::new_no_args("return new AbortController()")
                .call0(&JsValue::NULL)
                .unwrap()
        };
        let abort = |c: &JsValue| {
            let f: js_sys::Function = field(c, "abort").unchecked_into();
            f.call0(c).unwrap();
        };
        let call_options =
            |c: &JsValue| -> JsValue { object(&[("signal", field(c, "signal"))]).into() };
        // Aborted before the call: rejected at once.
        let early = controller();
        abort(&early);
        let e = JsFuture::from(layer.forward(
            x.clone(),
            2.0,
            5.0,
            None,
            Some(call_options(&early).unchecked_into()),
        ))
        .await
        .unwrap_err();
        assert_eq!(thrown(e).0, "ABORTED");
        // Aborted while queued behind a running call: rejected; the first call finishes.
        let queued = controller();
        let first = layer.forward(x.clone(), 2.0, 5.0, None, None);
        let second = layer.forward(
            x.clone(),
            2.0,
            5.0,
            None,
            Some(call_options(&queued).unchecked_into()),
        );
        abort(&queued);
        let y = Float32Array::from(JsFuture::from(first).await.unwrap()).to_vec();
        let (code, message) = thrown(JsFuture::from(second).await.unwrap_err());
        assert_eq!(code, "ABORTED", "{message}");
        // A signal that never aborts changes nothing, and the next call runs.
        let idle = controller();
        let again = JsFuture::from(layer.forward(
            x.clone(),
            2.0,
            5.0,
            None,
            Some(call_options(&idle).unchecked_into()),
        ))
        .await
        .unwrap();
        assert_eq!(Float32Array::from(again).to_vec(), y);
        // A signal that is not an AbortSignal is a bad option.
        let bad: JsValue = object(&[("signal", "stop".into())]).into();
        let e = JsFuture::from(layer.forward(x, 2.0, 5.0, None, Some(bad.unchecked_into())))
            .await
            .unwrap_err();
        assert_eq!(thrown(e).0, "INVALID_ARGUMENT");
    }

    #[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
export function progressLog() {
  const seen = [];
  return { seen, onProgress: (p) => { seen.push([p.compiled, p.total]); } };
}
export function throwingProgress() {
  return { onProgress: () => { throw new RangeError('the page threw'); } };
}
export function lostHook() {
  let resolve;
  const lost = new Promise((r) => { resolve = r; });
  return { onDeviceLost: (error) => resolve(error), lost };
}
export function destroyDevice(layer) {
  layer.device.destroy();
}
"#)]
    extern "C" {
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = progressLog)]
        fn progress_log() -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = throwingProgress)]
        fn throwing_progress() -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = lostHook)]
        fn lost_hook() -> JsValue;
        #[wasm_bindgen::prelude::wasm_bindgen(js_name = destroyDevice)]
        fn destroy_device(layer: JsValue);
    }

    /// `prepare` compiles a new shape's pipelines before its first forward and reports them one
    /// by one up to their total; the forward after it equals an unprepared layer's. An
    /// exception of `onProgress` rejects `prepare` with that exception; an aborted `prepare`
    /// runs nothing.
    #[wasm_bindgen_test]
    async fn prepare_reports_progress() {
        use wasm_bindgen_futures::JsFuture;
        // A configuration no other test runs, so that its pipelines are new to the device.
        let fields = [
            ("dim", 22.into()),
            ("dimHead", 7.into()),
            ("searches", 3.into()),
            ("retrievals", 3.into()),
            ("causal", true.into()),
        ];
        let layer = random(&fields).await;
        let x = compattn_web::random_normal(2.0 * 9.0 * 22.0, 17.0)
            .unwrap()
            .to_vec();
        let log = progress_log();
        JsFuture::from(layer.prepare(2.0, 9.0, Some(log.clone().unchecked_into())))
            .await
            .unwrap_or_else(|e| panic!("prepare: {}", thrown(e).1));
        let seen: Vec<(f64, f64)> = js_sys::Array::from(&field(&log, "seen"))
            .iter()
            .map(|pair| {
                let pair = js_sys::Array::from(&pair);
                (pair.get(0).as_f64().unwrap(), pair.get(1).as_f64().unwrap())
            })
            .collect();
        let (first, last) = (seen[0], seen[seen.len() - 1]);
        assert!(first.0 < first.1, "nothing was left to compile: {seen:?}");
        assert_eq!(last.0, last.1, "{seen:?}");
        for pair in seen.windows(2) {
            assert_eq!(
                (pair[1].0, pair[1].1),
                (pair[0].0 + 1.0, pair[0].1),
                "{seen:?}"
            );
        }
        let y = layer
            .forward_vec(x.clone(), 2.0, 9.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let fresh = random(&fields).await;
        let expected = fresh
            .forward_vec(x, 2.0, 9.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        assert_eq!(y, expected, "a prepared layer's forward");
        // The page's exception is the rejection, after the preparation.
        let e = JsFuture::from(layer.prepare(3.0, 4.0, Some(throwing_progress().unchecked_into())))
            .await
            .unwrap_err();
        assert_eq!(
            String::from(e.unchecked_ref::<js_sys::Error>().name()),
            "RangeError"
        );
        // Aborted: rejected, nothing built.
        let controller =
            js_sys::Function::new_no_args("const c = new AbortController(); c.abort(); return c")
                .call0(&JsValue::NULL)
                .unwrap();
        let options: JsValue = object(&[("signal", field(&controller, "signal"))]).into();
        let before = field(&layer.info(), "gpuBytes").as_f64().unwrap();
        let e = JsFuture::from(layer.prepare(5.0, 6.0, Some(options.unchecked_into())))
            .await
            .unwrap_err();
        assert_eq!(thrown(e).0, "ABORTED");
        assert_eq!(field(&layer.info(), "gpuBytes").as_f64().unwrap(), before);
        let bad: JsValue = object(&[("onProgress", "loud".into())]).into();
        let e = JsFuture::from(layer.prepare(2.0, 9.0, Some(bad.unchecked_into())))
            .await
            .unwrap_err();
        assert_eq!(thrown(e).0, "INVALID_ARGUMENT");
    }

    /// The training calls take an `AbortSignal` as the inference calls do: aborted before
    /// their turn, each rejects with `ABORTED` and runs nothing.
    #[wasm_bindgen_test]
    async fn aborted_training_calls_reject_with_aborted() {
        use wasm_bindgen_futures::JsFuture;
        let (layer, x) = small_layer(5.0).await;
        let controller =
            js_sys::Function::new_no_args("const c = new AbortController(); c.abort(); return c")
                .call0(&JsValue::NULL)
                .unwrap();
        let aborted = || -> CallOptions {
            JsValue::from(object(&[("signal", field(&controller, "signal"))])).unchecked_into()
        };
        let grads = layer
            .gradients()
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let (y, act) = layer
            .forward_train_vec(x.clone(), 2.0, 5.0, None, &JsValue::UNDEFINED, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let optimizer = compattn_web::JsAdamW::new(&layer, 1e-3, None)
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let calls = [
            (
                "forwardTrain",
                layer.forward_train(x.clone(), 2.0, 5.0, None, None, Some(aborted())),
            ),
            (
                "backward",
                layer.backward(&act, y.clone(), &grads, Some(aborted())),
            ),
            ("step", optimizer.step(&layer, &grads, Some(aborted()))),
            ("weights", layer.weights(Some(aborted()))),
            (
                "prepareTraining",
                layer.prepare_training(2.0, 7.0, Some(aborted())),
            ),
        ];
        for (name, call) in calls {
            let e = JsFuture::from(call).await.unwrap_err();
            assert_eq!(thrown(e).0, "ABORTED", "{name}");
        }
        assert_eq!(optimizer.steps().unwrap(), 0.0, "an aborted step ran");
        let dx = layer
            .backward_vec(act.inner(), y, &grads, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        assert!(
            dx.iter().all(|v| v.is_finite()),
            "the backward after the aborted calls"
        );
    }

    /// `onDeviceLost` hears a lost device once, as a `DEVICE_LOST` `CompattnError` with the
    /// browser's reason; later calls reject with `DEVICE_LOST`, and the next `random` opens a
    /// new device. (Its own `limits` policy, so the other tests' device stays.)
    #[wasm_bindgen_test]
    async fn a_lost_device_calls_on_device_lost() {
        use wasm_bindgen_futures::JsFuture;
        let hook = lost_hook();
        let options = |extra: &[(&str, JsValue)]| -> RandomOptions {
            let mut fields = vec![
                ("dim", 16.into()),
                ("dimHead", 4.into()),
                ("limits", "adapter".into()),
            ];
            fields.extend_from_slice(extra);
            JsValue::from(object(&fields)).unchecked_into()
        };
        let layer = JsCompositionalAttention::random(Some(options(&[(
            "onDeviceLost",
            field(&hook, "onDeviceLost"),
        )])))
        .await
        .unwrap_or_else(|e| panic!("random: {}", message(e)));
        let x = compattn_web::random_normal(16.0 * 3.0, 4.0)
            .unwrap()
            .to_vec();
        layer
            .forward_vec(x.clone(), 1.0, 3.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        destroy_device(layer.clone().into());
        let error = JsFuture::from(js_sys::Promise::from(field(&hook, "lost")))
            .await
            .unwrap();
        let (code, text) = thrown(error);
        assert_eq!(code, "DEVICE_LOST", "{text}");
        assert!(text.contains("destroyed"), "{text}");
        let e = layer
            .forward_vec(x.clone(), 1.0, 3.0, None)
            .await
            .unwrap_err();
        assert_eq!(thrown(e.into()).0, "DEVICE_LOST");
        let again = JsCompositionalAttention::random(Some(options(&[])))
            .await
            .unwrap_or_else(|e| panic!("random after the loss: {}", message(e)));
        again
            .forward_vec(x, 1.0, 3.0, None)
            .await
            .unwrap_or_else(|e| panic!("on the new device: {}", message(e)));
        let bad = JsCompositionalAttention::random(Some(options(&[("onDeviceLost", 3.into())])));
        match bad.await {
            Err(e) => assert_eq!(thrown(e.into()).0, "INVALID_ARGUMENT"),
            Ok(_) => panic!("onDeviceLost: 3 was accepted"),
        }
    }

    /// `releaseWorkspaces` frees the workspaces' GPU memory; the next forward builds them again
    /// and gives the same output.
    #[wasm_bindgen_test]
    async fn workspaces_are_released() {
        let (layer, x) = small_layer(3.0).await;
        let gpu_bytes =
            |layer: &JsCompositionalAttention| field(&layer.info(), "gpuBytes").as_f64().unwrap();
        let y = layer
            .forward_vec(x.clone(), 2.0, 5.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let with_workspace = gpu_bytes(&layer);
        layer
            .release_workspaces()
            .unwrap_or_else(|e| panic!("{}", message(e)));
        let released = gpu_bytes(&layer);
        assert!(
            released > 0.0 && released < with_workspace,
            "released {released}, with the workspace {with_workspace}"
        );
        let again = layer
            .forward_vec(x, 2.0, 5.0, None)
            .await
            .unwrap_or_else(|e| panic!("{}", message(e)));
        assert_eq!(gpu_bytes(&layer), with_workspace);
        assert_eq!(y, again);
    }

    /// Bad input gives an `Error` with the crate's message, never a panic.
    #[wasm_bindgen_test]
    async fn errors_are_js_errors() {
        let layer = random(&[
            ("dim", 8.into()),
            ("dimHead", 4.into()),
            ("searches", 2.into()),
        ])
        .await;
        let forward_err = |x: Vec<f32>, batch: f64, seq: f64, mask: Option<Vec<u8>>| {
            let layer = layer.clone();
            async move { message(layer.forward_vec(x, batch, seq, mask).await.unwrap_err()) }
        };
        let e = forward_err(vec![0.0; 7], 1.0, 1.0, None).await;
        assert!(e.contains("x: expected batch·seq·dim = 1·1·8 = 8"), "{e}");
        let shape_code = code(
            layer
                .forward_vec(vec![0.0; 7], 1.0, 1.0, None)
                .await
                .unwrap_err(),
        );
        assert_eq!(shape_code, "SHAPE");
        let e = forward_err(vec![0.0; 16], 1.0, 2.0, Some(vec![1; 3])).await;
        assert!(e.contains("mask: expected batch·seq = 1·2 = 2"), "{e}");
        let e = forward_err(vec![0.0; 8], 0.0, 1.0, None).await;
        assert!(e.contains("batch must be a whole number"), "{e}");
        let e = forward_err(vec![0.0; 8], 1.0, f64::NAN, None).await;
        assert!(e.contains("seq must be a whole number"), "{e}");
        let e = forward_err(vec![f32::INFINITY; 8], 1.0, 1.0, None).await;
        assert!(e.contains("non-finite"), "{e}");
        // A non-causal layer has no KV cache.
        let e = message(layer.kv_cache(1.0, 4.0).map(|_| ()).unwrap_err());
        assert!(e.contains("causal"), "{e}");
        // A bad file, an empty one, a file of another model, unknown option values.
        let load_err = |bytes: JsValue, options: Option<LoadOptions>| async move {
            let e = JsCompositionalAttention::load(bytes, options)
                .await
                .map(|_| ())
                .unwrap_err();
            thrown(JsValue::from(e))
        };
        let (c, e) = load_err(
            Uint8Array::from(&b"not a checkpoint at all"[..]).into(),
            None,
        )
        .await;
        assert!(e.contains("safetensors") && c == "CHECKPOINT", "{c}: {e}");
        let (c, e) = load_err(Uint8Array::new_with_length(0).into(), None).await;
        assert!(e.contains("empty") && c == "CHECKPOINT", "{c}: {e}");
        // Bytes are a Uint8Array or an ArrayBuffer, nothing else.
        let (c, e) = load_err(JsValue::from(42), None).await;
        assert!(
            e.contains("Uint8Array or an ArrayBuffer") && c == "INVALID_ARGUMENT",
            "{c}: {e}"
        );
        let buffer = Uint8Array::from(GOLDEN[6].1).buffer();
        let webgpu: LoadOptions =
            JsValue::from(object(&[("limits", "webgpu".into())])).unchecked_into();
        let from_buffer = JsCompositionalAttention::load(buffer.into(), Some(webgpu))
            .await
            .unwrap_or_else(|e| panic!("load(ArrayBuffer): {}", message(e)));
        assert_eq!(
            field(&from_buffer.info(), "format").as_string().as_deref(),
            Some("lucidrains")
        );
        // Options are checked strictly: "false" is not false.
        let options: LoadOptions =
            JsValue::from(object(&[("causal", "false".into())])).unchecked_into();
        let (c, e) = load_err(Uint8Array::from(GOLDEN[6].1).into(), Some(options)).await;
        assert!(
            e.contains("causal must be true or false") && c == "INVALID_ARGUMENT",
            "{c}: {e}"
        );
        let options: RandomOptions = JsValue::from(object(&[("dim", "8".into())])).unchecked_into();
        let e = JsCompositionalAttention::random(Some(options))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code(e.clone()), "INVALID_ARGUMENT", "{}", message(e));
        for (key, value, wanted) in [
            ("limits", "everything", "limits"),
            ("precision", "f8", "precision"),
            ("strategy", "fast", "strategy"),
            ("format", "onnx", "format"),
            ("config", "{not json", "configuration"),
        ] {
            let options: LoadOptions =
                JsValue::from(object(&[(key, value.into())])).unchecked_into();
            let (c, e) = load_err(Uint8Array::from(GOLDEN[6].1).into(), Some(options)).await;
            assert!(e.contains(wanted), "{key} = {value}: {e}");
            assert_eq!(c, "INVALID_ARGUMENT", "{key} = {value}: {e}");
        }
        // Case tensors: a malformed file is an error, a weights-only one has none.
        assert!(read_case(b"junk".to_vec()).is_err());
        let h5 = include_bytes!("../../tests/golden-variants/keras/k01_defaults.weights.h5");
        let case = read_case(h5.to_vec()).unwrap_or_else(|e| panic!("{}", message(e)));
        assert!(field(&case, "input").is_null() && field(&case, "output").is_null());
        // f16 where the adapter lacks shader-f16 (SwiftShader): a typed error naming it.
        let options: RandomOptions = JsValue::from(object(&[
            ("precision", "f16".into()),
            ("limits", "webgpu".into()),
        ]))
        .unchecked_into();
        match JsCompositionalAttention::random(Some(options)).await {
            Ok(layer) => {
                let info = layer.info();
                assert_eq!(
                    field(&info, "precision").as_string().as_deref(),
                    Some("f16")
                );
            }
            Err(e) => {
                assert_eq!(code(e.clone()), "MISSING_FEATURE");
                let e = message(e);
                assert!(e.contains("shader-f16"), "{e}");
                // In the JavaScript API's terms, not the crate's.
                assert!(
                    e.contains("precision: \"f32\"") && !e.contains("Precision::"),
                    "{e}"
                );
            }
        }
    }
}
