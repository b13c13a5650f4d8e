//! What the subcommands share: the failure type, opening the GPU, the strategy parser, timing.

use std::time::{Duration, Instant};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use compositional_attention::{Config, Error, GpuContext, GpuOptions, Precision, Strategy};

/// Why a subcommand failed; printed as `error: <this>`.
#[derive(Debug)]
pub enum Failure {
    /// The library refused (bad file, bad shape, no adapter, GPU error): its own message.
    Library(Error),
    /// A check the command makes failed (a result outside the tolerance).
    Check(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Library(error) => error.fmt(f),
            Failure::Check(message) => f.write_str(message),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Library(error)
    }
}

/// What every subcommand returns.
pub type CliResult = Result<(), Failure>;

/// The layer configuration and input shape, shared by `verify`, `bench` and `shaders`; each
/// command fills the sizes left out with defaults of its own (its `--help` says which).
#[derive(clap::Args, Clone, Debug)]
pub struct ProblemArgs {
    /// Batch size b.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Sequence length n.
    #[arg(long)]
    pub seq: Option<usize>,
    /// Model width (dim).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Width of every search and retrieval head (dim_head).
    #[arg(long)]
    pub dim_head: Option<usize>,
    /// Number of searches (num_searches).
    #[arg(long)]
    pub searches: Option<usize>,
    /// Number of retrievals (num_retrievals).
    #[arg(long)]
    pub retrievals: Option<usize>,
    /// Causal attention.
    #[arg(long)]
    pub causal: bool,
    /// LayerNorm before the projections.
    #[arg(long)]
    pub prenorm: bool,
}

/// Sizes a command uses for the flags left out.
#[derive(Clone, Copy, Debug)]
pub struct ProblemDefaults {
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub dim_head: usize,
    pub searches: usize,
    pub retrievals: usize,
}

/// `compattn verify`'s defaults: small, odd sizes.
pub const VERIFY_DEFAULTS: ProblemDefaults = ProblemDefaults {
    batch: 2,
    seq: 77,
    dim: 64,
    dim_head: 16,
    searches: 3,
    retrievals: 2,
};

impl ProblemArgs {
    /// Whether any flag was given.
    pub fn any_given(&self) -> bool {
        [
            self.batch,
            self.seq,
            self.dim,
            self.dim_head,
            self.searches,
            self.retrievals,
        ]
        .iter()
        .any(Option::is_some)
            || self.causal
            || self.prenorm
    }

    /// The validated configuration, batch and sequence length (both at least 1).
    pub fn resolve(&self, defaults: ProblemDefaults) -> Result<(Config, usize, usize), Error> {
        let config = Config::new(self.dim.unwrap_or(defaults.dim))
            .dim_head(self.dim_head.unwrap_or(defaults.dim_head))
            .num_searches(self.searches.unwrap_or(defaults.searches))
            .num_retrievals(self.retrievals.unwrap_or(defaults.retrievals))
            .causal(self.causal)
            .prenorm(self.prenorm);
        config.validate()?;
        let batch = self.batch.unwrap_or(defaults.batch);
        let seq = self.seq.unwrap_or(defaults.seq);
        for (field, value) in [("--batch", batch), ("--seq", seq)] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        Ok((config, batch, seq))
    }
}

/// Opens the device the environment asks for and prints which adapter it is.
pub fn open_gpu() -> Result<GpuContext, Error> {
    let ctx = pollster::block_on(GpuContext::new(&GpuOptions::from_env()?))?;
    println!("adapter: {}", ctx.describe());
    Ok(ctx)
}

/// Parses `--strategy` by the library's own names (`Strategy::ALL`), so clap lists exactly the
/// strategies that exist.
pub fn strategy_parser() -> impl TypedValueParser<Value = Strategy> {
    PossibleValuesParser::new(Strategy::ALL.map(|s| s.name()))
        .try_map(|name| name.parse::<Strategy>())
}

/// Parses `--precision`: `f32` or `f16` (`Precision::parse`).
pub fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(Precision::ALL.map(|p| p.name()))
        .try_map(|name| Precision::parse(&name))
}

/// Runs `work` and returns its value with the wall time it took.
pub fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = work();
    (value, start.elapsed())
}

/// A duration in milliseconds, three significant digits or so.
pub fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// `yes` or `no`.
pub fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}
