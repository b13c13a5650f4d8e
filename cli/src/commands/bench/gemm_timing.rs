//! Our GEMM kernels timed on their own: `compattn bench --gemm N,...` (every kernel at every
//! size), and the one GEMM a forward's report compares with ("fraction of our GEMM"): timed up
//! front by [`time_our_gemm`] (the suite's GEMM row, `--sweep`), or sampled between a forward's
//! timed samples by [`GemmBetween`] (a single forward, each forward of the suite).

use compositional_attention::kernel_bench::{GemmKernel, KernelBench, summarize};
use compositional_attention::{Error, GpuContext, TimingSource};
use serde::Serialize;

use super::machine::Machine;
use crate::common::{CliResult, Failure, open_gpu};
use crate::fits;
use crate::output::{fmt_ms, note, print_json, progress_bar};
use crate::sizes::{SizeOption, at_least_one, list_of_positive};

/// Size of the GEMM the forward is compared with (`m = n = k`).
const COMPARISON_SIZE: usize = 1024;
/// Timed samples of that GEMM (after one warm-up sample).
const COMPARISON_SAMPLES: usize = 5;

/// One GEMM kernel timed at `size³`.
#[derive(Clone, Debug, Serialize)]
pub struct GemmReport {
    /// `texels`, `register`, `tiled` or `auto` (the layer's choice).
    pub kernel: &'static str,
    /// The pipeline variant's label.
    pub variant: String,
    /// `m = n = k`.
    pub size: usize,
    /// Dispatches per sample (the K range is split where the driver caps loops).
    pub launches: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub gflops: f64,
    pub timing: &'static str,
    /// Timed samples behind the median.
    pub samples: usize,
}

fn gemm_kernel_name(kernel: GemmKernel) -> &'static str {
    match kernel {
        GemmKernel::Auto => "auto",
        GemmKernel::Texels => "texels",
        GemmKernel::Register => "register",
        GemmKernel::Tiled => "tiled",
    }
}

/// `warmup` untimed and `iters` timed samples of one GEMM kernel at `size³`.
fn measure_gemm(
    ctx: &GpuContext,
    kernel: GemmKernel,
    size: usize,
    warmup: usize,
    iters: usize,
) -> Result<GemmReport, Error> {
    let mut bench = pollster::block_on(KernelBench::gemm(ctx, kernel, size, size, size))?;
    for _ in 0..warmup {
        bench.sample_ms_blocking()?;
    }
    // Grown as samples come (a count of work, not a size to allocate up front).
    let mut samples = Vec::new();
    let mut source = TimingSource::HostWallClock;
    for _ in 0..iters {
        let (ms, from) = bench.sample_ms_blocking()?;
        samples.push(ms);
        source = from;
    }
    Ok(report_of(&bench, kernel, size, &samples, source))
}

/// The report of `samples` (not empty) of `bench`, `kernel` at `size³`.
fn report_of(
    bench: &KernelBench,
    kernel: GemmKernel,
    size: usize,
    samples: &[f64],
    source: TimingSource,
) -> GemmReport {
    let (median_ms, min_ms, max_ms) = summarize(samples);
    GemmReport {
        kernel: gemm_kernel_name(kernel),
        variant: bench.variant().to_string(),
        size,
        launches: bench.launches(),
        median_ms,
        min_ms,
        max_ms,
        gflops: bench.flops() / 1e9 / (median_ms / 1e3),
        timing: source.name(),
        samples: samples.len(),
    }
}

/// Times the GEMM the layer uses here at 1024³, up front.
pub fn time_our_gemm(ctx: &GpuContext, json: bool) -> Result<GemmReport, Error> {
    note(
        json,
        &format!(
            "timing our GEMM at {COMPARISON_SIZE}³ for comparison (--no-gemm skips it, but not in --suite)"
        ),
    );
    measure_gemm(
        ctx,
        GemmKernel::Auto,
        COMPARISON_SIZE,
        1,
        COMPARISON_SAMPLES,
    )
}

/// Our GEMM at 1024³ sampled once after each timed sample of a forward, so that the forward's
/// "fraction of our GEMM" compares two kernels timed side by side. On a shared machine (a CPU
/// driver on a VM whose neighbours come and go) the speed of both moves by up to 2× within
/// minutes: with one GEMM timing taken before the forwards, the same binary's suite gave the
/// cores 0.88–1.49 of it in one run and 0.53–1.03 in the next (BENCHMARKS.md, "The GEMM beside
/// each forward"). The forwards it brackets are timed after a GEMM that has just run, not on a
/// machine left idle; `--no-gemm` times them without it.
pub struct GemmBetween {
    bench: KernelBench,
    samples: Vec<f64>,
    source: TimingSource,
}

