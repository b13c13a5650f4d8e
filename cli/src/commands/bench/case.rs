//! What `compattn bench` measures: the problem and sample counts ([`BenchCase`]) and the
//! method timed ([`Method`]: a GPU strategy or the `f64` CPU reference).

use clap::builder::{PossibleValuesParser, TypedValueParser};
use compositional_attention::{Config, Precision, Strategy};

use crate::sizes::SizeOption;

/// Seed of the random weights and input: every run measures the same problem.
pub const SEED: u64 = 0;

/// The problem and the sample counts, with the defaults of the chosen mode filled in.
#[derive(Clone, Copy, Debug)]
pub struct BenchCase {
    pub config: Config,
    pub precision: Precision,
    pub batch: usize,
    /// The sequence length of a single run (`--seq`; the sweeps set their own).
    pub seq: usize,
    pub warmup: usize,
    pub iters: usize,
    /// The size options as given (or defaulted), to name when a problem is too large.
    pub options: [SizeOption; 6],
}

impl BenchCase {
    /// The size options with `--seq` replaced by `seq` (the option that sets the sequence
    /// length in this mode: `--seq`, `--seq-list` or `--context`).
    pub fn options_with(&self, seq: SizeOption) -> [SizeOption; 6] {
        self.options
            .map(|option| if option.name == "--seq" { seq } else { option })
    }

    /// `batch 1, seq 512, dim 512, ...` for notes.
    pub fn describe(&self, seq: Option<usize>) -> String {
        let c = &self.config;
        let seq = seq.map_or(String::new(), |n| format!("seq {n}, "));
        format!(
            "batch {}, {seq}dim {}, dim_head {}, {} searches, {} retrievals, causal {}, prenorm {}",
            self.batch, c.dim, c.dim_head, c.num_searches, c.num_retrievals, c.causal, c.prenorm
        )
    }
}

/// What is timed: a GPU strategy of the layer, or the `f64` CPU reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The layer on the GPU with this strategy.
    Gpu(Strategy),
    /// `reference::forward`: single-threaded `f64` on the host.
    Cpu,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 3] = [
        Method::Gpu(Strategy::Fused),
        Method::Gpu(Strategy::Unfused),
        Method::Cpu,
    ];

    /// `fused`, `unfused` (the library's names) or `cpu`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Gpu(strategy) => strategy.name(),
            Method::Cpu => "cpu",
        }
    }
}

/// Parses `--strategy`: the library's strategy names (`Strategy::from_str`) and `cpu`.
pub fn method_parser() -> impl TypedValueParser<Value = Method> {
    let names = Strategy::ALL
        .iter()
        .map(|s| s.name())
        .chain(["cpu"])
        .collect::<Vec<_>>();
    PossibleValuesParser::new(names).try_map(|name| match name.as_str() {
        "cpu" => Ok(Method::Cpu),
        gpu => gpu.parse::<Strategy>().map(Method::Gpu),
    })
}
