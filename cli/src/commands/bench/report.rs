//! The report of one method at one size: medians, GFLOP/s on `Config::forward_flops`, the
//! kernels' shares, the attention core's GFLOP/s and the fraction of our GEMM; printed as a
//! table or serialised as JSON.

use compositional_attention::kernel_bench::summarize;
use serde::Serialize;

use super::case::{BenchCase, Method};
use super::forward_timing::Measurement;
use super::gemm_timing::GemmReport;
use super::machine::Machine;
use crate::output::{fmt_mib, fmt_ms};

/// Label prefixes of the kernels outside the attention core (projections, format copies, norm).
const NON_CORE_KERNELS: [&str; 3] = ["gemm", "texture_copy", "layer_norm"];

/// One kernel's share of the forward.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub label: String,
    pub launches: usize,
    pub median_ms: f64,
    /// Of the sum of the kernels' medians.
    pub share: f64,
}

/// Everything `--json` prints for one method at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub strategy: &'static str,
    /// Storage precision of the layer (`f32` or `f16`; the CPU reference is f64).
    pub precision: &'static str,
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub dim_head: usize,
    pub searches: usize,
    pub retrievals: usize,
    pub causal: bool,
    pub prenorm: bool,
    pub warmup: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
    /// Host wall time from upload to readback (median).
    pub wall_median_ms: f64,
    /// `Config::forward_flops / 1e9`.
    pub gflop: f64,
    /// `gflop / median seconds`.
    pub gflops: f64,
    /// `gpu-timestamps` or `host-wall-clock`.
    pub timing: &'static str,
    pub adapter: String,
    pub backend: String,
    /// `COMPATTN_TUNE` as the run used it: `off`, `on` or `force`. The kernels' labels name
    /// the tilings that ran.
    pub tune: &'static str,
    pub gpu_bytes: u64,
    pub kernels: Vec<KernelReport>,
    /// Kernels of the attention core (all but GEMMs, texel copies and the LayerNorm), summed.
    pub core_ms: Option<f64>,
    /// The core's GFLOP/s on `Config::core_flops`.
    pub core_gflops: Option<f64>,
    /// Our GEMM on the same adapter.
    pub gemm: Option<GemmReport>,
    /// `gflops / gemm.gflops`.
    pub fraction_of_gemm: Option<f64>,
    /// `core_gflops / gemm.gflops`.
    pub core_fraction_of_gemm: Option<f64>,
    /// What the layer ran: kernel family, storage, GEMM, and the core with its tiling (the
    /// tuned one where tuning chose). Absent for the CPU reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The report of `measurement` (of `case`, on `machine`), compared with `gemm` if measured.
pub fn report(
    case: &BenchCase,
    machine: &Machine,
    measurement: &Measurement,
    gemm: Option<&GemmReport>,
) -> Report {
    let c = &case.config;
    let (batch, seq) = (case.batch, measurement.seq);
    let (median_ms, min_ms, max_ms) = summarize(&measurement.samples_ms);
    let gflop = c.forward_flops(batch, seq) / 1e9;
    let gflops = gflop / (median_ms / 1e3);
    let medians: Vec<f64> = measurement
        .kernels
        .iter()
        .map(|k| summarize(&k.samples_ms).0)
        .collect();
    let total: f64 = medians.iter().sum();
    let kernels: Vec<KernelReport> = measurement
        .kernels
        .iter()
        .zip(&medians)
        .map(|(k, &median_ms)| KernelReport {
            label: k.label.clone(),
            launches: k.launches,
            median_ms,
            share: median_ms / total,
        })
        .collect();
    let core_ms = (!kernels.is_empty()).then(|| {
        kernels
            .iter()
            .filter(|k| !NON_CORE_KERNELS.iter().any(|p| k.label.starts_with(p)))
            .map(|k| k.median_ms)
            .sum::<f64>()
    });
    let core_gflops = core_ms.map(|ms| c.core_flops(batch, seq) / 1e9 / (ms / 1e3));
    let gemm_gflops = gemm.map(|g| g.gflops);
    Report {
        strategy: measurement.method.name(),
        precision: match measurement.method {
            Method::Cpu => "f64",
            Method::Gpu(_) => case.precision.name(),
        },
        batch,
        seq,
        dim: c.dim,
        dim_head: c.dim_head,
        searches: c.num_searches,
        retrievals: c.num_retrievals,
        causal: c.causal,
        prenorm: c.prenorm,
        warmup: case.warmup,
        iters: measurement.samples_ms.len(),
        median_ms,
        min_ms,
        max_ms,
        samples_ms: measurement.samples_ms.clone(),
        wall_median_ms: summarize(&measurement.wall_ms).0,
        gflop,
        gflops,
        timing: measurement.source.name(),
        adapter: machine.adapter.clone(),
        backend: machine.backend.clone(),
        tune: machine.tune,
        gpu_bytes: measurement.gpu_bytes,
        kernels,
        core_ms,
        core_gflops,
        gemm: gemm.cloned(),
        fraction_of_gemm: gemm_gflops.map(|g| gflops / g),
        core_fraction_of_gemm: core_gflops.zip(gemm_gflops).map(|(c, g)| c / g),
        plan: measurement.plan.clone(),
    }
}