impl GemmBetween {
    /// Checks the GEMM's operands against the device and the host, builds it and runs it once
    /// untimed (a CPU driver compiles at the first dispatch).
    pub fn new(ctx: &GpuContext, json: bool) -> Result<Self, Failure> {
        let fixed = SizeOption {
            name: "--gemm",
            value: COMPARISON_SIZE,
            default: COMPARISON_SIZE,
        };
        fits::gemm(ctx, COMPARISON_SIZE, fixed).map_err(|e| {
            Failure::Check(format!(
                "our {COMPARISON_SIZE}³ GEMM, the forward's comparison, does not fit: {e} \
                 (--no-gemm skips it)"
            ))
        })?;
        note(
            json,
            &format!(
                "our GEMM at {COMPARISON_SIZE}³ is timed after each timed forward, for comparison"
            ),
        );
        let mut bench = pollster::block_on(KernelBench::gemm(
            ctx,
            GemmKernel::Auto,
            COMPARISON_SIZE,
            COMPARISON_SIZE,
            COMPARISON_SIZE,
        ))?;
        bench.sample_ms_blocking()?;
        Ok(GemmBetween {
            bench,
            // Grown one per forward sample: a count of work, not a size to allocate.
            samples: Vec::new(),
            source: TimingSource::HostWallClock,
        })
    }

    /// Forgets the samples, for the next forward.
    pub fn restart(&mut self) {
        self.samples.clear();
    }

    /// One timed sample.
    pub fn sample(&mut self) -> Result<(), Error> {
        let (ms, source) = self.bench.sample_ms_blocking()?;
        self.samples.push(ms);
        self.source = source;
        Ok(())
    }

    /// The samples since the last restart; `None` before the first.
    pub fn report(&self) -> Option<GemmReport> {
        (!self.samples.is_empty()).then(|| {
            report_of(
                &self.bench,
                GemmKernel::Auto,
                COMPARISON_SIZE,
                &self.samples,
                self.source,
            )
        })
    }
}

#[derive(Serialize)]
struct GemmSweep {
    adapter: String,
    backend: String,
    /// The variant the layer uses here (`GemmKernel::Auto`).
    layer_variant: String,
    results: Vec<GemmReport>,
}

/// `compattn bench --gemm N,...`: every kernel at every size, a table or one JSON object.
pub fn run(sizes: &[usize], warmup: Option<usize>, iters: Option<usize>, json: bool) -> CliResult {
    let warmup = warmup.unwrap_or(2);
    let iters = iters.unwrap_or(10);
    at_least_one("--iters", iters)?;
    list_of_positive("--gemm", sizes)?;
    let ctx = open_gpu(json)?;
    // Every size is asked of the device and the host before any operand is made.
    for &size in sizes {
        let option = SizeOption {
            name: "--gemm",
            value: size,
            default: COMPARISON_SIZE,
        };
        fits::gemm(&ctx, size, option)?;
    }
    let machine = Machine::of(Some(&ctx));
    let kernels = [GemmKernel::Texels, GemmKernel::Register, GemmKernel::Tiled];
    let layer_variant = match sizes.first() {
        Some(&size) => {
            pollster::block_on(KernelBench::gemm(&ctx, GemmKernel::Auto, size, size, size))?
                .variant()
                .to_string()
        }
        None => String::new(),
    };
    let progress = progress_bar((sizes.len() * kernels.len()) as u64);
    let mut results = Vec::new();
    for &size in sizes {
        for kernel in kernels {
            progress.set_message(format!("{} {size}³", gemm_kernel_name(kernel)));
            let result = measure_gemm(&ctx, kernel, size, warmup, iters);
            progress.inc(1);
            match result {
                Ok(report) => results.push(report),
                Err(error) => {
                    progress.finish_and_clear();
                    return Err(error.into());
                }
            }
        }
    }
    progress.finish_and_clear();
    let sweep = GemmSweep {
        adapter: machine.adapter,
        backend: machine.backend,
        layer_variant,
        results,
    };
    if json {
        return Ok(print_json(&sweep)?);
    }
    println!();
    println!(
        "{:>6}  {:<9} {:>10} {:>9}  variant ({warmup} warm-up + {iters} timed samples; \
         * = the layer's kernel here)",
        "size", "kernel", "median ms", "GFLOP/s"
    );
    for r in &sweep.results {
        let mark = if r.variant == sweep.layer_variant {
            "*"
        } else {
            " "
        };
        let launches = if r.launches > 1 {
            format!(" (×{})", r.launches)
        } else {
            String::new()
        };
        println!(
            "{:>5}³  {:<9} {:>10} {:>9.2} {mark}{}{launches}",
            r.size,
            r.kernel,
            fmt_ms(r.median_ms),
            r.gflops,
            r.variant
        );
    }
    if let Some(r) = sweep.results.first() {
        println!("timing: {}", r.timing);
    }
    Ok(())
}
