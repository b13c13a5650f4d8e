//! Timing forwards: a GPU strategy of the layer (GPU timestamps where the adapter has them,
//! else the host wall clock) or the `f64` CPU reference (host clock), per kernel where the GPU
//! reports kernels.

use std::time::Instant;

use compositional_attention::io::Input;
use compositional_attention::{
    CompositionalAttention, Error, GpuContext, KernelTime, Precision, TimingSource, Weights,
    reference,
};
use indicatif::ProgressBar;

use compositional_attention::testing::random_problem;

use super::case::{BenchCase, Method, SEED};
use crate::output::progress_bar;

/// Per-kernel samples of a profiled forward: consecutive launches of one variant (a kernel
/// whose range is split over several dispatches) count as one entry.
#[derive(Clone, Debug)]
pub struct KernelSamples {
    pub label: String,
    pub launches: usize,
    pub samples_ms: Vec<f64>,
}

/// Timed forwards of one method at one problem size.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub method: Method,
    pub seq: usize,
    /// `TimedForward::total_ms` per forward (GPU time, or host wall time; see `source`).
    pub samples_ms: Vec<f64>,
    /// Host wall time per forward, upload to readback.
    pub wall_ms: Vec<f64>,
    pub source: TimingSource,
    /// Empty for the CPU reference and without GPU timestamps.
    pub kernels: Vec<KernelSamples>,
    /// `CompositionalAttention::gpu_bytes` after the forwards; 0 for the CPU reference.
    pub gpu_bytes: u64,
    /// What the layer ran (`ExecutionPlan::describe`: kernel family, storage, GEMM, core and
    /// its tiling, the tuned one where tuning chose); `None` for the CPU reference.
    pub plan: Option<String>,
}

/// The kernels of one forward, consecutive launches of one variant merged: `(label, launches,
/// ms)`.
fn group_kernels(kernels: &[KernelTime]) -> Vec<(String, usize, f64)> {
    let mut groups: Vec<(String, usize, f64)> = Vec::new();
    for kernel in kernels {
        match groups.last_mut() {
            Some((label, launches, ms)) if *label == kernel.label => {
                *launches += 1;
                *ms += kernel.ms;
            }
            _ => groups.push((kernel.label.clone(), 1, kernel.ms)),
        }
    }
    groups
}

/// `case`'s random problem at `seq` (seed [`SEED`]), timed with `method` behind a progress bar;
/// `between` runs after each timed forward (see [`measure`]).
pub fn measure_case(
    ctx: Option<&GpuContext>,
    case: &BenchCase,
    method: Method,
    seq: usize,
    between: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<Measurement, Error> {
    let (weights, input) = random_problem(case.config, case.batch, seq, None, 1.0, SEED)?;
    let progress = progress_bar(case.warmup.saturating_add(case.iters) as u64);
    progress.set_message(method.name());
    let measurement = measure(
        ctx,
        method,
        case.precision,
        &weights,
        &input,
        (case.warmup, case.iters),
        &progress,
        between,
    );
    progress.finish_and_clear();
    measurement
}

/// `warmup + iters` forwards of `method` (a layer stored in `precision`) on `input`, one tick
/// of `progress` each. `between` runs after each timed GPU forward, outside its timing: what is
/// to be compared with the forward is timed there, side by side (our GEMM, `GemmBetween`).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    ctx: Option<&GpuContext>,
    method: Method,
    precision: Precision,
    weights: &Weights,
    input: &Input,
    (warmup, iters): (usize, usize),
    progress: &ProgressBar,
    between: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<Measurement, Error> {
    let (batch, seq) = (input.batch, input.seq);
    let mut measurement = Measurement {
        method,
        seq,
        // Grown as forwards finish: `iters` is a count of work, not a size to allocate.
        samples_ms: Vec::new(),
        wall_ms: Vec::new(),
        source: TimingSource::HostWallClock,
        kernels: Vec::new(),
        gpu_bytes: 0,
        plan: None,
    };
    let strategy = match method {
        Method::Cpu => {
            for index in 0..warmup.saturating_add(iters) {
                let start = Instant::now();
                let y = reference::forward(weights, &input.x, batch, seq, input.mask.as_deref())?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(y);
                if index >= warmup {
                    measurement.samples_ms.push(ms);
                    measurement.wall_ms.push(ms);
                }
                progress.inc(1);
            }
            return Ok(measurement);
        }
        Method::Gpu(strategy) => strategy,
    };
    let Some(ctx) = ctx else {
        return Err(Error::NoAdapter {
            detail: Some("the GPU strategies need one".into()),
            hint: compositional_attention::gpu::context::INSTALL_HINT,
        });
    };
    let mut layer = CompositionalAttention::with_precision(ctx, weights, precision)?;
    layer.set_strategy(strategy);
    for index in 0..warmup.saturating_add(iters) {
        let profile =
            pollster::block_on(layer.forward_timed(&input.x, batch, seq, input.mask.as_deref()))?;
        progress.inc(1);
        if index < warmup {
            continue;
        }
        measurement.samples_ms.push(profile.total_ms);
        measurement.wall_ms.push(profile.wall_ms);
        measurement.source = profile.source;
        between()?;
        let groups = group_kernels(&profile.kernels);
        if measurement.kernels.is_empty() {
            measurement.kernels = groups
                .into_iter()
                .map(|(label, launches, ms)| KernelSamples {
                    label,
                    launches,
                    samples_ms: vec![ms],
                })
                .collect();
        } else {
            for (kernel, (_, _, ms)) in measurement.kernels.iter_mut().zip(groups) {
                kernel.samples_ms.push(ms);
            }
        }
    }
    measurement.gpu_bytes = layer.gpu_bytes();
    measurement.plan = Some(layer.plan(batch, seq)?.describe());
    Ok(measurement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_launches_of_one_variant_are_merged() {
        let k = |label: &str, ms: f64| KernelTime {
            label: label.into(),
            ms,
        };
        let groups = group_kernels(&[k("gemm", 1.0), k("a", 2.0), k("a", 3.0), k("gemm", 4.0)]);
        assert_eq!(
            groups,
            vec![
                ("gemm".to_string(), 1, 1.0),
                ("a".to_string(), 2, 5.0),
                ("gemm".to_string(), 1, 4.0)
            ]
        );
    }
}
