//! `compattn bench --sweep`: fused, unfused and the CPU reference at every sequence length of
//! `--seq-list`, a table (or one JSON object) and an SVG plot of GFLOP/s against n.

use std::path::Path;

use compositional_attention::testing::random_problem;
use compositional_attention::{Error, Strategy, io};
use serde::Serialize;

use super::case::{BenchCase, Method, SEED};
use super::forward_timing::{Measurement, measure};
use super::gemm_timing::{GemmReport, time_our_gemm};
use super::machine::Machine;
use super::report::{Report, report};
use crate::common::{CliResult, open_gpu};
use crate::fits;
use crate::output::svg_plot::{COLOURS, LinePlot, Series};
use crate::output::{fmt_ms, note, print_json, progress_bar};
use crate::sizes::{SizeOption, list_of_positive, problem_bytes, reference_bytes};

/// Sequence lengths of `--sweep` without `--seq-list`.
pub const SWEEP_SEQS: [usize; 5] = [128, 256, 512, 1024, 2048];

/// What the sweep measures besides the case: its sequence lengths, up to which n the CPU
/// reference runs, where the plot goes, and whether to time our GEMM.
pub struct SweepRequest<'a> {
    pub seqs: &'a [usize],
    pub cpu_max_seq: usize,
    pub out: &'a Path,
    pub no_gemm: bool,
    pub json: bool,
}

/// A measurement the sweep left out, and why.
#[derive(Clone, Debug, Serialize)]
struct Skipped {
    strategy: &'static str,
    seq: usize,
    reason: String,
}

#[derive(Serialize)]
struct Sweep {
    adapter: String,
    backend: String,
    gemm: Option<GemmReport>,
    results: Vec<Report>,
    skipped: Vec<Skipped>,
}

