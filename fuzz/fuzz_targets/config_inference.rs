//! The configuration `Weights::from_safetensors` infers from the tensor shapes (`dim_head` from
//! the square `to_retrieval_keys.weight`, `dim` from `to_searches_queries.weight`'s columns,
//! `num_searches` and `num_retrievals` from row counts, `prenorm` from `norm.*`). The library has
//! no separate inference function, so this target reaches it through the loader, on well-formed
//! containers that byte-level mutation of the golden files rarely produces: each parameter is
//! absent, has the shape a layer of four fuzzed sizes gives it (0 to `u64::MAX` each; products
//! wrap), that shape with one axis replaced, or any shape; any dtype; any tensors beside them.
//! A tensor whose data would pass 64 KiB is declared with its full size but written without
//! data, so the loader must refuse the file before allocating for it. On success, the inferred
//! configuration must be the one the declared shapes spell.
#![no_main]

use std::collections::HashSet;

use compositional_attention::weights::{self, Weights};
use compositional_attention_fuzz::{check_weights, guarded};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "layers.0.attn.";
/// Data past this many bytes in all are declared but not written.
const MAX_DATA: usize = 64 << 10;

#[derive(Arbitrary, Debug)]
struct Case {
    causal: bool,
    use_prefix: bool,
    /// The `dim, dim_head, num_searches, num_retrievals` the parameters' shapes are built from.
    sizes: [Dim; 4],
    /// `BASE_NAMES` in order.
    parameters: [Parameter; 8],
    /// Tensors beside the parameters.
    extra: Vec<Tensor>,
}

