//! `compattn bench`: the forward pass timed per strategy (fused, unfused, or the `f64` CPU
//! reference), a sweep over sequence lengths drawn as an SVG plot, and our GEMM on its own.
//!
//! GPU times come from `TIMESTAMP_QUERY` where the adapter has it (the kernels alone, on the
//! GPU's clock, one compute pass per kernel), else from the host wall clock around upload, submit
//! and readback; every report says which (`timing`). The CPU reference is timed with the host
//! clock. FLOPs are `Config::forward_flops` (SPEC §7, dense: causal masking does not reduce them).
//!
//! Everything but the results goes to stderr (progress bar, notes), so `--json` output can be
//! piped straight into a JSON parser.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use compositional_attention::io::{self, Input};
use compositional_attention::kernel_bench::{GemmKernel, KernelBench, summarize};
use compositional_attention::verify::random_problem;
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, GpuOptions, KernelTime, Precision, Strategy,
    TimingSource, Weights, reference,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::common::{CliResult, ProblemArgs, ProblemDefaults};

/// Seed of the random weights and input: every run measures the same problem.
const SEED: u64 = 0;
/// Size of the GEMM the forward is compared with (`m = n = k`).
const GEMM_REFERENCE_SIZE: usize = 1024;
/// Timed samples of that GEMM (after one warm-up sample).
const GEMM_REFERENCE_SAMPLES: usize = 5;
/// Sequence lengths of `--sweep` without `--seq-list`.
const SWEEP_SEQS: [usize; 5] = [128, 256, 512, 1024, 2048];
/// Label prefixes of the kernels outside the attention core (projections, format copies, norm).
const NON_CORE_KERNELS: [&str; 3] = ["gemm", "texture_copy", "layer_norm"];

/// What is timed: a GPU strategy of the layer, or the `f64` CPU reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The layer on the GPU with this strategy.
    Gpu(Strategy),
    /// `reference::forward`: single-threaded `f64` on the host.
    Cpu,
}

impl Method {
    /// Every method, in the order reports list them.
    const ALL: [Method; 3] = [
        Method::Gpu(Strategy::Fused),
        Method::Gpu(Strategy::Unfused),
        Method::Cpu,
    ];

    /// `fused`, `unfused` (the library's names) or `cpu`.
    fn name(self) -> &'static str {
        match self {
            Method::Gpu(strategy) => strategy.name(),
            Method::Cpu => "cpu",
        }
    }
}

/// Parses `--strategy`: the library's strategy names (`Strategy::from_str`) and `cpu`.
fn method_parser() -> impl TypedValueParser<Value = Method> {
    let names = Strategy::ALL
        .iter()
        .map(|s| s.name())
        .chain(["cpu"])
        .collect::<Vec<_>>();
    PossibleValuesParser::new(names).try_map(|name| match name.as_str() {
        "cpu" => Ok(Method::Cpu),
        gpu => gpu.parse::<Strategy>().map(Method::Gpu),
    })
}

