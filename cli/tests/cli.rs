//! The `compattn` binary end to end: it is run as a user would run it, on the reference cases in
//! the library's `tests/golden/` and on broken inputs, and judged by its exit status, its messages and the
//! files it writes.
//!
//! The adapter is whatever the environment picks (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
//! `COMPATTN_LIMITS` are inherited by the child process).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's golden-variants cases (names, files, constructors), shared with its own tests.
#[path = "../../tests/common/variants.rs"]
#[allow(dead_code)]
mod variants;

use compositional_attention::io::read_output;
use compositional_attention::testing::ErrorStats;
use compositional_attention::{AttentionMaps, Strategy, weights};

/// The outcome of one `compattn` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Everything the run printed, for assertion messages.
    fn transcript(&self) -> String {
        format!(
            "exit status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\n{}",
            self.transcript()
        );
    }

    /// Success, and stdout containing every one of `needles`.
    #[track_caller]
    fn assert_prints(&self, needles: &[&str]) {
        self.assert_success();
        for needle in needles {
            assert!(
                self.stdout.contains(needle),
                "expected {needle:?} on stdout\n{}",
                self.transcript()
            );
        }
    }

    /// Exit status `code` and an `error: ` line on stderr that contains every one of `needles`.
    #[track_caller]
    fn assert_error(&self, code: i32, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n{}",
            self.transcript()
        );
        let found = self
            .stderr
            .lines()
            .any(|line| line.starts_with("error: ") && needles.iter().all(|n| line.contains(n)));
        assert!(
            found,
            "expected an `error: ` line containing {needles:?}\n{}",
            self.transcript()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked\n{}",
            self.transcript()
        );
    }
}

fn compattn(args: &[&str]) -> Run {
    compattn_with_env(args, &[])
}

fn compattn_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    // Tuning off (the built-in tilings, nothing written to the user's cache), unless a test
    // sets it.
    let output = Command::new(env!("CARGO_BIN_EXE_compattn"))
        .args(args)
        .env("COMPATTN_TUNE", "off")
        .envs(env.iter().copied())
        .output()
        .expect("the compattn binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn golden(name: &str) -> PathBuf {
    // The library's reference cases: this package lives in `cli/` of the same repository.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(format!("{name}.safetensors"))
}

/// `causal` from the case's JSON sidecar (the one setting no tensor records).
fn golden_causal(name: &str) -> bool {
    let sidecar = std::fs::read_to_string(golden(name).with_extension("json")).unwrap();
    sidecar.contains("\"causal\": true")
}

/// A fresh directory for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("compattn-cli-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn forward_reproduces_the_reference_cases() {
    let dir = TempDir::new("forward");
    // causal needs the flag; padding_mask carries a mask in the input file.
    for case in ["causal", "padding_mask"] {
        let file = golden(case);
        for strategy in Strategy::ALL {
            let out = dir.path(&format!("{case}-{strategy}.safetensors"));
            let mut args = vec![
                "forward",
                "--weights",
                arg(&file),
                "--input",
                arg(&file),
                "--strategy",
                strategy.name(),
                "--output",
                arg(&out),
            ];
            if golden_causal(case) {
                args.push("--causal");
            }
            let run = compattn(&args);
            run.assert_success();
            assert!(run.stdout.contains("adapter: "), "{}", run.transcript());
            assert!(run.stdout.contains("steady-state"), "{}", run.transcript());

            let (shape, expected) = read_output(&std::fs::read(&file).unwrap())
                .unwrap()
                .expect("case has `output`");
            let (written_shape, y) = read_output(&std::fs::read(&out).unwrap())
                .unwrap()
                .expect("compattn wrote `output`");
            assert_eq!(written_shape, shape);
            let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
            let stats = ErrorStats::compare(&y, &expected);
            assert!(
                stats.within(1e-4),
                "{case} ({strategy}): {stats}\n{}",
                run.transcript()
            );
        }
    }
}

/// The fairseq cross-attention cases through `compattn forward --config`: an input file with
/// `memory` runs cross-attention (its `mask` on the memory), within 1e-4 of the original's f64
/// output; `--maps` over a memory is refused by name.
#[test]
fn forward_runs_cross_attention_from_the_input_file() {
    let dir = TempDir::new("forward-cross");
    let cases = variants::case_dir().join("fairseq-cross");
    for case in variants::CROSS_CASES {
        let file = cases.join(format!("{case}.safetensors"));
        let config = dir.path(&format!("{case}.json"));
        std::fs::write(&config, variants::constructor_json("fairseq-cross", case)).unwrap();
        let out = dir.path(&format!("{case}-out.safetensors"));
        let run = compattn(&[
            "forward",
            "--weights",
            arg(&file),
            "--config",
            arg(&config),
            "--input",
            arg(&file),
            "--output",
            arg(&out),
        ]);
        run.assert_success();
        assert!(
            run.stdout.contains("within 1e-4: yes"),
            "{}",
            run.transcript()
        );
        let cross = case.starts_with("c0") && !case.contains("self");
        assert_eq!(
            run.stdout.contains("(cross-attention)"),
            cross,
            "{}",
            run.transcript()
        );
        if cross {
            let maps = dir.path(&format!("{case}-maps.safetensors"));
            let run = compattn(&[
                "forward",
                "--weights",
                arg(&file),
                "--config",
                arg(&config),
                "--input",
                arg(&file),
                "--output",
                arg(&out),
                "--maps",
                arg(&maps),
            ]);
            assert_ne!(run.code, Some(0), "{}", run.transcript());
            assert!(run.stderr.contains("--maps"), "{}", run.transcript());
        }
    }
}

/// Every case of `tests/golden-variants/` (Keras, fairseq, xformers) through
/// `compattn forward --config`, against the original module's f64 output; Keras also without
/// a configuration (its shapes say everything), fairseq without one is an error naming what is
/// missing.
#[test]
fn forward_reproduces_the_variant_cases() {
    let dir = TempDir::new("forward-variants");
    let cases = variants::case_dir();
    for (folder, case) in variants::CASES {
        let file = cases.join(folder).join(format!("{case}.safetensors"));
        let config = dir.path(&format!("{case}.json"));
        std::fs::write(&config, variants::constructor_json(folder, case)).unwrap();
        let out = dir.path(&format!("{case}-out.safetensors"));
        let run = compattn(&[
            "forward",
            "--weights",
            arg(&file),
            "--config",
            arg(&config),
            "--input",
            arg(&file),
            "--output",
            arg(&out),
        ]);
        run.assert_success();
        assert!(
            run.stdout.contains(&format!("{folder} checkpoint")),
            "{}",
            run.transcript()
        );
        assert!(
            run.stdout.contains("within 1e-4: yes"),
            "{}",
            run.transcript()
        );
        let (_, expected) = read_output(&std::fs::read(&file).unwrap())
            .unwrap()
            .unwrap();
        let (_, y) = read_output(&std::fs::read(&out).unwrap()).unwrap().unwrap();
        let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let stats = ErrorStats::compare(&y, &expected);
        assert!(stats.within(1e-4), "{case}: {stats}\n{}", run.transcript());
        if folder == "keras" {
            // No configuration, from safetensors and from the .weights.h5 Keras saved.
            let h5 = cases.join(folder).join(format!("{case}.weights.h5"));
            for weights in [&file, &h5] {
                let run = compattn(&[
                    "forward",
                    "--weights",
                    arg(weights),
                    "--input",
                    arg(&file),
                    "--output",
                    arg(&out),
                ]);
                assert!(
                    run.stdout.contains("keras checkpoint"),
                    "{}",
                    run.transcript()
                );
                assert!(
                    run.stdout.contains("within 1e-4: yes"),
                    "{}",
                    run.transcript()
                );
            }
        }
        if folder == "fairseq" {
            compattn(&[
                "forward",
                "--weights",
                arg(&file),
                "--input",
                arg(&file),
                "--output",
                arg(&out),
            ])
            .assert_error(1, &["num_heads"]);
        }
    }
}

