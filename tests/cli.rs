//! The `compattn` binary end to end: it is run as a user would run it, on the reference cases in
//! `tests/golden/` and on broken inputs, and judged by its exit status, its messages and the
//! files it writes.
//!
//! The adapter is whatever the environment picks (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
//! `COMPATTN_LIMITS` are inherited by the child process).

use std::path::{Path, PathBuf};
use std::process::Command;

use compositional_attention::io::read_output;
use compositional_attention::verify::ErrorStats;
use compositional_attention::{Strategy, weights};

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
    let output = Command::new(env!("CARGO_BIN_EXE_compattn"))
        .args(args)
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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
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
    compattn(&["verify", "--batch", "0"]).assert_error(1, &["input", "expected shape"]);
    compattn(&["verify", "--batch", "1", "--mask-lengths", "1,2"])
        .assert_error(1, &["--mask-lengths"]);
}

#[test]
fn info_lists_adapters_and_the_default_choice() {
    let run = compattn(&["info"]);
    run.assert_success();
    for needle in [
        "max_storage_buffer_binding_size",
        "TIMESTAMP_QUERY",
        "default selection",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle}\n{}",
            run.transcript()
        );
    }
}