#[derive(clap::Args)]
pub struct Args {
    /// Configuration and shape [defaults: batch 1, seq 512, dim 512, dim_head 64, 8 searches,
    /// 2 retrievals; with --sweep dim 256, dim_head 32, 4 searches]. FLOPs are counted dense
    /// with --causal.
    #[command(flatten)]
    problem: ProblemArgs,
    /// What to time: a GPU strategy of the layer, or `cpu` (the f64 reference on the host)
    /// [default: fused].
    #[arg(long, value_parser = method_parser(), conflicts_with = "sweep")]
    strategy: Option<Method>,
    /// Untimed forwards (or GEMM samples) before the timed ones; the first compiles the pipelines
    /// [default: 2; with --sweep 1].
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed forwards (or GEMM samples) [default: 10; with --sweep 5].
    #[arg(long)]
    iters: Option<usize>,
    /// Print one JSON object on stdout instead of tables (notes and progress go to stderr).
    #[arg(long)]
    json: bool,
    /// Time generation instead of the forward: one decode step over a KV cache holding
    /// --context positions, against recomputing the causal forward over context + 1 tokens
    /// (the layer is made causal). Reports decode_ms, recompute_ms, tokens_per_s, cache_bytes
    /// and the time to copy cache_bytes on the device.
    /// With --sweep: every context of --seq-list (default 256,512,1024,2048), a table, and an
    /// SVG plot of decode_ms and recompute_ms against the context (--out).
    #[arg(long, conflicts_with_all = ["gemm", "strategy", "seq"])]
    decode: bool,
    /// How the layer stores its weights, KV cache and large intermediates: `f32`, or `f16`
    /// (needs the device feature shader-f16) [default: f32].
    #[arg(long, value_parser = crate::common::precision_parser(), conflicts_with = "gemm")]
    precision: Option<Precision>,
    /// Positions in the KV cache before the timed decode steps [default: 2048].
    #[arg(long, value_name = "N", requires = "decode", conflicts_with = "sweep")]
    context: Option<usize>,
    /// Skip measuring our GEMM (1024³) for the "fraction of our GEMM" comparison.
    #[arg(long)]
    no_gemm: bool,
    /// Sweep the sequence length: fused, unfused and the CPU reference at every n of
    /// --seq-list, a table, and an SVG plot of GFLOP/s against n (--out).
    #[arg(long, conflicts_with_all = ["gemm", "seq"])]
    sweep: bool,
    /// Sequence lengths of the sweep [default: 128,256,512,1024,2048].
    #[arg(long, value_delimiter = ',', value_name = "N,...", requires = "sweep")]
    seq_list: Option<Vec<usize>>,
    /// Where the sweep writes its SVG plot [default: sweep.svg].
    #[arg(long, value_name = "PLOT.svg", requires = "sweep")]
    out: Option<PathBuf>,
    /// The sweep runs the CPU reference up to this n only (it is slow) [default: 1024].
    #[arg(long, value_name = "N", requires = "sweep")]
    cpu_max_seq: Option<usize>,
    /// Time our GEMM kernels (texels, register, tiled) at these sizes (m = n = k) instead of the
    /// layer, and print their GFLOP/s.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,...",
        conflicts_with_all = ["strategy", "seq", "batch", "dim", "dim_head", "searches", "retrievals", "causal", "prenorm"]
    )]
    gemm: Option<Vec<usize>>,
}

/// The problem and the sample counts, with the defaults of the chosen mode filled in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) config: Config,
    pub(crate) precision: Precision,
    pub(crate) batch: usize,
    pub(crate) warmup: usize,
    pub(crate) iters: usize,
}

impl Args {
    fn plan(&self) -> Result<Plan, Error> {
        // A decode sweep keeps the single-run sizes (issue 8's configuration).
        let sweep = self.sweep && !self.decode;
        let pick = |value: Option<usize>, single: usize, swept: usize| {
            value.unwrap_or(if sweep { swept } else { single })
        };
        let defaults = ProblemDefaults {
            batch: 1,
            seq: 512,
            dim: if sweep { 256 } else { 512 },
            dim_head: if sweep { 32 } else { 64 },
            searches: if sweep { 4 } else { 8 },
            retrievals: 2,
        };
        let (config, batch, _) = self.problem.resolve(defaults)?;
        let plan = Plan {
            config,
            precision: self.precision.unwrap_or_default(),
            batch,
            warmup: pick(self.warmup, 2, 1),
            iters: pick(self.iters, 10, 5),
        };
        at_least_one("--batch", plan.batch)?;
        at_least_one("--iters", plan.iters)?;
        Ok(plan)
    }
}