#[test]
fn verify_passes_on_odd_sizes_causal_and_masked() {
    let run = compattn(&[
        "verify",
        "--batch",
        "2",
        "--seq",
        "23",
        "--dim",
        "36",
        "--dim-head",
        "7",
        "--searches",
        "3",
        "--retrievals",
        "5",
        "--causal",
        "--mask-lengths",
        "5,0",
    ]);
    run.assert_success();
    assert!(run.stdout.contains("seed: "), "{}", run.transcript());
    for strategy in Strategy::ALL {
        assert!(
            run.stdout.contains(&format!("{strategy}: ")),
            "{strategy} not checked\n{}",
            run.transcript()
        );
    }
}

#[test]
fn verify_with_prenorm_and_a_large_input_passes() {
    let run = compattn(&[
        "verify",
        "--batch",
        "3",
        "--seq",
        "11",
        "--dim",
        "20",
        "--dim-head",
        "4",
        "--searches",
        "1",
        "--retrievals",
        "1",
        "--prenorm",
        "--input-scale",
        "30",
    ]);
    run.assert_success();
}

#[test]
fn verify_reports_a_result_outside_the_tolerance() {
    let run = compattn(&[
        "verify",
        "--seq",
        "9",
        "--seed",
        "7",
        "--tolerance",
        "1e-15",
    ]);
    run.assert_error(1, &["exceeded tolerance", "--seed 7"]);
}

#[test]
fn missing_weights_file_is_named() {
    let dir = TempDir::new("missing");
    let missing = dir.path("no-such-weights.safetensors");
    let input = golden("tiny");
    let out = dir.path("y.safetensors");
    let run = compattn(&[
        "forward",
        "--weights",
        arg(&missing),
        "--input",
        arg(&input),
        "--output",
        arg(&out),
    ]);
    run.assert_error(1, &["no-such-weights.safetensors"]);
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn input_dim_mismatch_is_a_shape_error() {
    let dir = TempDir::new("mismatch");
    // tiny has dim 16, odd_sizes dim 40.
    let out = dir.path("y.safetensors");
    let run = compattn(&[
        "forward",
        "--weights",
        arg(&golden("tiny")),
        "--input",
        arg(&golden("odd_sizes")),
        "--output",
        arg(&out),
    ]);
    run.assert_error(1, &["input", "expected shape", "16", "40"]);
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn weights_without_a_parameter_name_it() {
    let dir = TempDir::new("removed");
    let bytes = std::fs::read(golden("tiny")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != weights::OUT)
        .collect();
    let broken = dir.path("without-to_out.safetensors");
    std::fs::write(&broken, safetensors::serialize(kept, None).unwrap()).unwrap();
    let out = dir.path("y.safetensors");
    let run = compattn(&[
        "forward",
        "--weights",
        arg(&broken),
        "--input",
        arg(&golden("tiny")),
        "--output",
        arg(&out),
    ]);
    run.assert_error(1, &["missing tensor", weights::OUT]);
}

#[test]
fn unknown_adapter_name_explains_how_to_get_one() {
    let run = compattn_with_env(&["verify"], &[("WGPU_ADAPTER_NAME", "no-such-adapter")]);
    run.assert_error(
        1,
        &["no GPU adapter", "no-such-adapter", "mesa-vulkan-drivers"],
    );
}

#[test]
fn usage_errors_exit_with_status_2() {
    compattn(&["forward"]).assert_error(2, &["required"]);
    compattn(&["verify", "--strategy", "no-such-strategy"]).assert_error(2, &["no-such-strategy"]);
    compattn(&["verify", "--mask-lengths", "3,x"]).assert_error(2, &["--mask-lengths"]);
    compattn(&["no-such-command"]).assert_error(2, &["no-such-command"]);
}

#[test]
fn invalid_sizes_are_errors_not_panics() {
    compattn(&["verify", "--dim", "0"]).assert_error(1, &["dim"]);
    compattn(&["verify", "--batch", "0"]).assert_error(1, &["--batch"]);
    compattn(&["verify", "--batch", "1", "--mask-lengths", "1,2"])
        .assert_error(1, &["--mask-lengths"]);
}

#[test]
fn info_lists_adapters_and_the_default_choice() {
    let run = compattn(&["info"]);
    run.assert_prints(&[
        "max_storage_buffer_binding_size",
        "TIMESTAMP_QUERY",
        "default selection",
    ]);
}

#[test]
fn shaders_writes_every_variant_as_valid_wgsl() {
    let dir = TempDir::new("shaders");
    let out = dir.path("wgsl");
    let run = compattn(&[
        "shaders",
        "--out",
        arg(&out),
        "--family",
        "cpu",
        "--dim",
        "16",
        "--dim-head",
        "8",
        "--searches",
        "2",
        "--retrievals",
        "2",
        "--seq",
        "6",
    ]);
    run.assert_success();
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(
        run.stdout
            .contains(&format!("wrote {} WGSL files", files.len())),
        "{}",
        run.transcript()
    );
    // At least one fused core and the GEMM the projections use. Which fused core depends on
    // the backend: the blocked kernel where the CPU family reads texels (Vulkan), the per-row
    // one where it does not (GL).
    for kernels in [&["fused_attention_", "blocked_attention_"][..], &["gemm_"]] {
        assert!(
            files.iter().any(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                kernels.iter().any(|k| name.starts_with(k))
            }),
            "no {kernels:?}* file among {files:?}\n{}",
            run.transcript()
        );
    }
    for file in &files {
        assert_eq!(
            file.extension().and_then(|e| e.to_str()),
            Some("wgsl"),
            "{}",
            file.display()
        );
        let text = std::fs::read_to_string(file).unwrap();
        let module = naga::front::wgsl::parse_str(&text)
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.emit_to_string(&text)));
        // The f16-storage variants declare `enable f16;` and get that one capability; the
        // variants that reduce through subgroups (`_REDUCTIONsubgroup` in the name) get the
        // subgroup capability (naga takes no `enable subgroups;`).
        let mut capabilities = if text.starts_with("enable f16;") {
            naga::valid::Capabilities::default() | naga::valid::Capabilities::SHADER_FLOAT16
        } else {
            naga::valid::Capabilities::default()
        };
        if file.to_string_lossy().contains("_REDUCTIONsubgroup") {
            capabilities |= naga::valid::Capabilities::SUBGROUP;
        }
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.emit_to_string(&text)));
    }

    // Usage errors: a bad profile is clap's (status 2), a zero size the library's (status 1).
    compattn(&["shaders", "--out", arg(&out), "--profile", "tpu"]).assert_error(2, &["tpu"]);
    compattn(&["shaders", "--out", arg(&out), "--dim", "0"]).assert_error(1, &["dim"]);
}

/// Arguments of a tiny `compattn bench` problem (fast on any adapter).
const TINY_BENCH: [&str; 16] = [
    "--batch",
    "2",
    "--dim",
    "16",
    "--dim-head",
    "8",
    "--searches",
    "2",
    "--retrievals",
    "3",
    "--warmup",
    "1",
    "--iters",
    "2",
    "--no-gemm",
    "--json",
];

/// stdout as one JSON value, or a failure that shows the transcript.
#[track_caller]
fn json_stdout(run: &Run) -> serde_json::Value {
    run.assert_success();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e})\n{}", run.transcript()))
}

