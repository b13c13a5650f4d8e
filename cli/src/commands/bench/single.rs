//! `compattn bench` without `--sweep`, `--decode` or `--gemm`: one method at one size, a table
//! or one JSON object.

use compositional_attention::testing::random_problem;

use super::case::{BenchCase, Method, SEED};
use super::forward_timing::measure;
use super::gemm_timing::time_our_gemm;
use super::machine::Machine;
use super::report::{print_report, report};
use crate::common::{CliResult, open_gpu};
use crate::fits;
use crate::output::{note, print_json, progress_bar};
use crate::sizes::{problem_bytes, reference_bytes};

/// Times `method` at `case`'s problem with its sequence length; compares with our GEMM unless
/// `no_gemm`.
pub fn run(case: BenchCase, method: Method, no_gemm: bool, json: bool) -> CliResult {
    let seq = case.seq;
    let options = case.options;
    let ctx = match method {
        Method::Gpu(_) => Some(open_gpu(json)?),
        Method::Cpu => None,
    };
    // Asked before anything is made: the device's plan, then the host's bytes.
    let mut host_bytes = problem_bytes(&case.config, case.batch, seq);
    match (&ctx, method) {
        (Some(ctx), Method::Gpu(strategy)) => {
            fits::forward(
                ctx,
                &case.config,
                case.precision,
                strategy,
                (case.batch, seq),
                &options,
            )?;
        }
        _ => host_bytes = host_bytes.saturating_add(reference_bytes(&case.config, case.batch, seq)),
    }
    fits::host("the benchmark's problem", host_bytes, &options)?;
    let machine = Machine::of(ctx.as_ref());
    note(
        json,
        &format!(
            "problem: {}; strategy {}; {} warm-up + {} timed forwards",
            case.describe(Some(seq)),
            method.name(),
            case.warmup,
            case.iters
        ),
    );
    let (weights, input) = random_problem(case.config, case.batch, seq, None, 1.0, SEED)?;
    let progress = progress_bar(case.warmup.saturating_add(case.iters) as u64);
    progress.set_message(method.name());
    let measurement = measure(
        ctx.as_ref(),
        method,
        case.precision,
        &weights,
        &input,
        (case.warmup, case.iters),
        &progress,
    );
    progress.finish_and_clear();
    let measurement = measurement?;
    let gemm = match &ctx {
        Some(ctx) if !no_gemm => Some(time_our_gemm(ctx, json)?),
        _ => None,
    };
    let report = report(&case, &machine, &measurement, gemm.as_ref());
    if json {
        return Ok(print_json(&report)?);
    }
    print_report(&report);
    Ok(())
}
