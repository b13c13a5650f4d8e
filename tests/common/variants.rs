//! The golden-variants cases (`tests/golden-variants/`, a copy of `shared/golden-variants/`):
//! their names, files and constructor arguments; and random checkpoints of every form.

use std::path::{Path, PathBuf};

use compositional_attention::checkpoint::{
    Attention, Checkpoint, CheckpointOptions, Constructor, Form, FormWeights, Format, Linear,
    Selection, SelectionWeights,
};
use compositional_attention::rng::Rng;

/// Every case: (format folder, case name).
pub const CASES: [(&str, &str); 6] = [
    ("keras", "k01_defaults"),
    ("keras", "k02_prenorm"),
    ("fairseq", "f01_qk_rule"),
    ("fairseq", "f02_score_net_padding"),
    ("xformers", "x01_defaults_shared_proj"),
    ("xformers", "x02_separate_proj_qk_rule"),
];

/// The fairseq cross-attention cases (`fairseq-cross/`): the official module over a memory, and
/// with `add_bias_kv` (issue 19).
pub const CROSS_CASES: [&str; 3] = [
    "c01_encdec_same_width",
    "c02_encdec_kdim_vdim",
    "c07_self_add_bias_kv",
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
    // fairseq-cross/ holds fairseq checkpoints.
    let format = folder.strip_suffix("-cross").unwrap_or(folder);
    constructor.insert("format".into(), format.into());
    serde_json::Value::Object(constructor).to_string()
}

/// Reading options with the case's constructor.
pub fn options(folder: &str, case: &str) -> CheckpointOptions {
    CheckpointOptions {
        constructor: Some(Constructor::parse(&constructor_json(folder, case)).unwrap()),
        ..Default::default()
    }
}

// ---- random checkpoints of every form -----------------------------------------------------------

pub fn random_linear(rng: &mut Rng, out: usize, inp: usize, bias: bool) -> Linear {
    let bound = 1.0 / (inp as f32).sqrt();
    let weight = (0..out * inp)
        .map(|_| rng.uniform_f32(-bound, bound))
        .collect();
    let bias = bias.then(|| {
        (0..out)
            .map(|_| rng.uniform_f32(-0.5, 0.5) * bound)
            .collect()
    });
    Linear::new(weight, bias, out, inp).unwrap()
}

/// A random checkpoint of `form` (biases on every projection when `bias`).
pub fn random_checkpoint(form: Form, bias: bool, seed: u64) -> Checkpoint {
    let mut rng = Rng::seed_from_u64(seed);
    let (d, h, r, hd, vd, sel) = (
        form.dim,
        form.searches,
        form.retrievals,
        form.head_dim,
        form.value_dim,
        form.selection_dim,
    );
    // Search weights with a gain, so that the search softmaxes are not all flat.
    let mut q = random_linear(&mut rng, h * hd, d, bias);
    q.weight.iter_mut().for_each(|w| *w *= 3.0);
    // Keys and values from the memory's widths (the input's for self-attention).
    let (kdim, vdim) = form.attention.input_dims(d);
    let k = random_linear(&mut rng, h * hd, kdim, bias);
    let v = random_linear(&mut rng, r * vd, vdim, bias);
    let value_q = match form.q_compose {
        true => random_linear(&mut rng, sel, hd, bias),
        false => random_linear(&mut rng, h * sel, d, bias),
    };
    let mut selection = match form.selection {
        Selection::DotProduct => SelectionWeights::DotProduct {
            value_k: random_linear(&mut rng, sel, vd, bias),
        },
        Selection::LinearScore => SelectionWeights::LinearScore {
            score: random_linear(&mut rng, 1, vd + sel, bias),
        },
        Selection::MlpScore => SelectionWeights::MlpScore {
            hidden: random_linear(&mut rng, sel, vd + sel, bias),
            score: random_linear(&mut rng, 1, sel, bias),
        },
    };
    // A gain on the selection too, so that it is not uniform either.
    match &mut selection {
        SelectionWeights::DotProduct { value_k: l }
        | SelectionWeights::LinearScore { score: l } => l.weight.iter_mut().for_each(|w| *w *= 4.0),
        SelectionWeights::MlpScore { score, .. } => score.weight.iter_mut().for_each(|w| *w *= 4.0),
    }
    let out = random_linear(&mut rng, d, h * vd, bias);
    let norm = form.prenorm.then(|| {
        (
            (0..d).map(|_| rng.uniform_f32(0.5, 1.5)).collect(),
            (0..d).map(|_| rng.uniform_f32(-0.5, 0.5)).collect(),
        )
    });
    let checkpoint = Checkpoint {
        form,
        weights: FormWeights {
            norm,
            q,
            k,
            v,
            value_q,
            selection,
            out,
            bias_kv: None,
        },
    };
    checkpoint.validate().unwrap();
    checkpoint
}

/// A form of `format` with widths `[hd, vd, sel]`, the dot-product selection and nothing else.
pub fn form(format: Format, dim: usize, heads: usize, rules: usize, widths: [usize; 3]) -> Form {
    Form {
        format,
        dim,
        searches: heads,
        retrievals: rules,
        head_dim: widths[0],
        value_dim: widths[1],
        selection_dim: widths[2],
        selection: Selection::DotProduct,
        q_compose: false,
        prenorm: false,
        layer_norm_eps: 1e-5,
        causal: false,
        attention: Attention::SelfAttention,
        zero_attention: false,
    }
}