/// The keys the issue requires of a `compattn bench --json` report, checked for sense.
#[track_caller]
fn check_bench_report(report: &serde_json::Value, strategy: &str, seq: u64, context: &str) {
    for key in [
        "strategy",
        "batch",
        "seq",
        "dim",
        "dim_head",
        "searches",
        "retrievals",
        "causal",
        "median_ms",
        "min_ms",
        "max_ms",
        "gflop",
        "gflops",
        "timing",
        "adapter",
        "backend",
        "gpu_bytes",
        "iters",
        "kernels",
    ] {
        assert!(
            report.get(key).is_some(),
            "no `{key}` in {report}\n{context}"
        );
    }
    assert_eq!(report["strategy"], strategy, "{context}");
    assert_eq!(report["seq"], seq, "{context}");
    assert_eq!(report["dim_head"], 8, "{context}");
    let ms = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    assert!(
        0.0 < ms("min_ms") && ms("min_ms") <= ms("median_ms") && ms("median_ms") <= ms("max_ms"),
        "{report}\n{context}"
    );
    assert!(
        ms("gflop") > 0.0 && ms("gflops") > 0.0,
        "{report}\n{context}"
    );
    let timing = report["timing"].as_str().unwrap_or_default();
    assert!(
        ["gpu-timestamps", "host-wall-clock"].contains(&timing),
        "{report}\n{context}"
    );
    let gpu_bytes = report["gpu_bytes"].as_u64().unwrap_or_default();
    let kernels = report["kernels"].as_array().cloned().unwrap_or_default();
    if strategy == "cpu" {
        assert_eq!(timing, "host-wall-clock", "{context}");
        assert_eq!(gpu_bytes, 0, "{context}");
    } else {
        assert!(gpu_bytes > 0, "{report}\n{context}");
        if timing == "gpu-timestamps" {
            assert!(!kernels.is_empty(), "{report}\n{context}");
        }
    }
    for kernel in &kernels {
        assert!(
            kernel["label"].is_string() && kernel["median_ms"].is_number(),
            "{kernel}\n{context}"
        );
    }
}

#[test]
fn bench_json_reports_every_strategy() {
    for strategy in ["fused", "unfused", "cpu"] {
        let mut args = vec!["bench", "--strategy", strategy, "--seq", "9"];
        args.extend(TINY_BENCH);
        let run = compattn(&args);
        check_bench_report(&json_stdout(&run), strategy, 9, &run.transcript());
    }
}

#[test]
fn bench_decode_reports_decode_recompute_and_the_cache() {
    let mut args = vec!["bench", "--decode", "--context", "40"];
    args.extend(TINY_BENCH);
    let run = compattn(&args);
    let report = json_stdout(&run);
    for key in [
        "decode_ms",
        "recompute_ms",
        "tokens_per_s",
        "copy_ms",
        "speedup",
    ] {
        let value = report[key].as_f64().unwrap_or(f64::NAN);
        assert!(
            value.is_finite() && value > 0.0,
            "{key} = {value}: {}",
            run.transcript()
        );
    }
    assert!(
        report["cache_bytes"].as_u64().unwrap_or(0) > 0,
        "{}",
        run.transcript()
    );
    assert_eq!(report["context"], 40, "{}", run.transcript());
    assert_eq!(report["precision"], "f32", "{}", run.transcript());
}

/// `--precision f16`: half the key and value bytes of the f32 run where the device has
/// shader-f16 (Vulkan), else an error that names the feature (GL).
#[test]
fn bench_decode_in_f16_halves_the_kv_bytes_or_names_the_feature() {
    let run_with = |precision: &str| {
        let mut args = vec![
            "bench",
            "--decode",
            "--context",
            "40",
            "--precision",
            precision,
        ];
        args.extend(TINY_BENCH);
        compattn(&args)
    };
    // A bad precision is a usage error.
    run_with("bf16").assert_error(2, &["bf16"]);
    let f16 = run_with("f16");
    if f16.code != Some(0) {
        f16.assert_error(1, &["shader-f16"]);
        return;
    }
    let (f16_report, f32_report) = (json_stdout(&f16), json_stdout(&run_with("f32")));
    assert_eq!(f16_report["precision"], "f16", "{}", f16.transcript());
    let kv = |r: &serde_json::Value| r["kv_bytes"].as_u64().unwrap_or(0);
    assert!(kv(&f16_report) > 0, "{}", f16.transcript());
    assert_eq!(2 * kv(&f16_report), kv(&f32_report), "{}", f16.transcript());
}

