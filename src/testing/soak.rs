//! A soak run: many forwards on one layer, cycling shapes, masks and strategies, every output
//! checked against the f64 reference, with host memory (RSS) and `gpu_bytes` sampled as it goes.
//!
//! Shared by `tests/reliability.rs` (a few hundred forwards) and `compattn soak --forwards N`
//! (long runs; RELIABILITY.md). Compiled with the `testing` feature, on native targets (it blocks
//! on each forward).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::layer::CompositionalAttention;
use crate::plan::Strategy;
use crate::reference;
use crate::testing::{ErrorStats, random_problem};
use crate::weights::Weights;

/// The shapes a soak cycles through: `(batch, seq, mask lengths)`. More shapes × strategies than
/// the layer keeps workspaces for, so workspaces are evicted and rebuilt all along.
const SHAPES: [(usize, usize, Option<&[usize]>); 5] = [
    (1, 5, None),
    (2, 9, Some(&[9, 3])),
    (3, 4, Some(&[4, 0, 2])),
    (1, 17, None),
    (2, 1, None),
];

/// One sample of the memory curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoakSample {
    /// Forwards run so far.
    pub forwards: usize,
    /// Resident host memory in bytes (`/proc/self/statm`; 0 where unavailable).
    pub rss_bytes: u64,
    /// `CompositionalAttention::gpu_bytes`.
    pub gpu_bytes: u64,
}

/// What a soak run saw.
#[derive(Clone, Debug)]
pub struct SoakReport {
    /// Forwards run, every one checked.
    pub forwards: usize,
    /// The worst `max_abs / max|expected|` over all outputs.
    pub worst_error: f64,
    /// Memory after each tenth of the run (the first after the warm-up round).
    pub samples: Vec<SoakSample>,
    /// The most `gpu_bytes` during the warm-up round (every shape and strategy once). The cycle
    /// repeats, so the workspaces alive later are sets seen then: later samples stay below.
    pub warmup_gpu_bytes: u64,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

impl SoakReport {
    /// Growth of RSS from the first sample (after the warm-up round) to the largest later one.
    pub fn rss_growth(&self) -> u64 {
        let first = self.samples.first().map_or(0, |s| s.rss_bytes);
        let max = self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
        max.saturating_sub(first)
    }

    /// How far `gpu_bytes` rose above the warm-up round's most (0 when flat).
    pub fn gpu_growth(&self) -> u64 {
        let max = self.samples.iter().map(|s| s.gpu_bytes).max().unwrap_or(0);
        max.saturating_sub(self.warmup_gpu_bytes)
    }
}

/// Resident set size of this process, from `/proc/self/statm` (Linux); 0 elsewhere.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Runs `forwards` forwards of one layer on `ctx` (seeded by `seed`), cycling [`SHAPES`] and both
/// strategies, each checked against the reference within `tolerance` of its max |output|.
/// `progress` is called after every forward. Fails at the first output out of tolerance.
pub fn run(
    ctx: &GpuContext,
    forwards: usize,
    seed: u64,
    tolerance: f64,
    mut progress: impl FnMut(usize),
) -> Result<SoakReport> {
    let start = crate::time::Instant::now();
    let config = Config::new(24)
        .dim_head(8)
        .num_searches(3)
        .num_retrievals(2)
        .causal(true);
    // One layer: the weights of the first problem; every shape gets its own seeded input.
    let weights = Weights::random(config, seed)?;
    let problems: Vec<_> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(batch, seq, lengths))| {
            let (_, input) =
                random_problem(config, batch, seq, lengths, 1.0, seed ^ (i as u64 + 1))?;
            let expected =
                reference::forward(&weights, &input.x, batch, seq, input.mask.as_deref())?;
            Ok((input, expected))
        })
        .collect::<Result<_>>()?;
    let mut layer = CompositionalAttention::new(ctx, &weights)?;
    let round = problems.len() * Strategy::ALL.len();
    let sample_every = (forwards / 10).max(1);
    let mut report = SoakReport {
        forwards: 0,
        worst_error: 0.0,
        samples: Vec::new(),
        warmup_gpu_bytes: 0,
        seconds: 0.0,
    };
    for i in 0..forwards {
        let (input, expected) = &problems[i % problems.len()];
        let strategy = Strategy::ALL[(i / problems.len()) % Strategy::ALL.len()];
        layer.set_strategy(strategy);
        let y = layer.forward_blocking(&input.x, input.batch, input.seq, input.mask.as_deref())?;
        let stats = ErrorStats::compare(&y, expected);
        let error = stats.max_abs_relative();
        if !stats.within(tolerance) {
            return Err(Error::ReferenceMismatch(format!(
                "soak forward {i} ({strategy}, batch {} × seq {}): {stats} exceeds {tolerance}",
                input.batch, input.seq
            )));
        }
        report.worst_error = report.worst_error.max(error);
        if i < round {
            report.warmup_gpu_bytes = report.warmup_gpu_bytes.max(layer.gpu_bytes());
        }
        report.forwards = i + 1;
        if i + 1 >= round && ((i + 1 - round).is_multiple_of(sample_every) || i + 1 == forwards) {
            report.samples.push(SoakSample {
                forwards: i + 1,
                rss_bytes: rss_bytes(),
                gpu_bytes: layer.gpu_bytes(),
            });
        }
        progress(i + 1);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
