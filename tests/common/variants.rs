//! The golden-variants cases (`tests/golden-variants/`, a copy of `shared/golden-variants/`):
//! their names, files and constructor arguments.

use std::path::{Path, PathBuf};

use compositional_attention::checkpoint::{CheckpointOptions, Constructor};

/// Every case: (format folder, case name).
pub const CASES: [(&str, &str); 6] = [
    ("keras", "k01_defaults"),
    ("keras", "k02_prenorm"),
    ("fairseq", "f01_qk_rule"),
    ("fairseq", "f02_score_net_padding"),
    ("xformers", "x01_defaults_shared_proj"),
    ("xformers", "x02_separate_proj_qk_rule"),
];

/// `tests/golden-variants/` of the repository, from the library's tests or the command line's
/// (`cli/tests/cli.rs` includes this file).
pub fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/golden-variants"))
        .find(|dir| dir.is_dir())
        .expect("tests/golden-variants in the repository")
}

/// The bytes of a case's safetensors file (weights, `input`, `output`, maybe `mask`).
pub fn case_bytes(folder: &str, case: &str) -> Vec<u8> {
    std::fs::read(case_dir().join(folder).join(format!("{case}.safetensors"))).unwrap()
}

/// The case's constructor arguments with `"format"`, as `compattn forward --config` takes them.
pub fn constructor_json(folder: &str, case: &str) -> String {
    let text =
        std::fs::read_to_string(case_dir().join(folder).join(format!("{case}.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut constructor = json["constructor"].as_object().unwrap().clone();
    constructor.insert("format".into(), folder.into());
    serde_json::Value::Object(constructor).to_string()
}

/// Reading options with the case's constructor.
pub fn options(folder: &str, case: &str) -> CheckpointOptions {
    CheckpointOptions {
        constructor: Some(Constructor::parse(&constructor_json(folder, case)).unwrap()),
        ..Default::default()
    }
}