pub fn run(case: BenchCase, request: SweepRequest<'_>) -> CliResult {
    let SweepRequest {
        seqs,
        cpu_max_seq,
        out,
        no_gemm,
        json,
    } = request;
    list_of_positive("--seq-list", seqs)?;
    // The CPU reference gets no warm-up and at most 3 timed forwards: it is slow and has no
    // pipelines to compile.
    let cpu_iters = case.iters.min(3);

    let ctx = open_gpu(json)?;
    // Every n is asked of the device (the fused strategy must run it; the unfused one is
    // skipped where it cannot) and the largest problems of the host, before anything is made.
    let seq_option = |n: usize| SizeOption {
        name: "--seq-list",
        value: n,
        default: SWEEP_SEQS[SWEEP_SEQS.len() - 1],
    };
    for &n in seqs {
        let options = case.options_with(seq_option(n));
        let fused = Strategy::Fused;
        fits::forward(
            &ctx,
            &case.config,
            case.precision,
            fused,
            (case.batch, n),
            &options,
        )?;
    }
    let largest = seqs.iter().copied().max().unwrap_or(1);
    let largest_cpu = seqs.iter().copied().filter(|&n| n <= cpu_max_seq).max();
    let host_bytes = problem_bytes(&case.config, case.batch, largest)
        .saturating_add(largest_cpu.map_or(0, |n| reference_bytes(&case.config, case.batch, n)));
    fits::host(
        "the sweep's largest problem",
        host_bytes,
        &case.options_with(seq_option(largest)),
    )?;
    let machine = Machine::of(Some(&ctx));
    note(
        json,
        &format!(
            "sweep: {}; n in {seqs:?}; {} warm-up + {} timed forwards per GPU point, {cpu_iters} \
             per CPU-reference point (n <= {cpu_max_seq})",
            case.describe(None),
            case.warmup,
            case.iters
        ),
    );
    let gemm = if no_gemm {
        None
    } else {
        Some(time_our_gemm(&ctx, json)?)
    };

    let mut points: Vec<(usize, Method)> = Vec::new();
    for &n in seqs {
        for method in Method::ALL {
            if method != Method::Cpu || n <= cpu_max_seq {
                points.push((n, method));
            }
        }
    }
    let forwards = |method: Method| match method {
        Method::Cpu => cpu_iters,
        Method::Gpu(_) => case.warmup.saturating_add(case.iters),
    };
    let total: usize = points.iter().map(|&(_, m)| forwards(m)).sum();
    let progress = progress_bar(total as u64);
    let mut measurements: Vec<Measurement> = Vec::new();
    let mut skipped: Vec<Skipped> = seqs
        .iter()
        .filter(|&&n| n > cpu_max_seq)
        .map(|&n| Skipped {
            strategy: Method::Cpu.name(),
            seq: n,
            reason: format!("n > --cpu-max-seq {cpu_max_seq}"),
        })
        .collect();
    for (n, method) in points {
        progress.set_message(format!("{} n={n}", method.name()));
        let before = progress.position();
        let result = random_problem(case.config, case.batch, n, None, 1.0, SEED).and_then(
            |(weights, input)| {
                let (warmup, iters) = match method {
                    Method::Cpu => (0, cpu_iters),
                    Method::Gpu(_) => (case.warmup, case.iters),
                };
                measure(
                    Some(&ctx),
                    method,
                    case.precision,
                    &weights,
                    &input,
                    (warmup, iters),
                    &progress,
                    &mut || Ok(()),
                )
            },
        );
        match result {
            Ok(measurement) => measurements.push(measurement),
            // The unfused strategy's n² buffers outgrow the device: note it, go on.
            Err(error @ (Error::LimitExceeded { .. } | Error::GpuOutOfMemory { .. }))
                if method != Method::Gpu(Strategy::Fused) =>
            {
                progress.suspend(|| {
                    eprintln!("note: {} at n = {n} skipped: {error}", method.name());
                });
                progress.set_position(before + forwards(method) as u64);
                skipped.push(Skipped {
                    strategy: method.name(),
                    seq: n,
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                progress.finish_and_clear();
                return Err(error.into());
            }
        }
    }
    progress.finish_and_clear();

    let results: Vec<Report> = measurements
        .iter()
        .map(|m| {
            let case = BenchCase {
                warmup: if m.method == Method::Cpu {
                    0
                } else {
                    case.warmup
                },
                ..case
            };
            report(&case, &machine, m, gemm.as_ref())
        })
        .collect();
    let c = &case.config;
    let flags: String = [(c.causal, ", causal"), (c.prenorm, ", prenorm")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
    let title = format!(
        "Forward GFLOP/s vs n on {}: b {}, dim {}, d {}, s {}, r {}{flags}",
        machine.short, case.batch, c.dim, c.dim_head, c.num_searches, c.num_retrievals
    );
    let svg = plot(&title, seqs, &results, gemm.as_ref()).draw()?;
    io::write_file(out, svg.as_bytes())?;
    let sweep = Sweep {
        adapter: machine.adapter,
        backend: machine.backend,
        gemm,
        results,
        skipped,
    };
    if json {
        eprintln!("wrote {}", out.display());
        return Ok(print_json(&sweep)?);
    }
    print_sweep(&sweep, seqs);
    println!();
    println!("wrote {}", out.display());
    Ok(())
}

fn print_sweep(sweep: &Sweep, seqs: &[usize]) {
    let find = |n: usize, method: Method| {
        sweep
            .results
            .iter()
            .find(|r| r.seq == n && r.strategy == method.name())
    };
    let cell = |report: Option<&Report>| match report {
        Some(r) => format!("{:>9} {:>8.2}", fmt_ms(r.median_ms), r.gflops),
        None => format!("{:>18}", "-"),
    };
    println!();
    print!("{:>6} {:>8}", "n", "GFLOP");
    for method in Method::ALL {
        print!(" | {:>18}", format!("{} ms  GFLOP/s", method.name()));
    }
    println!(" | fused speed-up vs unfused, cpu");
    for &n in seqs {
        let any = Method::ALL.iter().find_map(|&m| find(n, m));
        let gflop = any.map_or(String::from("-"), |r| format!("{:.3}", r.gflop));
        print!("{n:>6} {gflop:>8}");
        for method in Method::ALL {
            print!(" | {}", cell(find(n, method)));
        }
        let fused = find(n, Method::Gpu(Strategy::Fused));
        let speedup = |other: Option<&Report>| match (fused, other) {
            (Some(f), Some(o)) => format!("{:.2}×", o.median_ms / f.median_ms),
            _ => "-".into(),
        };
        println!(
            " | {}, {}",
            speedup(find(n, Method::Gpu(Strategy::Unfused))),
            speedup(find(n, Method::Cpu))
        );
    }
    let timings: Vec<String> = Method::ALL
        .iter()
        .filter_map(|&m| {
            sweep
                .results
                .iter()
                .find(|r| r.strategy == m.name())
                .map(|r| format!("{} {}", m.name(), r.timing))
        })
        .collect();
    println!("timing: {}", timings.join(", "));
    if let Some(gemm) = &sweep.gemm {
        println!(
            "our GEMM at {n}³ ({}): {:.2} GFLOP/s",
            gemm.variant,
            gemm.gflops,
            n = gemm.size
        );
    }
    for skip in &sweep.skipped {
        println!(
            "skipped: {} at n = {}: {}",
            skip.strategy, skip.seq, skip.reason
        );
    }
}

/// GFLOP/s against n (both axes logarithmic), one line per method and our GEMM as a dashed
/// reference level.
fn plot<'a>(
    title: &'a str,
    seqs: &[usize],
    results: &[Report],
    gemm: Option<&GemmReport>,
) -> LinePlot<'a> {
    let mut series: Vec<Series> = Method::ALL
        .iter()
        .zip(COLOURS)
        .map(|(method, colour)| Series {
            label: match method {
                Method::Gpu(strategy) => format!("{strategy} (GPU)"),
                Method::Cpu => "f64 CPU reference".into(),
            },
            colour,
            points: results
                .iter()
                .filter(|r| r.strategy == method.name())
                .map(|r| (r.seq as f64, r.gflops))
                .collect(),
            dashed: false,
        })
        .collect();
    if let Some(gemm) = gemm {
        series.push(Series {
            label: format!("our GEMM, {n}³", n = gemm.size),
            colour: COLOURS[3],
            points: vec![(seqs.first().copied().unwrap_or(1) as f64, gemm.gflops)],
            dashed: true,
        });
    }
    LinePlot {
        title,
        x_desc: "sequence length n",
        y_desc: "GFLOP/s (Config::forward_flops / median time)",
        x_keys: seqs.iter().map(|&n| n as f64).collect(),
        // Room below the lowest point for the legend.
        y_room: (6.0, 1.5),
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_plot_renders_without_measurements() {
        let svg = plot("title", &[128, 256], &[], None).draw().unwrap();
        assert!(svg.starts_with("<svg"));
    }
}