#[test]
fn bench_decode_sweep_writes_a_plot_and_one_json_object() {
    let dir = TempDir::new("bench-decode-sweep");
    let svg = dir.path("decode.svg");
    let mut args = vec![
        "bench",
        "--decode",
        "--sweep",
        "--seq-list",
        "8,24",
        "--out",
        arg(&svg),
    ];
    args.extend(TINY_BENCH);
    let run = compattn(&args);
    let sweep = json_stdout(&run);
    let results = sweep["results"].as_array().cloned().unwrap_or_default();
    let contexts: Vec<u64> = results
        .iter()
        .map(|r| r["context"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(contexts, [8, 24], "{}", run.transcript());
    for r in &results {
        assert!(
            r["decode_ms"].as_f64().unwrap_or(0.0) > 0.0,
            "{}",
            run.transcript()
        );
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.contains("<svg") && plot.contains("decode step"),
        "{plot}"
    );
}

#[test]
fn soak_checks_every_forward_and_reports_flat_memory() {
    let run = compattn(&["soak", "--forwards", "30", "--json"]);
    let report = json_stdout(&run);
    assert_eq!(report["forwards"], 30, "{}", run.transcript());
    assert_eq!(report["gpu_growth_bytes"], 0, "{}", run.transcript());
    assert!(
        report["worst_error"].as_f64().unwrap_or(1.0) <= 1e-4,
        "{}",
        run.transcript()
    );
    compattn(&["soak", "--forwards", "0"]).assert_error(1, &["--forwards"]);
}

/// Without `--no-gemm`, a GPU forward is compared with our GEMM sampled once after each of its
/// timed forwards: as many GEMM samples as forwards, and the fraction against their median.
#[test]
fn bench_compares_with_our_gemm_timed_between_its_forwards() {
    let tiny: Vec<&str> = TINY_BENCH
        .iter()
        .copied()
        .filter(|a| *a != "--no-gemm")
        .collect();
    let mut args = vec!["bench", "--strategy", "fused", "--seq", "9"];
    args.extend(tiny);
    let run = compattn(&args);
    let report = json_stdout(&run);
    let transcript = run.transcript();
    let gemm = &report["gemm"];
    assert_eq!(gemm["samples"], report["iters"], "{report}\n{transcript}");
    assert_eq!(gemm["size"], 1024, "{report}\n{transcript}");
    let expected =
        report["gflops"].as_f64().unwrap_or(f64::NAN) / gemm["gflops"].as_f64().unwrap_or(f64::NAN);
    let fraction = report["fraction_of_gemm"].as_f64().unwrap_or(0.0);
    assert!(
        fraction > 0.0 && (fraction - expected).abs() <= 1e-9 * expected,
        "{report}\n{transcript}"
    );

    // No GEMM with --no-gemm, nor for the CPU reference (no adapter is opened).
    for (strategy, skip) in [("fused", true), ("cpu", false)] {
        let mut args = vec!["bench", "--strategy", strategy, "--seq", "9"];
        args.extend(
            TINY_BENCH
                .iter()
                .copied()
                .filter(|a| skip || *a != "--no-gemm"),
        );
        let run = compattn(&args);
        let report = json_stdout(&run);
        for key in ["gemm", "fraction_of_gemm", "core_fraction_of_gemm"] {
            assert!(
                report[key].is_null(),
                "{key}: {report}\n{}",
                run.transcript()
            );
        }
    }
}

#[test]
fn bench_prints_a_table_without_json() {
    let run = compattn(&[
        "bench",
        "--strategy",
        "cpu",
        "--seq",
        "5",
        "--dim",
        "8",
        "--dim-head",
        "4",
        "--iters",
        "1",
    ]);
    run.assert_prints(&["cpu", "GFLOP/s", "host wall time"]);
}

#[test]
fn bench_sweep_writes_a_plot_and_one_json_object() {
    let dir = TempDir::new("bench-sweep");
    let svg = dir.path("sweep.svg");
    let mut args = vec![
        "bench",
        "--sweep",
        "--seq-list",
        "4,8",
        "--cpu-max-seq",
        "4",
        "--out",
        arg(&svg),
    ];
    args.extend(TINY_BENCH);
    let run = compattn(&args);
    let sweep = json_stdout(&run);
    let results = sweep["results"].as_array().cloned().unwrap_or_default();
    // fused and unfused at both n, the CPU reference at n = 4 only.
    assert_eq!(results.len(), 5, "{}", run.transcript());
    for result in &results {
        let strategy = result["strategy"].as_str().unwrap_or_default();
        let seq = result["seq"].as_u64().unwrap_or_default();
        check_bench_report(result, strategy, seq, &run.transcript());
    }
    assert_eq!(
        sweep["skipped"][0]["strategy"],
        "cpu",
        "{}",
        run.transcript()
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("fused"), "{plot}");
}

/// `bench --suite --quick`: every part measured (or skipped with the library's reason), each
/// forward with its fraction of our GEMM, the JSON and the Markdown written, and the same table
/// on stdout. Its misuses are errors.
#[test]
fn bench_suite_measures_every_part_and_writes_json_and_markdown() {
    let dir = TempDir::new("bench-suite");
    let (json, markdown) = (dir.path("suite.json"), dir.path("suite.md"));
    let run = compattn(&[
        "bench",
        "--suite",
        "--quick",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
        arg(&json),
        "--markdown",
        arg(&markdown),
    ]);
    run.assert_success();
    let text = std::fs::read_to_string(&json).unwrap();
    let suite: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{}", run.transcript()));
    let transcript = run.transcript();
    assert_eq!(suite["quick"], true, "{transcript}");
    assert_eq!(suite["warmup"], 1, "at least one warm-up: {transcript}");
    let gemm = suite["gemm"]["result"]["gflops"].as_f64().unwrap_or(0.0);
    assert!(gemm > 0.0, "{transcript}");
    let forwards = suite["forwards"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = forwards.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        ["README", "r 4", "the paper's 8 × 8", "target", "r 1"],
        "{transcript}"
    );
    for part in forwards.iter().chain([&suite["long_sequence"]]) {
        let result = &part["result"];
        // Each forward is compared with our GEMM sampled after each of its timed samples (one
        // here, `--iters 1`), not with the suite's GEMM row.
        let beside = &result["gemm"];
        assert_eq!(beside["samples"], 1, "{part}\n{transcript}");
        let fraction = result["fraction_of_gemm"].as_f64().unwrap_or(0.0);
        let expected = result["gflops"].as_f64().unwrap_or(f64::NAN)
            / beside["gflops"].as_f64().unwrap_or(f64::NAN);
        assert!(
            fraction > 0.0 && (fraction - expected).abs() <= 1e-9 * expected,
            "{part}\n{transcript}"
        );
        // The core's share exists where the adapter times kernels (not on GL).
        if let Some(core_gflops) = result["core_gflops"].as_f64() {
            let core = result["core_fraction_of_gemm"].as_f64().unwrap_or(0.0);
            let expected = core_gflops / beside["gflops"].as_f64().unwrap_or(f64::NAN);
            assert!(
                core > 0.0 && (core - expected).abs() <= 1e-9 * expected,
                "{part}\n{transcript}"
            );
        }
        // What ran, with the core's tiling, in the JSON and in the part's table row.
        let plan = result["plan"].as_str().unwrap_or_default();
        assert!(
            plan.contains("family") && plan.contains("core "),
            "{part}\n{transcript}"
        );
        assert!(run.stdout.contains(plan), "{plan}\n{transcript}");
    }
    assert!(
        suite["decode"]["result"]["decode_over_copy"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        suite["training_step"]["result"]["step_ms"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    // f16 runs where the adapter has shader-f16, else it is skipped with the reason.
    let f16 = &suite["f16_against_f32"];
    assert!(
        f16["result"]["f16_over_f32"].as_f64().unwrap_or(0.0) > 0.0
            || f16["skipped"].as_str().unwrap_or("").contains("shader-f16"),
        "{f16}\n{transcript}"
    );
    for part in forwards
        .iter()
        .chain([&suite["decode"], &suite["training_step"]])
    {
        assert!(part.get("failed").is_none(), "{part}\n{transcript}");
    }
    let table = std::fs::read_to_string(&markdown).unwrap();
    // Every row has the header's seven pipes: no reason broke out of its cell.
    for line in table.lines().filter(|l| l.starts_with('|')) {
        let pipes = line.replace("\\|", "").matches('|').count();
        assert_eq!(pipes, 7, "{line}\n{table}");
    }
    let rows = table.lines().filter(|l| l.starts_with("| ")).count();
    assert_eq!(rows, 11, "a header and ten parts:\n{table}");
    // Each forward row names the GEMM its fractions divide by (6 rows of forwards).
    let beside = table.matches("our GEMM beside it ").count();
    assert_eq!(beside, 6, "{table}");
    assert!(run.stdout.contains(table.trim()), "{transcript}");

    // Misuses: --json without a file, a suite with a size, --markdown alone, --json FILE elsewhere.
    compattn(&["bench", "--suite", "--json"]).assert_error(1, &["--json results.json"]);
    compattn(&["bench", "--suite", "--seq", "8"]).assert_error(2, &["--seq"]);
    compattn(&["bench", "--suite", "--no-gemm"]).assert_error(2, &["--no-gemm"]);
    compattn(&["bench", "--suite", "--iters", "0"]).assert_error(1, &["--iters"]);
    compattn(&["bench", "--markdown", "x.md"]).assert_error(2, &["required arguments"]);
    compattn(&["bench", "--gemm", "8", "--json", "x.json"]).assert_error(1, &["only --suite"]);
}

#[test]
fn bench_gemm_times_every_kernel() {
    let run = compattn(&[
        "bench", "--gemm", "8,20", "--warmup", "0", "--iters", "1", "--json",
    ]);
    let gemm = json_stdout(&run);
    let results = gemm["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 6, "{}", run.transcript());
    for result in &results {
        assert!(
            result["gflops"].as_f64().is_some_and(|g| g > 0.0),
            "{result}\n{}",
            run.transcript()
        );
    }
}

#[test]
fn bench_bad_arguments_are_errors_not_panics() {
    compattn(&["bench", "--strategy", "tpu"]).assert_error(2, &["tpu"]);
    compattn(&["bench", "--seq-list", "8"]).assert_error(2, &["required"]);
    compattn(&["bench", "--sweep", "--strategy", "fused"]).assert_error(2, &["--strategy"]);
    compattn(&["bench", "--iters", "0"]).assert_error(1, &["--iters"]);
    compattn(&["bench", "--dim", "0"]).assert_error(1, &["dim"]);
    compattn(&["bench", "--sweep", "--seq-list", "8,0"]).assert_error(1, &["--seq-list"]);
    compattn(&["bench", "--gemm", "0"]).assert_error(1, &["--gemm"]);
}

/// `compattn forward` of a causal case file (weights, input and output in one) to `out`, with
/// `extra` arguments.
fn forward_causal_case(file: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "forward",
        "--weights",
        arg(file),
        "--input",
        arg(file),
        "--causal",
        "--output",
        arg(out),
    ];
    args.extend(extra);
    compattn(&args)
}

/// `forward --maps` on the causal reference case: every query row's search attention sums to 1
/// over the keys and is exactly 0 above the diagonal, every retrieval selection sums to 1;
/// `--maps-rows` gives those rows only, the same values; `plot` draws the file.
#[test]
fn forward_maps_writes_causal_attention_maps() {
    let dir = TempDir::new("forward-maps");
    let file = golden("causal");
    assert!(golden_causal("causal"));
    let forward = |maps: &Path, extra: &[&str]| {
        let out = dir.path("y.safetensors");
        let run = forward_causal_case(&file, &out, &[&["--maps", arg(maps)], extra].concat());
        run.assert_prints(&["steady-state", "wrote attention maps", "bytes to"]);
        AttentionMaps::from_safetensors(&std::fs::read(maps).unwrap()).unwrap()
    };

    let all = dir.path("maps.safetensors");
    let maps = forward(&all, &[]);
    let (b, s, n, r) = (2, 2, 19, 3);
    assert_eq!(
        (maps.batch, maps.searches, maps.seq, maps.retrievals),
        (b, s, n, r)
    );
    assert_eq!(maps.query_rows, (0..n).collect::<Vec<_>>());
    assert_eq!(maps.search.len(), b * s * n * n);
    assert_eq!(maps.selection.len(), b * s * n * r);
    for batch in 0..b {
        for sigma in 0..s {
            for (q, &i) in maps.query_rows.iter().enumerate() {
                let search = maps.search_row(batch, sigma, q);
                let sum: f32 = search.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "search row {batch},{sigma},{i}: {sum}"
                );
                assert!(
                    search[i + 1..].iter().all(|&a| a == 0.0),
                    "causal: row {i} attends a later key: {search:?}"
                );
                let selection = maps.selection_row(batch, sigma, q);
                let sum: f32 = selection.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5,
                    "selection {batch},{sigma},{i}: {sum}"
                );
                assert!(selection.iter().all(|&c| (0.0..=1.0).contains(&c)));
            }
        }
    }

    let some = forward(&dir.path("rows.safetensors"), &["--maps-rows", "0,5,9"]);
    assert_eq!(some.query_rows, [0, 5, 9]);
    assert_eq!(some.search.len(), b * s * 3 * n);
    assert_eq!(some.selection.len(), b * s * 3 * r);
    for batch in 0..b {
        for sigma in 0..s {
            for (q, &i) in some.query_rows.iter().enumerate() {
                let close =
                    |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(x, y)| (x - y).abs() < 1e-6);
                assert!(close(
                    some.search_row(batch, sigma, q),
                    maps.search_row(batch, sigma, i)
                ));
                assert!(close(
                    some.selection_row(batch, sigma, q),
                    maps.selection_row(batch, sigma, i)
                ));
            }
        }
    }

    let plots = dir.path("plots");
    let run = compattn(&["plot", arg(&all), "--out", arg(&plots), "--batch", "1"]);
    run.assert_prints(&["search_b1_s0.svg", "selection_b1_s1.svg", "index.html"]);
    let mut written: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "index.html",
            "search_b1_s0.svg",
            "search_b1_s1.svg",
            "selection_b1_s0.svg",
            "selection_b1_s1.svg"
        ]
    );
}

