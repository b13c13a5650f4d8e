//! `compattn bench --backward`: the eval forward, the training forward and the backward timed
//! in one run on one layer, at the bench's shape options, with the GPU memory training holds.
//!
//! Each sample is the host's wall clock around one blocking call (upload, submit, read back the
//! output or `dL/dx`): the library's training calls have no timestamp-query form. Medians of
//! `--iters` samples after `--warmup` untimed rounds (the first compiles the pipelines).

use compositional_attention::host_memory::bytes_of;
use compositional_attention::kernel_bench::summarize;
use compositional_attention::rng::Rng;
use compositional_attention::testing::{normal, random_problem};
use compositional_attention::{CompositionalAttention, GpuContext, Strategy};
use serde::Serialize;

use super::case::{BenchCase, SEED};
use crate::common::{CliResult, Failure, open_gpu, timed};
use crate::fits;
use crate::output::{fmt_mib, fmt_ms, note, print_json, progress_bar_of};
use crate::sizes::problem_bytes;

/// What `--backward --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct BackwardReport {
    /// Median wall time of `forward_blocking` (inference).
    pub forward_ms: f64,
    /// Median wall time of `forward_train_blocking` (keeps the activations).
    pub forward_train_ms: f64,
    /// Median wall time of `backward_blocking` (gradients accumulated, `dL/dx` read back).
    pub backward_ms: f64,
    /// `backward_ms / forward_ms`.
    pub backward_over_forward: f64,
    /// `Activations::gpu_bytes` of one training forward.
    pub activation_bytes: u64,
    /// A training step's GPU bytes: the layer's, the gradients', the activations' and the
    /// largest scratch of its forward and backward (`Activations::scratch_bytes`).
    pub gpu_bytes: u64,
}

pub fn run(case: BenchCase, json: bool) -> CliResult {
    let ctx = open_gpu(json)?;
    let report = measure(&ctx, case, json)?;
    if json {
        return Ok(print_json(&report)?);
    }
    println!();
    println!(
        "{:<16} {} ms (median of {}, host wall clock)",
        "forward (eval)",
        fmt_ms(report.forward_ms),
        case.iters
    );
    println!(
        "{:<16} {} ms",
        "forward (train)",
        fmt_ms(report.forward_train_ms)
    );
    println!(
        "{:<16} {} ms ({:.2}× the eval forward)",
        "backward",
        fmt_ms(report.backward_ms),
        report.backward_over_forward
    );
    println!(
        "{:<16} {} activations; {} a training step (with the layer, its gradients and scratch)",
        "GPU memory",
        fmt_mib(report.activation_bytes),
        fmt_mib(report.gpu_bytes)
    );
    Ok(())
}

/// The eval forward, the training forward and the backward of `case` on `ctx`, timed.
pub fn measure(ctx: &GpuContext, case: BenchCase, json: bool) -> Result<BackwardReport, Failure> {
    let (b, n, c) = (case.batch, case.seq, case.config);
    // Asked before anything is made: the device's plan, then the host's bytes (the problem and
    // dL/dy, dL/dx and the training output, each as large as the input).
    fits::forward(
        ctx,
        &c,
        case.precision,
        Strategy::default(),
        (b, n),
        &case.options,
    )?;
    let tensor = bytes_of(&[b, n, c.dim], 4);
    fits::host(
        "the benchmark's problem",
        problem_bytes(&c, b, n).saturating_add(tensor.saturating_mul(3)),
        &case.options,
    )?;
    note(
        json,
        &format!(
            "problem: {}; eval forward, training forward and backward; {} warm-up + {} timed \
             rounds (host wall clock, output read back each call)",
            case.describe(Some(n)),
            case.warmup,
            case.iters
        ),
    );
    let (weights, input) = random_problem(c, b, n, None, 1.0, SEED)?;
    let dy = normal(&mut Rng::seed_from_u64(SEED ^ 0xb4c), b * n * c.dim, 1.0);
    let mut layer = CompositionalAttention::with_precision(ctx, &weights, case.precision)?;
    let mut grads = layer.gradients()?;
    layer.prepare_training_blocking(b, n)?;
    let progress = progress_bar_of(case.warmup.saturating_add(case.iters) as u64, "rounds");
    let (mut forward, mut forward_train, mut backward) = (Vec::new(), Vec::new(), Vec::new());
    let mut activation_bytes = 0;
    let mut training_bytes = 0;
    for round in 0..case.warmup + case.iters {
        let (y, eval_time) = timed(|| layer.forward_blocking(&input.x, b, n, None));
        y?;
        let (trained, train_time) =
            timed(|| layer.forward_train_blocking(&input.x, b, n, None, round as u64));
        let (_, act) = trained?;
        grads.zero();
        let (dx, backward_time) = timed(|| layer.backward_blocking(&act, &dy, &mut grads));
        dx?;
        activation_bytes = act.gpu_bytes();
        training_bytes =
            layer.gpu_bytes() + grads.gpu_bytes() + act.gpu_bytes() + act.scratch_bytes();
        if round >= case.warmup {
            forward.push(eval_time.as_secs_f64() * 1e3);
            forward_train.push(train_time.as_secs_f64() * 1e3);
            backward.push(backward_time.as_secs_f64() * 1e3);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let median = |samples: &[f64]| summarize(samples).0;
    let (forward_ms, backward_ms) = (median(&forward), median(&backward));
    let report = BackwardReport {
        forward_ms,
        forward_train_ms: median(&forward_train),
        backward_ms,
        backward_over_forward: backward_ms / forward_ms,
        activation_bytes,
        gpu_bytes: training_bytes,
    };
    Ok(report)
}