#[derive(Arbitrary, Debug)]
struct Parameter {
    shape: ShapeSpec,
    dtype: Dtype,
    /// Repeated over the data; empty = zeros.
    pattern: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum ShapeSpec {
    /// The shape the parameter has in a layer of `sizes`.
    Consistent,
    /// That shape with one axis replaced (the index wraps; past the end appends an axis).
    Perturbed(u8, Dim),
    Arbitrary(Vec<Dim>),
    Absent,
}

#[derive(Arbitrary, Debug)]
struct Tensor {
    name: Name,
    under_prefix: bool,
    dtype: Dtype,
    shape: Vec<Dim>,
    /// Repeated over the data; empty = zeros.
    pattern: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Parameter(u8),
    CaseTensor(u8),
    Other(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    U8,
    Bool,
    I64,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::I64 => "I64",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Dim {
    /// 0 to 7: most files that load need small sizes.
    Tiny(u8),
    Small(u8),
    Medium(u16),
    Any(u64),
}

impl Dim {
    fn get(&self) -> usize {
        match *self {
            Dim::Tiny(v) => (v % 8).into(),
            Dim::Small(v) => v.into(),
            Dim::Medium(v) => v.into(),
            Dim::Any(v) => v as usize,
        }
    }
}

fn json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The eight parameters of a lucidrains layer without biases or an MLP score network, in the
/// order of [`consistent_shapes`] (`weights::PARAMETER_NAMES` also holds the optional ones, with
/// the biases between the matrices).
const BASE_NAMES: [&str; 8] = [
    weights::NORM_WEIGHT,
    weights::NORM_BIAS,
    weights::SEARCH_QUERIES,
    weights::SEARCH_KEYS,
    weights::RETRIEVAL_VALUES,
    weights::RETRIEVAL_QUERIES,
    weights::RETRIEVAL_KEYS,
    weights::OUT,
];

/// `[[dim], [dim], [s·d, dim], [s·d, dim], [r·d, dim], [s·d, dim], [d, d], [dim, s·d]]`: each
/// parameter's shape in `BASE_NAMES` order (products wrap, as a hostile writer's would).
fn consistent_shapes(sizes: &[Dim; 4]) -> [Vec<usize>; 8] {
    let [dim, d, s, r] = sizes.each_ref().map(Dim::get);
    let (sw, vw) = (s.wrapping_mul(d), r.wrapping_mul(d));
    [
        vec![dim],
        vec![dim],
        vec![sw, dim],
        vec![sw, dim],
        vec![vw, dim],
        vec![sw, dim],
        vec![d, d],
        vec![dim, sw],
    ]
}

/// Appends safetensors entries to a header and their data.
struct Builder {
    header: String,
    data: Vec<u8>,
    offset: usize,
    names: HashSet<String>,
    declared: Vec<(String, Vec<usize>)>,
}

impl Builder {
    fn push(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, pattern: &[u8]) {
        if name == "__metadata__" || !self.names.insert(name.clone()) {
            return;
        }
        let bytes = shape
            .iter()
            .try_fold(dtype.size(), |n, &s| n.checked_mul(s));
        let end = self.offset.saturating_add(bytes.unwrap_or(usize::MAX));
        if !self.declared.is_empty() {
            self.header.push(',');
        }
        json_string(&name, &mut self.header);
        self.header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{shape:?},\"data_offsets\":[{},{end}]}}",
            dtype.name(),
            self.offset
        ));
        if let Some(bytes) = bytes.filter(|&b| b <= MAX_DATA - self.data.len()) {
            if pattern.is_empty() {
                self.data.resize(self.data.len() + bytes, 0);
            } else {
                self.data
                    .extend(pattern.iter().copied().cycle().take(bytes));
            }
        }
        self.declared.push((name, shape));
        self.offset = end;
    }
}

/// The safetensors bytes the description stands for, and each full name's declared shape.
fn build(case: &Case, prefix: &str) -> (Vec<u8>, Vec<(String, Vec<usize>)>) {
    let mut builder = Builder {
        header: String::from("{"),
        data: Vec::new(),
        offset: 0,
        names: HashSet::new(),
        declared: Vec::new(),
    };
    let consistent = consistent_shapes(&case.sizes);
    for ((parameter, local), consistent) in case.parameters.iter().zip(BASE_NAMES).zip(consistent) {
        let shape = match &parameter.shape {
            ShapeSpec::Consistent => consistent,
            ShapeSpec::Perturbed(axis, value) => {
                let mut shape = consistent;
                let axis = *axis as usize % (shape.len() + 1);
                match shape.get_mut(axis) {
                    Some(axis) => *axis = value.get(),
                    None => shape.push(value.get()),
                }
                shape
            }
            ShapeSpec::Arbitrary(shape) => shape.iter().map(Dim::get).collect(),
            ShapeSpec::Absent => continue,
        };
        let name = format!("{prefix}{local}");
        builder.push(name, parameter.dtype, shape, &parameter.pattern);
    }
    for tensor in &case.extra {
        let local = match &tensor.name {
            Name::Parameter(i) => BASE_NAMES[*i as usize % BASE_NAMES.len()].to_string(),
            Name::CaseTensor(i) => weights::CASE_TENSOR_NAMES[*i as usize % 3].to_string(),
            Name::Other(name) => name.clone(),
        };
        let name = if tensor.under_prefix {
            format!("{prefix}{local}")
        } else {
            local
        };
        let shape = tensor.shape.iter().map(Dim::get).collect();
        builder.push(name, tensor.dtype, shape, &tensor.pattern);
    }
    let Builder {
        mut header,
        data,
        declared,
        ..
    } = builder;
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    (file, declared)
}

fuzz_target!(|case: Case| {
    let prefix = if case.use_prefix { PREFIX } else { "" };
    let (bytes, declared) = build(&case, prefix);
    let result = guarded(bytes.len(), || {
        Weights::from_safetensors(&bytes, case.causal, prefix)
    });
    check_weights(&result, case.causal);
    let Ok(weights) = result else {
        return;
    };
    // The inferred configuration is the one the declared shapes spell.
    let shape = |local: &str| {
        let name = format!("{prefix}{local}");
        declared
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, shape)| shape.clone())
    };
    let c = weights.config();
    let (d, sw, vw) = (c.dim_head, c.search_width(), c.value_width());
    assert_eq!(shape(weights::RETRIEVAL_KEYS), Some(vec![d, d]));
    assert_eq!(shape(weights::SEARCH_QUERIES), Some(vec![sw, c.dim]));
    assert_eq!(shape(weights::SEARCH_KEYS), Some(vec![sw, c.dim]));
    assert_eq!(shape(weights::RETRIEVAL_QUERIES), Some(vec![sw, c.dim]));
    assert_eq!(shape(weights::RETRIEVAL_VALUES), Some(vec![vw, c.dim]));
    assert_eq!(shape(weights::OUT), Some(vec![c.dim, sw]));
    let norm = c.prenorm.then(|| vec![c.dim]);
    assert_eq!(shape(weights::NORM_WEIGHT), norm);
    assert_eq!(shape(weights::NORM_BIAS), norm);
});