/// Maps over the size limit, bad query rows and maps flags without `--maps` are refused before
/// anything is written.
#[test]
fn forward_maps_refuses_bad_requests() {
    let dir = TempDir::new("forward-maps-refusals");
    let file = golden("causal");
    let out = dir.path("y.safetensors");
    let maps = dir.path("maps.safetensors");
    let forward = |extra: &[&str]| forward_causal_case(&file, &out, extra);
    forward(&["--maps", arg(&maps), "--maps-max-mib", "0"]).assert_error(
        1,
        &["attention maps of 19 query rows", "MapsOptions::max_bytes"],
    );
    forward(&["--maps", arg(&maps), "--maps-rows", "5,3"])
        .assert_error(1, &["--maps-rows", "strictly increasing"]);
    forward(&["--maps", arg(&maps), "--maps-rows", "0,19"])
        .assert_error(1, &["--maps-rows", "row 19 is past the sequence (n = 19)"]);
    forward(&["--maps", arg(&maps), "--maps-rows", "99"])
        .assert_error(1, &["--maps-rows", "row 99 is past the sequence (n = 19)"]);
    assert!(!out.exists() && !maps.exists(), "a refusal wrote a file");
    forward(&["--maps", arg(&maps), "--maps-rows", "a"]).assert_error(2, &["--maps-rows"]);
    for flag in [["--maps-rows", "0,5"], ["--maps-max-mib", "1"]] {
        let run = forward(&flag);
        run.assert_error(2, &["required arguments were not provided"]);
        assert!(
            run.stderr.contains("--maps <M.safetensors>"),
            "{}",
            run.transcript()
        );
    }
}

/// Maps with recognisable values: query row `i`'s search attention falls off with `|i - j|`.
fn sample_maps(batch: usize, searches: usize, query_rows: Vec<usize>, seq: usize) -> AttentionMaps {
    let retrievals = 2;
    let mut search = Vec::new();
    let mut selection = Vec::new();
    for b in 0..batch {
        for sigma in 0..searches {
            for &i in &query_rows {
                let row: Vec<f32> = (0..seq)
                    .map(|j| 1.0 / (1.0 + (i.abs_diff(j) + b + sigma) as f32))
                    .collect();
                let sum: f32 = row.iter().sum();
                search.extend(row.iter().map(|a| a / sum));
                let c = (i % 5) as f32 / 4.0;
                selection.extend([c, 1.0 - c]);
            }
        }
    }
    AttentionMaps {
        batch,
        searches,
        retrievals,
        seq,
        query_rows,
        search,
        selection,
    }
}

fn fills(svg: &str) -> std::collections::BTreeSet<&str> {
    svg.match_indices("fill=\"#")
        .map(|(at, _)| &svg[at + 7..at + 13])
        .collect()
}

#[test]
fn plot_writes_a_heatmap_per_batch_row_and_search() {
    let dir = TempDir::new("plot");
    let maps_file = dir.path("maps.safetensors");
    let maps = sample_maps(2, 3, vec![0, 4, 7, 11], 12);
    std::fs::write(&maps_file, maps.to_safetensors().unwrap()).unwrap();
    let out = dir.path("plots");
    let run = compattn(&["plot", arg(&maps_file), "--out", arg(&out)]);
    let mut expected = vec!["index.html".to_string()];
    for b in 0..2 {
        for s in 0..3 {
            expected.push(format!("search_b{b}_s{s}.svg"));
            expected.push(format!("selection_b{b}_s{s}.svg"));
        }
    }
    let needles: Vec<&str> = expected.iter().map(String::as_str).collect();
    run.assert_prints(&needles);
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    for name in &expected[1..] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "{name}: {}",
            &svg[..svg.len().min(200)]
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        // 4 query rows × 12 keys (or 2 retrievals) cells, and a colour bar.
        let cells = if name.starts_with("search") { 48 } else { 8 };
        assert!(svg.matches("<rect").count() > cells, "{name}");
        assert!(fills(&svg).len() >= 4, "{name}: fills {:?}", fills(&svg));
        assert!(index.contains(&format!("src=\"{name}\"")), "{index}");
    }
    let search = std::fs::read_to_string(out.join("search_b0_s1.svg")).unwrap();
    for label in [
        "key j",
        "query i",
        "search attention, batch row 0, search 1",
        ">\n11\n<",
    ] {
        assert!(search.contains(label), "{label:?} not in\n{search}");
    }
    let selection = std::fs::read_to_string(out.join("selection_b1_s2.svg")).unwrap();
    assert!(selection.contains("retrieval ρ") && selection.contains("query i"));

    // One batch row only.
    let one = dir.path("one");
    compattn(&["plot", arg(&maps_file), "--out", arg(&one), "--batch", "1"])
        .assert_prints(&["search_b1_s2.svg"]);
    assert_eq!(std::fs::read_dir(&one).unwrap().count(), 1 + 2 * 3);
    assert!(!one.join("search_b0_s0.svg").exists());

    // A long sequence is drawn in blocks, so the SVG stays small.
    let long_file = dir.path("long.safetensors");
    let long = sample_maps(1, 1, (0..600).step_by(2).collect(), 600);
    std::fs::write(&long_file, long.to_safetensors().unwrap()).unwrap();
    let long_out = dir.path("long");
    compattn(&["plot", arg(&long_file), "--out", arg(&long_out)]).assert_success();
    let svg = std::fs::read_to_string(long_out.join("search_b0_s0.svg")).unwrap();
    assert!(
        svg.contains("blocks of 2 rows × 3 columns"),
        "{}",
        &svg[..1000]
    );
    assert!(svg.len() < 8 << 20, "{} bytes", svg.len());
}

