//! `compattn bench` without `--sweep`, `--decode` or `--gemm`: one method at one size, a table
//! or one JSON object.

use super::case::{BenchCase, Method};
use super::forward_timing::measure_case;
use super::gemm_timing::GemmBetween;
use super::machine::Machine;
use super::report::{print_report, report};
use crate::common::{CliResult, open_gpu};
use crate::fits;
use crate::output::{note, print_json};
use crate::sizes::{problem_bytes, reference_bytes};

/// Times `method` at `case`'s problem with its sequence length; compares with our GEMM, timed
/// between the forward's samples, unless `no_gemm`.
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
    let mut gemm = match &ctx {
        Some(ctx) if !no_gemm => Some(GemmBetween::new(ctx, json)?),
        _ => None,
    };
    let measurement = measure_case(ctx.as_ref(), &case, method, seq, &mut || match &mut gemm {
        Some(gemm) => gemm.sample(),
        None => Ok(()),
    })?;
    let gemm = gemm.as_ref().and_then(GemmBetween::report);
    let report = report(&case, &machine, &measurement, gemm.as_ref());
    if json {
        return Ok(print_json(&report)?);
    }
    print_report(&report);
    Ok(())
}
