//! The reference cases produced by the PyTorch package (`tests/golden/`, a copy of
//! `shared/golden/`), loaded through the crate's own safetensors path, on every strategy.
//!
//! Each case file holds the parameters, `input`, optional `mask` and the reference `output`;
//! `causal` comes from the JSON sidecar. Set `COMPATTN_GOLDEN_DIR` to run another directory of
//! cases in the same format as well.

mod common;

use std::path::{Path, PathBuf};

use compositional_attention::io::{Input, read_output};
use compositional_attention::{CompositionalAttention, Strategy, Weights, reference};

/// Every `*.safetensors` case in `dir`, with `causal` from its JSON sidecar.
fn cases(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            let sidecar = std::fs::read_to_string(p.with_extension("json"))
                .unwrap_or_else(|e| panic!("{}: sidecar: {e}", p.display()));
            let causal = sidecar.contains("\"causal\": true");
            (p, causal)
        })
        .collect();
    cases.sort();
    cases
}

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")];
    if let Ok(extra) = std::env::var("COMPATTN_GOLDEN_DIR") {
        dirs.push(PathBuf::from(extra));
    }
    dirs
}

#[test]
fn golden_cases_on_every_strategy() {
    let gpu = common::gpu();
    let mut checked = 0;
    for dir in case_dirs() {
        for (path, causal) in cases(&dir) {
            let bytes = std::fs::read(&path).unwrap();
            let weights = Weights::from_safetensors(&bytes, causal, "").unwrap();
            let input = Input::from_safetensors(&bytes).unwrap();
            let (shape, expected) = read_output(&bytes).unwrap().expect("case has `output`");
            assert_eq!(shape, [input.batch, input.seq, input.dim]);
            let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
            for strategy in Strategy::ALL {
                let mut layer = CompositionalAttention::new(gpu, &weights).unwrap();
                layer.set_strategy(strategy);
                let y = pollster::block_on(layer.forward_input(&input)).unwrap();
                let what = format!("{} ({strategy})", path.display());
                let stats = common::assert_close(&what, &y, &expected, 1e-4);
                eprintln!("{what}: {stats}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "expected the 7 shipped cases, found {checked}"
    );
}

/// The CPU reference itself reproduces PyTorch's float64 output (stored as f32), which is what
/// makes it an oracle for everything else.
#[test]
fn reference_matches_pytorch() {
    for dir in case_dirs() {
        for (path, causal) in cases(&dir) {
            let bytes = std::fs::read(&path).unwrap();
            let weights = Weights::from_safetensors(&bytes, causal, "").unwrap();
            let input = Input::from_safetensors(&bytes).unwrap();
            let (_, expected) = read_output(&bytes).unwrap().unwrap();
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
            // The stored output is f64 rounded to f32: agreement to f32 rounding.
            common::assert_close(&path.display().to_string(), &y32, &expected, 1e-6);
        }
    }
}