#[test]
fn plot_refuses_what_is_not_a_maps_file() {
    let dir = TempDir::new("plot-refusals");
    let out = dir.path("plots");
    // A reference case holds weights and `input`, not maps.
    compattn(&["plot", arg(&golden("causal")), "--out", arg(&out)])
        .assert_error(1, &["search_attention", "compattn forward --maps"]);
    compattn(&[
        "plot",
        arg(&dir.path("absent.safetensors")),
        "--out",
        arg(&out),
    ])
    .assert_error(1, &["absent.safetensors"]);
    let garbage = dir.path("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    compattn(&["plot", arg(&garbage), "--out", arg(&out)]).assert_error(1, &[]);
    assert!(!out.exists(), "a refusal created the output directory");

    let maps_file = dir.path("maps.safetensors");
    std::fs::write(
        &maps_file,
        sample_maps(2, 1, vec![1, 2], 3).to_safetensors().unwrap(),
    )
    .unwrap();
    compattn(&["plot", arg(&maps_file), "--out", arg(&out), "--batch", "2"])
        .assert_error(1, &["--batch", "2 batch rows"]);
    // --out naming a file.
    compattn(&["plot", arg(&maps_file), "--out", arg(&garbage)]).assert_error(1, &["garbage"]);
    let run = compattn(&["plot", arg(&maps_file)]);
    run.assert_error(2, &["required arguments were not provided"]);
    assert!(run.stderr.contains("--out <DIR>"), "{}", run.transcript());
}

/// `--causal` and a constructor's `"causal"` mean the same thing however they are combined
/// (issue 16): for every format with a `causal` constructor argument (lucidrains, Keras,
/// xformers), the flag on or off × the file's `causal` true, false or absent. Either one makes
/// the layer causal; the flag with `"causal": false` is an error naming both. The non-causal
/// variant cases match the original's output only when the layer is not causal, and the
/// causal reference case only when it is, so a wrong combination shows in the output too.
/// fairseq has no such argument: `--causal` is its way (its `attn_mask`), and `"causal"` in
/// its constructor is refused as unknown, as README documents.
#[test]
fn forward_causal_flag_and_constructor_causal_combine() {
    let dir = TempDir::new("forward-causal-combinations");
    let out = dir.path("y.safetensors");
    let cases = variants::case_dir();
    // (format, weights and input file, constructor without `causal`, is the file's output causal)
    let mut formats: Vec<(
        &str,
        PathBuf,
        serde_json::Map<String, serde_json::Value>,
        bool,
    )> = vec![(
        "lucidrains",
        golden("causal"),
        serde_json::json!({"format": "lucidrains"})
            .as_object()
            .unwrap()
            .clone(),
        true,
    )];
    for (folder, case) in [
        ("keras", "k01_defaults"),
        ("xformers", "x01_defaults_shared_proj"),
    ] {
        let json: serde_json::Value =
            serde_json::from_str(&variants::constructor_json(folder, case)).unwrap();
        let mut constructor = json.as_object().unwrap().clone();
        constructor.remove("causal");
        let file = cases.join(folder).join(format!("{case}.safetensors"));
        formats.push((folder, file, constructor, false));
    }
    for (format, file, constructor, causal_output) in &formats {
        for flag in [false, true] {
            for in_file in [None, Some(false), Some(true)] {
                let mut constructor = constructor.clone();
                if let Some(causal) = in_file {
                    constructor.insert("causal".into(), causal.into());
                }
                let config = dir.path(&format!("{format}-{in_file:?}.json"));
                std::fs::write(&config, serde_json::Value::Object(constructor).to_string())
                    .unwrap();
                let mut args = vec![
                    "forward",
                    "--weights",
                    arg(file),
                    "--config",
                    arg(&config),
                    "--input",
                    arg(file),
                    "--output",
                    arg(&out),
                ];
                if flag {
                    args.push("--causal");
                }
                let run = compattn(&args);
                let what = format!("{format}: --causal {flag}, \"causal\" in the file {in_file:?}");
                if flag && in_file == Some(false) {
                    run.assert_error(1, &["--causal", "\"causal\": false"]);
                    continue;
                }
                let causal = flag || in_file == Some(true);
                assert_eq!(run.code, Some(0), "{what}\n{}", run.transcript());
                assert!(
                    run.stdout
                        .contains(&format!("causal {}", if causal { "yes" } else { "no" })),
                    "{what}\n{}",
                    run.transcript()
                );
                let matches = if causal == *causal_output {
                    "yes"
                } else {
                    "no"
                };
                assert!(
                    run.stdout.contains(&format!("within 1e-4: {matches}")),
                    "{what}\n{}",
                    run.transcript()
                );
            }
        }
    }

    // fairseq: the flag is the way; a constructor's `causal` is not one of its arguments.
    let (folder, case) = ("fairseq", "f01_qk_rule");
    let file = cases.join(folder).join(format!("{case}.safetensors"));
    let json: serde_json::Value =
        serde_json::from_str(&variants::constructor_json(folder, case)).unwrap();
    let config = dir.path("fairseq.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let forward = |config: &Path, flag: bool| {
        let mut args = vec![
            "forward",
            "--weights",
            arg(&file),
            "--config",
            arg(config),
            "--input",
            arg(&file),
            "--output",
            arg(&out),
        ];
        if flag {
            args.push("--causal");
        }
        compattn(&args)
    };
    forward(&config, false).assert_prints(&["causal no", "within 1e-4: yes"]);
    forward(&config, true).assert_prints(&["causal yes", "within 1e-4: no"]);
    for causal in [false, true] {
        let mut constructor = json.as_object().unwrap().clone();
        constructor.insert("causal".into(), causal.into());
        let with_causal = dir.path(&format!("fairseq-{causal}.json"));
        std::fs::write(
            &with_causal,
            serde_json::Value::Object(constructor).to_string(),
        )
        .unwrap();
        for flag in [false, true] {
            forward(&with_causal, flag).assert_error(1, &["causal", "not a constructor argument"]);
        }
    }
}

/// An extra zero in a size is an error naming the option to change, within seconds, never an
/// allocator abort (issue 20): every command whose problem the user sizes asks the device's
/// plan and the host before it makes anything. (`demo` has fixed sizes; `soak`'s one number,
/// `--forwards`, sizes no allocation; `forward` reads sizes from files, whose readers check
/// them against the file's length.)
#[test]
fn sizes_too_large_are_errors_naming_the_option() {
    let dir = TempDir::new("too-large");
    let shaders_out = dir.path("shaders");
    let plot = dir.path("sweep.svg");
    let cases: [(&[&str], &str); 14] = [
        (&["bench", "--seq", "100000000"], "--seq 100000000"),
        (
            &["bench", "--batch", "100000", "--seq", "4096"],
            "--batch 100000",
        ),
        (&["bench", "--dim", "100000000"], "--dim 100000000"),
        (
            &["bench", "--strategy", "unfused", "--seq", "100000000"],
            "--seq",
        ),
        (
            &["bench", "--strategy", "cpu", "--seq", "100000000"],
            "--seq",
        ),
        (
            &["bench", "--decode", "--context", "100000000"],
            "--context 100000000",
        ),
        (
            &[
                "bench",
                "--decode",
                "--sweep",
                "--seq-list",
                "256,100000000",
                "--out",
                arg(&plot),
            ],
            "--seq-list 100000000",
        ),
        (
            &[
                "bench",
                "--sweep",
                "--seq-list",
                "128,100000000",
                "--out",
                arg(&plot),
            ],
            "--seq-list 100000000",
        ),
        (&["bench", "--gemm", "64,100000"], "--gemm 100000"),
        (
            &[
                "bench",
                "--decode",
                "--context",
                "64",
                "--iters",
                "100000000000000000",
            ],
            "--iters 100000000000000000",
        ),
        (&["verify", "--seq", "100000000"], "--seq 100000000"),
        (
            &["verify", "--batch", "100000", "--seq", "4096"],
            "--batch 100000",
        ),
        (&["verify", "--dim", "100000000"], "--dim 100000000"),
        (
            &["shaders", "--dim", "100000000", "--out", arg(&shaders_out)],
            "--dim 100000000",
        ),
    ];
    for (args, option) in cases {
        let start = std::time::Instant::now();
        let run = compattn(args);
        let seconds = start.elapsed().as_secs_f64();
        run.assert_error(1, &[option]);
        let errors = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count();
        assert_eq!(errors, 1, "{args:?}: one error line\n{}", run.transcript());
        assert!(
            !run.stderr.contains("memory allocation"),
            "{args:?}\n{}",
            run.transcript()
        );
        assert!(
            seconds < 30.0,
            "{args:?} took {seconds:.1} s\n{}",
            run.transcript()
        );
        assert!(!plot.exists(), "{args:?} wrote a plot");
    }
}

/// The training set tests write: `input`, `target` (F32) and `mask` (U8), as `compattn train`
/// reads them; any tensor may be left out or misshaped.
struct TrainingSet {
    input: (Vec<usize>, Vec<f32>),
    target: Option<(Vec<usize>, Vec<f32>)>,
    mask: Option<(Vec<usize>, Vec<u8>)>,
}

impl TrainingSet {
    fn write(&self, path: &Path) {
        use safetensors::Dtype;
        use safetensors::tensor::TensorView;
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let input = f32_bytes(&self.input.1);
        let target = self.target.as_ref().map(|(_, v)| f32_bytes(v));
        let mut tensors = vec![(
            "input",
            TensorView::new(Dtype::F32, self.input.0.clone(), &input).unwrap(),
        )];
        if let (Some((shape, _)), Some(bytes)) = (&self.target, &target) {
            tensors.push((
                "target",
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            ));
        }
        if let Some((shape, mask)) = &self.mask {
            tensors.push((
                "mask",
                TensorView::new(Dtype::U8, shape.clone(), mask).unwrap(),
            ));
        }
        std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    }
}

/// Seed of the training tests' random teacher, student and inputs (printed on failure).
const TRAIN_SEED: u64 = 0x7a1;
/// The training tests' layer: dim 16, d 4, 2 searches, 2 retrievals.
const TRAIN_DIM: usize = 16;
/// Sequences and tokens of the training tests' set.
const TRAIN_M: usize = 6;
const TRAIN_N: usize = 8;

/// A student checkpoint (returned, and saved to `weights`) and a teacher's training set: random
/// inputs with a padded last sequence, the teacher's f64 reference outputs as target.
fn teacher_student(weights: &Path) -> (compositional_attention::Weights, TrainingSet) {
    use compositional_attention::rng::Rng;
    use compositional_attention::testing::normal;
    use compositional_attention::{Config, Weights, reference};
    let config = Config::new(TRAIN_DIM)
        .dim_head(4)
        .num_searches(2)
        .num_retrievals(2);
    let teacher = Weights::random(config, TRAIN_SEED ^ 0x7ea).unwrap();
    let student = Weights::random(config, TRAIN_SEED).unwrap();
    student.save(weights).unwrap();
    let (m, n) = (TRAIN_M, TRAIN_N);
    let x = normal(&mut Rng::seed_from_u64(TRAIN_SEED), m * n * TRAIN_DIM, 1.0);
    let mut mask = vec![1u8; m * n];
    mask[(m - 1) * n + 5..].fill(0);
    let bools: Vec<bool> = mask.iter().map(|&v| v == 1).collect();
    let target = reference::forward(&teacher, &x, m, n, Some(&bools)).unwrap();
    let target: Vec<f32> = target.iter().map(|&v| v as f32).collect();
    let set = TrainingSet {
        input: (vec![m, n, TRAIN_DIM], x),
        target: Some((vec![m, n, TRAIN_DIM], target)),
        mask: Some((vec![m, n], mask)),
    };
    (student, set)
}

/// 30 steps at lr 1e-2 on a teacher's outputs: the JSON losses fall, the saved weights load
/// and differ from the start, and the plot is an SVG with a curve.
#[test]
fn train_fits_a_teacher_and_saves_loadable_weights() {
    let dir = TempDir::new("train_fits");
    let (weights, data) = (
        dir.path("student.safetensors"),
        dir.path("data.safetensors"),
    );
    let (out, plot) = (dir.path("trained.safetensors"), dir.path("loss.svg"));
    let (student, set) = teacher_student(&weights);
    set.write(&data);
    let run = compattn(&[
        "train",
        "--weights",
        arg(&weights),
        "--data",
        arg(&data),
        "--steps",
        "30",
        "--lr",
        "1e-2",
        "--batch",
        "3",
        "--dropout-seed",
        "5",
        "--out",
        arg(&out),
        "--plot",
        arg(&plot),
        "--json",
    ]);
    let context = format!("seed {TRAIN_SEED:#x}\n{}", run.transcript());
    let report = json_stdout(&run);
    let mut keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["losses", "ms_per_step", "steps"], "{context}");
    assert_eq!(report["steps"], 30, "{context}");
    assert!(report["ms_per_step"].as_f64().unwrap() > 0.0, "{context}");
    let losses: Vec<f64> = report["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 30, "{context}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{context}"
    );
    // Batches of 3 alternate between two halves of the set: compare like with like.
    let first = (losses[0] + losses[1]) / 2.0;
    let last = (losses[28] + losses[29]) / 2.0;
    eprintln!("loss {first:.4e} -> {last:.4e} (seed {TRAIN_SEED:#x})");
    assert!(
        last < 0.5 * first,
        "the loss fell only from {first:.4e} to {last:.4e}\n{context}"
    );

    let trained = compositional_attention::Weights::load(&out, false).unwrap();
    assert_eq!(trained.config().dim, TRAIN_DIM, "{context}");
    assert_eq!(
        trained.parameters().len(),
        student.parameters().len(),
        "{context}"
    );
    assert_ne!(
        trained, student,
        "the saved weights are the start's\n{context}"
    );

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert!(svg.contains("<polyline") && svg.contains("step"), "{svg}");
    assert_eq!(
        svg.matches('<').count(),
        svg.matches('>').count(),
        "unbalanced tags: {svg}"
    );

    // Without --json: a summary on stdout, the same file again.
    let run = compattn(&[
        "train",
        "--weights",
        arg(&weights),
        "--data",
        arg(&data),
        "--steps",
        "2",
        "--lr",
        "1e-3",
        "--out",
        arg(&out),
    ]);
    run.assert_prints(&["loss: step 1 ", "ms per step", "wrote the trained weights"]);
}

