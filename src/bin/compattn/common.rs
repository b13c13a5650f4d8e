//! What the subcommands share: the failure type, opening the GPU, the strategy parser, timing.

use std::time::{Duration, Instant};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use compositional_attention::{Error, GpuContext, GpuOptions, Strategy};

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
