//! What the subcommands share: the failure type, opening the GPU, the strategy and precision
//! parsers, timing.

use std::time::{Duration, Instant};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use compositional_attention::{Error, GpuContext, GpuOptions, Precision, Strategy};

use crate::output::note;

/// Why a subcommand failed; printed as `error: <this>`.
#[derive(Debug)]
pub enum Failure {
    /// The library refused (bad file, bad shape, no adapter, GPU error): its own message.
    Library(Error),
    /// A problem the user sized does not fit the device or the host: the library's refusal
    /// (the size and the limit) and the options to change (`fits`).
    TooLarge {
        error: Error,
        /// `--seq 100000000 (default 512)`, from `SizeOption::blame`.
        change: String,
    },
    /// A check the command makes failed (a result outside the tolerance).
    Check(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Library(error) => error.fmt(f),
            Failure::TooLarge { error, change } => write!(f, "{error}; lower {change}"),
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

/// Opens the device the environment asks for and says which adapter it is (on stderr with
/// `--json`, whose stdout holds only the JSON).
pub fn open_gpu(json: bool) -> Result<GpuContext, Error> {
    let ctx = pollster::block_on(GpuContext::new(&GpuOptions::from_env()?))?;
    note(json, &format!("adapter: {}", ctx.describe()));
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