/// The report as a table on stdout.
pub fn print_report(r: &Report) {
    let source = match r.timing {
        "gpu-timestamps" => "GPU time from timestamp queries",
        _ => "host wall time",
    };
    println!();
    println!(
        "{:<14} median {} ms, min {} ms, max {} ms over {} forwards ({source})",
        r.strategy,
        fmt_ms(r.median_ms),
        fmt_ms(r.min_ms),
        fmt_ms(r.max_ms),
        r.iters
    );
    println!(
        "{:<14} {:.3} GFLOP per forward, {:.2} GFLOP/s",
        "throughput", r.gflop, r.gflops
    );
    if r.timing == "gpu-timestamps" {
        println!(
            "{:<14} median {} ms (upload, submit, readback)",
            "host wall",
            fmt_ms(r.wall_median_ms)
        );
    }
    if r.strategy != "cpu" {
        println!("{:<14} {}", "GPU buffers", fmt_mib(r.gpu_bytes));
        println!("{:<14} COMPATTN_TUNE={}", "tuning", r.tune);
    }
    if let Some(plan) = &r.plan {
        println!("{:<14} {plan}", "plan");
    }
    if !r.kernels.is_empty() {
        let width = r
            .kernels
            .iter()
            .map(|k| k.label.len() + 5)
            .max()
            .unwrap_or(0)
            .max(6);
        println!();
        println!("{:<width$} {:>10} {:>7}", "kernel", "median ms", "share");
        for k in &r.kernels {
            let label = if k.launches > 1 {
                format!("{} (×{})", k.label, k.launches)
            } else {
                k.label.clone()
            };
            println!(
                "{label:<width$} {:>10} {:>6.1}%",
                fmt_ms(k.median_ms),
                100.0 * k.share
            );
        }
        let total: f64 = r.kernels.iter().map(|k| k.median_ms).sum();
        println!("{:<width$} {:>10} {:>6.1}%", "sum", fmt_ms(total), 100.0);
    }
    if let (Some(ms), Some(gflops)) = (r.core_ms, r.core_gflops) {
        println!();
        println!(
            "attention core (all but GEMMs, copies, LayerNorm): {} ms, {gflops:.2} GFLOP/s on \
             2·b·s·n²·d·(1+r) + 4·b·s·r·n·d FLOPs",
            fmt_ms(ms)
        );
    }
    if let Some(gemm) = &r.gemm {
        println!();
        println!(
            "our GEMM at {n}³ ({}, {}): {} ms, {:.2} GFLOP/s",
            gemm.kernel,
            gemm.variant,
            fmt_ms(gemm.median_ms),
            gemm.gflops,
            n = gemm.size
        );
        if let Some(fraction) = r.fraction_of_gemm {
            println!("fraction of our GEMM: forward {fraction:.2}×");
        }
        if let Some(fraction) = r.core_fraction_of_gemm {
            println!("fraction of our GEMM: attention core {fraction:.2}×");
        }
    }
}
