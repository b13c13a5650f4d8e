//! `compattn soak --forwards N`: a long soak run (`compositional_attention::testing::soak`): N forwards of
//! one layer cycling shapes, masks and strategies, every output checked against the f64
//! reference, with the host memory (RSS) and `gpu_bytes` curve.

use compositional_attention::Error;
use compositional_attention::testing::soak::{self, SoakReport};
use serde::Serialize;

use crate::common::{CliResult, open_gpu};
use crate::output::{fmt_mib, print_json, progress_bar};

#[derive(clap::Args)]
pub struct Args {
    /// Forwards to run.
    #[arg(long, default_value_t = 1000)]
    forwards: usize,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Sample {
    forwards: usize,
    rss_bytes: u64,
    gpu_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    adapter: String,
    forwards: usize,
    seconds: f64,
    worst_error: f64,
    rss_growth_bytes: u64,
    warmup_gpu_bytes: u64,
    gpu_growth_bytes: u64,
    samples: Vec<Sample>,
}

pub fn run(args: &Args) -> CliResult {
    if args.forwards == 0 {
        return Err(Error::InvalidConfig {
            field: "--forwards",
            value: "0".into(),
            reason: "must be at least 1",
        }
        .into());
    }
    let ctx = open_gpu(args.json)?;
    let progress = progress_bar(args.forwards as u64);
    let report: SoakReport = soak::run(&ctx, args.forwards, args.seed, 1e-4, |done| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    let out = Report {
        adapter: ctx.describe(),
        forwards: report.forwards,
        seconds: report.seconds,
        worst_error: report.worst_error,
        rss_growth_bytes: report.rss_growth(),
        warmup_gpu_bytes: report.warmup_gpu_bytes,
        gpu_growth_bytes: report.gpu_growth(),
        samples: report
            .samples
            .iter()
            .map(|s| Sample {
                forwards: s.forwards,
                rss_bytes: s.rss_bytes,
                gpu_bytes: s.gpu_bytes,
            })
            .collect(),
    };
    if args.json {
        return Ok(print_json(&out)?);
    }
    println!(
        "{} forwards in {:.1} s, every output within 1e-4 of the reference (worst {:.2e})",
        out.forwards, out.seconds, out.worst_error
    );
    println!("{:>9} {:>12} {:>12}", "forwards", "RSS", "gpu_bytes");
    for s in &out.samples {
        println!(
            "{:>9} {:>12} {:>12}",
            s.forwards,
            fmt_mib(s.rss_bytes),
            fmt_mib(s.gpu_bytes)
        );
    }
    println!(
        "RSS grew {} after the warm-up round; gpu_bytes stayed within the warm-up round's {} \
         (grew {})",
        fmt_mib(out.rss_growth_bytes),
        fmt_mib(out.warmup_gpu_bytes),
        fmt_mib(out.gpu_growth_bytes)
    );
    Ok(())
}