fn at_least_one(field: &'static str, value: usize) -> Result<(), Error> {
    if value == 0 {
        return Err(Error::InvalidConfig {
            field,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

pub fn run(args: &Args) -> CliResult {
    if let Some(sizes) = &args.gemm {
        return run_gemm(args, sizes);
    }
    let plan = args.plan()?;
    if args.decode && args.sweep {
        let contexts = args
            .seq_list
            .clone()
            .unwrap_or_else(|| crate::bench_decode::SWEEP_CONTEXTS.to_vec());
        for &context in &contexts {
            at_least_one("--seq-list", context)?;
        }
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("decode-sweep.svg"));
        return crate::bench_decode::run_sweep(plan, &contexts, &out, args.json);
    }
    if args.decode {
        let context = args.context.unwrap_or(2048);
        at_least_one("--context", context)?;
        return crate::bench_decode::run(plan, context, args.json);
    }
    if args.sweep {
        run_sweep(args, plan)
    } else {
        run_single(args, plan)
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Per-kernel samples of a profiled forward: consecutive launches of one variant (a kernel
/// whose range is split over several dispatches) count as one entry.
#[derive(Clone, Debug)]
struct KernelSamples {
    label: String,
    launches: usize,
    samples_ms: Vec<f64>,
}

/// Timed forwards of one method at one problem size.
#[derive(Clone, Debug)]
struct Measurement {
    method: Method,
    seq: usize,
    /// `Profile::total_ms` per forward (GPU time, or host wall time; see `source`).
    samples_ms: Vec<f64>,
    /// Host wall time per forward, upload to readback.
    wall_ms: Vec<f64>,
    source: TimingSource,
    /// Empty for the CPU reference and without GPU timestamps.
    kernels: Vec<KernelSamples>,
    /// `CompositionalAttention::gpu_bytes` after the forwards; 0 for the CPU reference.
    gpu_bytes: u64,
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

/// `warmup + iters` forwards of `method` (a layer stored in `precision`) on `input`, one tick
/// of `progress` each.
fn measure(
    ctx: Option<&GpuContext>,
    method: Method,
    precision: Precision,
    weights: &Weights,
    input: &Input,
    (warmup, iters): (usize, usize),
    progress: &ProgressBar,
) -> Result<Measurement, Error> {
    let (batch, seq) = (input.batch, input.seq);
    let mut measurement = Measurement {
        method,
        seq,
        samples_ms: Vec::with_capacity(iters),
        wall_ms: Vec::with_capacity(iters),
        source: TimingSource::HostWallClock,
        kernels: Vec::new(),
        gpu_bytes: 0,
    };
    let strategy = match method {
        Method::Cpu => {
            for index in 0..warmup + iters {
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
    for index in 0..warmup + iters {
        let profile =
            pollster::block_on(layer.profile(&input.x, batch, seq, input.mask.as_deref()))?;
        progress.inc(1);
        if index < warmup {
            continue;
        }
        measurement.samples_ms.push(profile.total_ms);
        measurement.wall_ms.push(profile.wall_ms);
        measurement.source = profile.source;
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
    Ok(measurement)
}

/// One GEMM kernel timed at `size³`.
#[derive(Clone, Debug, Serialize)]
struct GemmReport {
    /// `texels`, `register`, `tiled` or `auto` (the layer's choice).
    kernel: &'static str,
    /// The pipeline variant's label.
    variant: String,
    /// `m = n = k`.
    size: usize,
    /// Dispatches per sample (the K range is split where the driver caps loops).
    launches: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    gflops: f64,
    timing: &'static str,
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
    let mut samples = Vec::with_capacity(iters);
    let mut source = TimingSource::HostWallClock;
    for _ in 0..iters {
        let (ms, from) = bench.sample_ms_blocking()?;
        samples.push(ms);
        source = from;
    }
    let (median_ms, min_ms, max_ms) = summarize(&samples);
    Ok(GemmReport {
        kernel: gemm_kernel_name(kernel),
        variant: bench.variant().to_string(),
        size,
        launches: bench.launches(),
        median_ms,
        min_ms,
        max_ms,
        gflops: bench.flops() / 1e9 / (median_ms / 1e3),
        timing: source.name(),
    })
}

/// The GEMM the layer uses here, for the "fraction of our GEMM" comparison.
fn reference_gemm(ctx: &GpuContext, json: bool) -> Result<GemmReport, Error> {
    note(
        json,
        &format!("timing our GEMM at {GEMM_REFERENCE_SIZE}³ for comparison (--no-gemm skips it)"),
    );
    measure_gemm(
        ctx,
        GemmKernel::Auto,
        GEMM_REFERENCE_SIZE,
        1,
        GEMM_REFERENCE_SAMPLES,
    )
}

// ---------------------------------------------------------------------------------------------
// Reports

/// One kernel's share of the forward.
#[derive(Clone, Debug, Serialize)]
struct KernelReport {
    label: String,
    launches: usize,
    median_ms: f64,
    /// Of the sum of the kernels' medians.
    share: f64,
}

/// Everything `--json` prints for one method at one size.
#[derive(Clone, Debug, Serialize)]
struct Report {
    strategy: &'static str,
    /// Storage precision of the layer (`f32` or `f16`; the CPU reference is f64).
    precision: &'static str,
    batch: usize,
    seq: usize,
    dim: usize,
    dim_head: usize,
    searches: usize,
    retrievals: usize,
    causal: bool,
    prenorm: bool,
    warmup: usize,
    iters: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
    /// Host wall time from upload to readback (median).
    wall_median_ms: f64,
    /// `Config::forward_flops / 1e9`.
    gflop: f64,
    /// `gflop / median seconds`.
    gflops: f64,
    /// `gpu-timestamps` or `host-wall-clock`.
    timing: &'static str,
    adapter: String,
    backend: String,
    gpu_bytes: u64,
    kernels: Vec<KernelReport>,
    /// Kernels of the attention core (all but GEMMs, texel copies and the LayerNorm), summed.
    core_ms: Option<f64>,
    /// The core's GFLOP/s on `2·b·s·n²·d·(1+r) + 4·b·s·r·n·d` FLOPs.
    core_gflops: Option<f64>,
    /// Our GEMM on the same adapter.
    gemm: Option<GemmReport>,
    /// `gflops / gemm.gflops`.
    fraction_of_gemm: Option<f64>,
    /// `core_gflops / gemm.gflops`.
    core_fraction_of_gemm: Option<f64>,
}

/// FLOPs of the attention core, the same for both strategies: `QKᵀ`, `r` times `A·V`, and the
/// retrieval selection (SPEC §7 without the projections and the `d × d` retrieval keys).
fn core_flops(config: &Config, batch: usize, seq: usize) -> f64 {
    let (b, n) = (batch as f64, seq as f64);
    let (d, s, r) = (
        config.dim_head as f64,
        config.num_searches as f64,
        config.num_retrievals as f64,
    );
    2.0 * b * s * n * n * d * (1.0 + r) + 4.0 * b * s * r * n * d
}

/// Where the numbers were measured.
pub(crate) struct Machine {
    /// `GpuContext::describe`: name, backend, device type, driver.
    pub(crate) adapter: String,
    /// `vulkan`, `metal`, `dx12`, `gl`, ... (`cpu` for the CPU reference alone).
    pub(crate) backend: String,
    /// Name and backend only, for the plot's title.
    short: String,
}

impl Machine {
    pub(crate) fn of(ctx: Option<&GpuContext>) -> Machine {
        match ctx {
            Some(ctx) => {
                let info = ctx.info();
                Machine {
                    adapter: ctx.describe(),
                    backend: format!("{:?}", info.backend).to_lowercase(),
                    short: format!("{}, {:?}", info.name, info.backend),
                }
            }
            None => Machine {
                adapter: "host CPU (f64 reference, one thread)".into(),
                backend: "cpu".into(),
                short: "host CPU".into(),
            },
        }
    }
}

fn report(
    plan: &Plan,
    machine: &Machine,
    measurement: &Measurement,
    gemm: Option<&GemmReport>,
) -> Report {
    let c = &plan.config;
    let (batch, seq) = (plan.batch, measurement.seq);
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
    let core_gflops = core_ms.map(|ms| core_flops(c, batch, seq) / 1e9 / (ms / 1e3));
    let gemm_gflops = gemm.map(|g| g.gflops);
    Report {
        strategy: measurement.method.name(),
        precision: match measurement.method {
            Method::Cpu => "f64",
            Method::Gpu(_) => plan.precision.name(),
        },
        batch,
        seq,
        dim: c.dim,
        dim_head: c.dim_head,
        searches: c.num_searches,
        retrievals: c.num_retrievals,
        causal: c.causal,
        prenorm: c.prenorm,
        warmup: plan.warmup,
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
        gpu_bytes: measurement.gpu_bytes,
        kernels,
        core_ms,
        core_gflops,
        gemm: gemm.cloned(),
        fraction_of_gemm: gemm_gflops.map(|g| gflops / g),
        core_fraction_of_gemm: core_gflops.zip(gemm_gflops).map(|(c, g)| c / g),
    }
}

// ---------------------------------------------------------------------------------------------
// Output helpers

/// A note for the user: stderr with `--json` (stdout holds only the JSON), stdout otherwise.
pub(crate) fn note(json: bool, message: &str) {
    if json {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
}

pub(crate) fn print_json(value: &impl Serialize) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Io {
        path: "<stdout>".into(),
        source: std::io::Error::other(e),
    })?;
    println!("{text}");
    Ok(())
}

/// Milliseconds with about three significant digits.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Bytes in MiB.
pub(crate) fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn describe_problem(plan: &Plan, seq: Option<usize>) -> String {
    let c = &plan.config;
    let seq = seq.map_or(String::new(), |n| format!("seq {n}, "));
    format!(
        "batch {}, {seq}dim {}, dim_head {}, {} searches, {} retrievals, causal {}, prenorm {}",
        plan.batch, c.dim, c.dim_head, c.num_searches, c.num_retrievals, c.causal, c.prenorm
    )
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:32} {pos}/{len} forwards  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Opens the GPU the environment selects, saying which on stderr (`--json`) or stdout.
pub(crate) fn open_gpu(json: bool) -> Result<GpuContext, Error> {
    let ctx = pollster::block_on(GpuContext::new(&GpuOptions::from_env()?))?;
    note(json, &format!("adapter: {}", ctx.describe()));
    Ok(ctx)
}

// ---------------------------------------------------------------------------------------------
// `compattn bench` (one method, one size)

fn run_single(args: &Args, plan: Plan) -> CliResult {
    let method = args.strategy.unwrap_or(Method::Gpu(Strategy::Fused));
    let seq = args.problem.seq.unwrap_or(512);
    at_least_one("--seq", seq)?;
    let json = args.json;
    let ctx = match method {
        Method::Gpu(_) => Some(open_gpu(json)?),
        Method::Cpu => None,
    };
    let machine = Machine::of(ctx.as_ref());
    note(
        json,
        &format!(
            "problem: {}; strategy {}; {} warm-up + {} timed forwards",
            describe_problem(&plan, Some(seq)),
            method.name(),
            plan.warmup,
            plan.iters
        ),
    );
    let (weights, input) = random_problem(plan.config, plan.batch, seq, None, 1.0, SEED)?;
    let progress = progress_bar((plan.warmup + plan.iters) as u64);
    progress.set_message(method.name());
    let measurement = measure(
        ctx.as_ref(),
        method,
        plan.precision,
        &weights,
        &input,
        (plan.warmup, plan.iters),
        &progress,
    );
    progress.finish_and_clear();
    let measurement = measurement?;
    let gemm = match &ctx {
        Some(ctx) if !args.no_gemm => Some(reference_gemm(ctx, json)?),
        _ => None,
    };
    let report = report(&plan, &machine, &measurement, gemm.as_ref());
    if json {
        return print_json(&report);
    }
    print_report(&report);
    Ok(())
}

fn print_report(r: &Report) {
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

// ---------------------------------------------------------------------------------------------
// `compattn bench --gemm N,...`

#[derive(Serialize)]
struct GemmSweep {
    adapter: String,
    backend: String,
    /// The variant the layer uses here (`GemmKernel::Auto`).
    layer_variant: String,
    results: Vec<GemmReport>,
}

fn run_gemm(args: &Args, sizes: &[usize]) -> CliResult {
    let warmup = args.warmup.unwrap_or(2);
    let iters = args.iters.unwrap_or(10);
    at_least_one("--iters", iters)?;
    for &size in sizes {
        at_least_one("--gemm", size)?;
    }
    let json = args.json;
    let ctx = open_gpu(json)?;
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
        return print_json(&sweep);
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

// ---------------------------------------------------------------------------------------------
// `compattn bench --sweep`

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

fn run_sweep(args: &Args, plan: Plan) -> CliResult {
    let json = args.json;
    let seqs = args.seq_list.clone().unwrap_or_else(|| SWEEP_SEQS.to_vec());
    if seqs.is_empty() {
        return Err(Error::InvalidConfig {
            field: "--seq-list",
            value: String::new(),
            reason: "needs at least one sequence length",
        }
        .into());
    }
    for &n in &seqs {
        at_least_one("--seq-list", n)?;
    }
    let cpu_max_seq = args.cpu_max_seq.unwrap_or(1024);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweep.svg"));
    // The CPU reference gets no warm-up and at most 3 timed forwards: it is slow and has no
    // pipelines to compile.
    let cpu_iters = plan.iters.min(3);

    let ctx = open_gpu(json)?;
    let machine = Machine::of(Some(&ctx));
    note(
        json,
        &format!(
            "sweep: {}; n in {seqs:?}; {} warm-up + {} timed forwards per GPU point, {cpu_iters} \
             per CPU-reference point (n <= {cpu_max_seq})",
            describe_problem(&plan, None),
            plan.warmup,
            plan.iters
        ),
    );
    let gemm = if args.no_gemm {
        None
    } else {
        Some(reference_gemm(&ctx, json)?)
    };

    let mut points: Vec<(usize, Method)> = Vec::new();
    for &n in &seqs {
        for method in Method::ALL {
            if method != Method::Cpu || n <= cpu_max_seq {
                points.push((n, method));
            }
        }
    }
    let forwards = |method: Method| match method {
        Method::Cpu => cpu_iters,
        Method::Gpu(_) => plan.warmup + plan.iters,
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
        let result = random_problem(plan.config, plan.batch, n, None, 1.0, SEED).and_then(
            |(weights, input)| {
                let (warmup, iters) = match method {
                    Method::Cpu => (0, cpu_iters),
                    Method::Gpu(_) => (plan.warmup, plan.iters),
                };
                measure(
                    Some(&ctx),
                    method,
                    plan.precision,
                    &weights,
                    &input,
                    (warmup, iters),
                    &progress,
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
            let plan = Plan {
                warmup: if m.method == Method::Cpu {
                    0
                } else {
                    plan.warmup
                },
                ..plan
            };
            report(&plan, &machine, m, gemm.as_ref())
        })
        .collect();
    let c = &plan.config;
    let flags: String = [(c.causal, ", causal"), (c.prenorm, ", prenorm")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
    let title = format!(
        "Forward GFLOP/s vs n on {}: b {}, dim {}, d {}, s {}, r {}{flags}",
        machine.short, plan.batch, c.dim, c.dim_head, c.num_searches, c.num_retrievals
    );
    let svg = plot_sweep(&title, &seqs, &results, gemm.as_ref())?;
    io::write_file(&out, svg.as_bytes())?;
    let sweep = Sweep {
        adapter: machine.adapter,
        backend: machine.backend,
        gemm,
        results,
        skipped,
    };
    if json {
        eprintln!("wrote {}", out.display());
        return print_json(&sweep);
    }
    print_sweep(&sweep, &seqs);
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

/// Colours of the strategies' lines (fused, unfused, cpu) and of the GEMM line.
const COLOURS: [plotters::style::RGBColor; 4] = [
    plotters::style::RGBColor(0x1f, 0x77, 0xb4),
    plotters::style::RGBColor(0xff, 0x7f, 0x0e),
    plotters::style::RGBColor(0x2c, 0xa0, 0x2c),
    plotters::style::RGBColor(0x7f, 0x7f, 0x7f),
];

/// GFLOP/s against n (both axes logarithmic), one line per strategy and the GEMM as a
/// reference line; the SVG text.
/// A plotters failure as this crate's error (the SVG goes to a string, so only plotting fails).
pub(crate) fn plot_error(e: &dyn std::fmt::Display) -> Error {
    Error::Io {
        path: Path::new("<svg plot>").into(),
        source: std::io::Error::other(format!("plotting failed: {e}")),
    }
}

fn plot_sweep(
    title: &str,
    seqs: &[usize],
    results: &[Report],
    gemm: Option<&GemmReport>,
) -> Result<String, Error> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;

    let x_min = seqs.iter().copied().min().unwrap_or(1) as f64;
    let x_max = seqs.iter().copied().max().unwrap_or(1) as f64;
    let values = results
        .iter()
        .map(|r| r.gflops)
        .chain(gemm.map(|g| g.gflops))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (y_min, y_max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // Room below the lowest point for the legend.
    let (y_min, y_max) = if y_max > 0.0 {
        (y_min / 6.0, y_max * 1.5)
    } else {
        (0.1, 10.0)
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_min / 1.25..x_max * 1.25)
                    .log_scale()
                    .base(2.0)
                    // Labels and bold grid lines at the measured n only.
                    .with_key_points(seqs.iter().map(|&n| n as f64).collect()),
                (y_min..y_max).log_scale(),
            )
            .map_err(|e| plot_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("sequence length n")
            .y_desc("GFLOP/s (Config::forward_flops / median time)")
            .x_label_formatter(&|x| format!("{}", x.round()))
            .y_label_formatter(&|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else if *y >= 1.0 {
                    format!("{y:.1}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()
            .map_err(|e| plot_error(&e))?;
        for (index, method) in Method::ALL.iter().enumerate() {
            let colour = COLOURS[index];
            let points: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r.strategy == method.name() && r.gflops.is_finite() && r.gflops > 0.0)
                .map(|r| (r.seq as f64, r.gflops))
                .collect();
            if points.is_empty() {
                continue;
            }
            let label = match method {
                Method::Gpu(strategy) => format!("{strategy} (GPU)"),
                Method::Cpu => "f64 CPU reference".into(),
            };
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| plot_error(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 3, colour.filled())),
                )
                .map_err(|e| plot_error(&e))?;
        }
        if let Some(gemm) = gemm
            && gemm.gflops.is_finite()
            && gemm.gflops > 0.0
        {
            let colour = COLOURS[3];
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_min / 1.25, gemm.gflops), (x_max * 1.25, gemm.gflops)],
                    6,
                    4,
                    colour.stroke_width(1),
                ))
                .map_err(|e| plot_error(&e))?
                .label(format!("our GEMM, {n}³", n = gemm.size))
                .legend(move |(x, y)| DashedPathElement::new([(x, y), (x + 20, y)], 6, 4, colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(&e))?;
        root.present().map_err(|e| plot_error(&e))?;
    }
    Ok(svg)
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

    #[test]
    fn plot_renders_without_fonts() {
        let svg = plot_sweep("title", &[128, 256], &[], None).unwrap();
        assert!(svg.starts_with("<svg"));
    }
}