/// Every bad training set or option: exit status 1 and one `error:` line naming the problem.
#[test]
fn train_refuses_bad_data_and_options_naming_them() {
    let dir = TempDir::new("train_refuses");
    let (weights, data, out) = (
        dir.path("student.safetensors"),
        dir.path("data.safetensors"),
        dir.path("out.safetensors"),
    );
    let (_, good) = teacher_student(&weights);
    let (m, n, dim) = (TRAIN_M, TRAIN_N, TRAIN_DIM);
    let train = |set: &TrainingSet, extra: &[&str]| {
        set.write(&data);
        let mut args = vec!["train", "--weights", arg(&weights), "--data", arg(&data)];
        args.extend(["--out", arg(&out)]);
        // --steps 1 and --lr 1e-3 unless the case sets them.
        for (option, value) in [("--steps", "1"), ("--lr", "1e-3")] {
            if !extra.iter().any(|a| a.starts_with(option)) {
                args.extend([option, value]);
            }
        }
        args.extend(extra);
        compattn(&args)
    };
    let check = |run: Run, needles: &[&str]| {
        run.assert_error(1, needles);
        let errors = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count();
        assert_eq!(errors, 1, "{}", run.transcript());
        assert!(
            !out.exists(),
            "wrote weights after an error\n{}",
            run.transcript()
        );
    };
    let with = |edit: &dyn Fn(&mut TrainingSet)| {
        let mut set = TrainingSet {
            input: good.input.clone(),
            target: good.target.clone(),
            mask: good.mask.clone(),
        };
        edit(&mut set);
        set
    };

    let wide = with(&|s| {
        s.input = (vec![m, n, dim + 1], vec![0.5; m * n * (dim + 1)]);
    });
    check(train(&wide, &[]), &["input", "the layer's dim is 16"]);
    let short_target =
        with(&|s| s.target = Some((vec![m, n - 1, dim], vec![0.5; m * (n - 1) * dim])));
    check(
        train(&short_target, &[]),
        &["target", "expected shape [6, 8, 16]"],
    );
    let bad_mask = with(&|s| s.mask = Some((vec![m, n + 1], vec![1; m * (n + 1)])));
    check(train(&bad_mask, &[]), &["mask", "expected shape [6, 8]"]);
    let two_mask = with(&|s| s.mask = Some((vec![m, n], vec![2; m * n])));
    check(train(&two_mask, &[]), &["mask[0] = 2"]);
    let nan = with(&|s| s.input.1[7] = f32::NAN);
    check(
        train(&nan, &[]),
        &["input holds a non-finite value at element 7"],
    );
    let inf = with(&|s| {
        if let Some((_, t)) = &mut s.target {
            t[3] = f32::INFINITY;
        }
    });
    check(
        train(&inf, &[]),
        &["target holds a non-finite value at element 3"],
    );
    let no_target = with(&|s| s.target = None);
    check(train(&no_target, &[]), &["missing tensor `target`"]);
    for shape in [vec![0, n, dim], vec![m, 0, dim]] {
        let empty = TrainingSet {
            input: (shape.clone(), Vec::new()),
            target: Some((shape, Vec::new())),
            mask: None,
        };
        check(train(&empty, &[]), &["training set is empty"]);
    }
    check(train(&good, &["--steps", "0"]), &["--steps", "at least 1"]);
    check(train(&good, &["--lr=-1"]), &["--lr", "finite number > 0"]);
    check(
        train(&good, &["--lr", "NaN"]),
        &["--lr", "finite number > 0"],
    );
    check(train(&good, &["--batch", "0"]), &["--batch", "at least 1"]);
    check(train(&good, &["--batch", "7"]), &["--batch", "m = 6"]);

    // No `input` at all: the weights file itself is not a training set.
    let run = compattn(&[
        "train",
        "--weights",
        arg(&weights),
        "--data",
        arg(&weights),
        "--steps",
        "1",
        "--lr",
        "1e-3",
        "--out",
        arg(&out),
    ]);
    check(run, &["missing tensor `input`"]);
}

/// `bench --cross --json`: cross-attention beside self-attention at a tiny shape, every time
/// positive, `cross_over_self` their ratio; a memory size past the device is refused naming
/// `--memory-seq`.
#[test]
fn bench_cross_times_the_memory_cross_and_self_attention() {
    let tiny = [
        "--batch",
        "2",
        "--seq",
        "9",
        "--dim",
        "16",
        "--dim-head",
        "4",
        "--searches",
        "2",
        "--retrievals",
        "2",
        "--warmup",
        "1",
        "--iters",
        "2",
    ];
    let run = compattn(
        &[
            &["bench", "--cross", "--memory-seq", "7", "--json"][..],
            &tiny,
        ]
        .concat(),
    );
    let report = json_stdout(&run);
    for key in [
        "memory_ms",
        "cross_ms",
        "self_ms",
        "cross_over_self",
        "decode_ms",
        "decode_loop_ms",
        "reproject_loop_ms",
    ] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {}",
            run.transcript()
        );
    }
    assert_eq!(report["memory_seq"], 7, "{}", run.transcript());
    assert_eq!(report["bias"], true, "{}", run.transcript());
    assert!(
        report["memory_bytes"].as_u64() > Some(0),
        "{}",
        run.transcript()
    );
    let ratio = report["cross_ms"].as_f64().unwrap() / report["self_ms"].as_f64().unwrap();
    let reported = report["cross_over_self"].as_f64().unwrap();
    assert!(
        (ratio - reported).abs() <= 1e-9 * ratio,
        "{}",
        run.transcript()
    );
    let run = compattn(
        &[
            &[
                "bench",
                "--cross",
                "--no-bias",
                "--memory-seq",
                "400000000000",
            ][..],
            &tiny,
        ]
        .concat(),
    );
    assert_ne!(run.code, Some(0), "{}", run.transcript());
    assert!(run.stderr.contains("--memory-seq"), "{}", run.transcript());
}

/// `bench --backward --json`: exactly the six keys, every number positive, at a tiny shape.
#[test]
fn bench_backward_reports_forward_training_forward_and_backward() {
    let run = compattn(&[
        "bench",
        "--backward",
        "--batch",
        "2",
        "--seq",
        "12",
        "--dim",
        "16",
        "--dim-head",
        "4",
        "--searches",
        "2",
        "--retrievals",
        "2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--json",
    ]);
    let report = json_stdout(&run);
    let mut keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "activation_bytes",
            "backward_ms",
            "backward_over_forward",
            "forward_ms",
            "forward_train_ms",
            "gpu_bytes",
        ],
        "{}",
        run.transcript()
    );
    for key in keys {
        let value = report[key].as_f64().unwrap_or(f64::NAN);
        assert!(value > 0.0, "{key} = {value}\n{}", run.transcript());
    }
    let ratio = report["backward_ms"].as_f64().unwrap() / report["forward_ms"].as_f64().unwrap();
    let reported = report["backward_over_forward"].as_f64().unwrap();
    assert!(
        (ratio - reported).abs() <= 1e-9 * ratio,
        "{}",
        run.transcript()
    );
    assert!(
        report["gpu_bytes"].as_u64() > report["activation_bytes"].as_u64(),
        "{}",
        run.transcript()
    );
    // Without --json: a table.
    let run = compattn(&[
        "bench",
        "--backward",
        "--seq",
        "12",
        "--dim",
        "16",
        "--dim-head",
        "4",
        "--searches",
        "2",
        "--retrievals",
        "2",
        "--warmup",
        "0",
        "--iters",
        "1",
    ]);
    run.assert_prints(&[
        "forward (eval)",
        "forward (train)",
        "backward",
        "GPU memory",
    ]);
}
