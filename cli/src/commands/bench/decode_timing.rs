//! `compattn bench --decode --context N`: one decode step over a KV cache of N positions against
//! recomputing the causal forward over N + 1 tokens, measured in the same run; with `--sweep`,
//! every N of `--seq-list` and an SVG plot.
//!
//! Both are timed with the host clock around the whole call (upload, submit, wait, readback), so
//! they compare like for like. A decode step reads the cache once: the report sets its time beside
//! the time the device takes to copy `cache_bytes` (one read and one write of the same bytes).

use std::path::Path;
use std::time::Instant;

use compositional_attention::kernel_bench::summarize;
use compositional_attention::testing::random_problem;
use compositional_attention::{CompositionalAttention, Error, GpuContext, Strategy};
use serde::Serialize;

use super::case::BenchCase;
use super::machine::Machine;
use crate::common::{CliResult, Failure, open_gpu};
use crate::fits;
use crate::output::svg_plot::{COLOURS, LinePlot, Series};
use crate::output::{fmt_mib, fmt_ms, note, print_json, progress_bar};
use crate::sizes::{SizeOption, problem_bytes};

#[derive(Clone, Debug, Serialize)]
pub struct DecodeReport {
    pub adapter: String,
    pub backend: String,
    pub batch: usize,
    pub dim: usize,
    pub dim_head: usize,
    pub num_searches: usize,
    pub num_retrievals: usize,
    pub prenorm: bool,
    pub precision: &'static str,
    pub context: usize,
    /// Median host time of one decode step (one new token per sequence).
    pub decode_ms: f64,
    pub decode_min_ms: f64,
    /// Median host time of the causal forward over context + 1 tokens.
    pub recompute_ms: f64,
    /// recompute_ms / decode_ms.
    pub speedup: f64,
    /// New tokens per second over the batch: batch / decode time.
    pub tokens_per_s: f64,
    /// Bytes the KV cache holds (keys, values, mask, state, and its step workspaces).
    pub cache_bytes: u64,
    /// Bytes of the cached keys and values alone (what a step reads).
    pub kv_bytes: u64,
    /// Median time to copy the cache's keys and values (one buffer of that size) on the device.
    pub copy_ms: f64,
    /// decode_ms / copy_ms.
    pub decode_over_copy: f64,
    pub iters: usize,
    pub timing: &'static str,
}

/// Median and minimum of `iters` runs of `f` after `warmup` untimed ones, in ms (host clock).
pub(super) fn time_ms(
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<(), Error>,
) -> Result<(f64, f64), Error> {
    for _ in 0..warmup {
        f()?;
    }
    // Grown as steps finish: `iters` is a count of work, not a size to allocate.
    let mut samples = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (median, min, _) = summarize(&samples);
    Ok((median, min))
}

/// Copies a buffer of `bytes` to another on the device and waits.
fn copy_ms(ctx: &GpuContext, bytes: u64, warmup: usize, iters: usize) -> Result<f64, Error> {
    let bytes = bytes.div_ceil(4) * 4;
    let make = |usage| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("copy benchmark"),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make(wgpu::BufferUsages::COPY_SRC);
    let dst = make(wgpu::BufferUsages::COPY_DST);
    let (median, _) = time_ms(warmup, iters, || {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        ctx.queue().submit([encoder.finish()]);
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        Ok(())
    })?;
    Ok(median)
}

/// Contexts of `--decode --sweep` without `--seq-list`.
pub const SWEEP_CONTEXTS: [usize; 4] = [256, 512, 1024, 2048];

/// `--context` without a value.
pub const DEFAULT_CONTEXT: usize = 2048;

/// Prompt chunks are prefilled `PREFILL_CHUNK` tokens at a time at most.
const PREFILL_CHUNK: usize = 512;

/// Refuses, before anything is made, a context the device or the host cannot hold: the KV
/// cache with its decode step and prefill chunks, the recompute's forward over `context + 1`
/// tokens, and the random problem of that length. `context` is the option that set it
/// (`--context`, or `--seq-list` in a sweep).
pub fn check_fits(ctx: &GpuContext, case: &BenchCase, context: SizeOption) -> Result<(), Failure> {
    // The cache also holds a position per warm-up and timed step.
    let steps = [
        SizeOption {
            name: "--iters",
            value: case.iters,
            default: 10,
        },
        SizeOption {
            name: "--warmup",
            value: case.warmup,
            default: 2,
        },
    ];
    let options = [case.options_with(context).as_slice(), &steps].concat();
    let context = context.value;
    let config = case.config.causal(true);
    let (batch, precision) = (case.batch, case.precision);
    let capacity = context
        .saturating_add(case.warmup)
        .saturating_add(case.iters);
    let total = context.saturating_add(1);
    for seq in [1, context.min(PREFILL_CHUNK)] {
        fits::cached(ctx, &config, precision, (batch, seq, capacity), &options)?;
    }
    fits::forward(
        ctx,
        &config,
        precision,
        Strategy::Fused,
        (batch, total),
        &options,
    )?;
    fits::host(
        "the decode benchmark's problem",
        problem_bytes(&config, batch, total),
        &options,
    )
}

/// Prefills `context` positions and times decode steps, the recompute and the copy.
pub fn measure(
    ctx: &GpuContext,
    case: BenchCase,
    context: usize,
    json: bool,
) -> Result<DecodeReport, Error> {
    let (batch, warmup, iters) = (case.batch, case.warmup, case.iters);
    let config = case.config.causal(true);
    let machine = Machine::of(Some(ctx));
    note(
        json,
        &format!(
            "decode: batch {batch}, context {context}, dim {}, dim_head {}, {} searches, {} \
             retrievals, {} storage; {warmup} warm-up + {iters} timed steps, then the causal \
             forward over {} tokens",
            config.dim,
            config.dim_head,
            config.num_searches,
            config.num_retrievals,
            case.precision,
            context + 1
        ),
    );
    let total = context + 1;
    let (weights, input) = random_problem(config, batch, total, None, 1.0, 0)?;
    let mut layer = CompositionalAttention::with_precision(ctx, &weights, case.precision)?;
    let mut cache = layer.kv_cache(batch, context.saturating_add(warmup).saturating_add(iters))?;
    let dim = config.dim;
    // The prompt: the first `context` tokens, prefilled in chunks of at most PREFILL_CHUNK.
    let mut t = 0;
    while t < context {
        let chunk = (context - t).min(PREFILL_CHUNK);
        let x: Vec<f32> = (0..batch)
            .flat_map(|b| input.x[(b * total + t) * dim..(b * total + t + chunk) * dim].to_vec())
            .collect();
        layer.prefill_blocking(&mut cache, &x, chunk, None)?;
        t += chunk;
    }
    let token: Vec<f32> = (0..batch)
        .flat_map(|b| input.x[(b * total + context) * dim..][..dim].to_vec())
        .collect();
    let progress = progress_bar(warmup.saturating_add(iters).saturating_mul(2) as u64);
    progress.set_message("decode");
    let (decode_ms, decode_min_ms) = time_ms(warmup, iters, || {
        progress.inc(1);
        layer.decode_blocking(&mut cache, &token, None).map(|_| ())
    })?;
    let cache_bytes = cache.gpu_bytes();
    progress.set_message("recompute");
    let (recompute_ms, _) = time_ms(warmup.min(1), iters.min(5), || {
        progress.inc(1);
        layer
            .forward_blocking(&input.x, batch, total, None)
            .map(|_| ())
    })?;
    progress.finish_and_clear();
    let kv_bytes =
        (batch * context * (config.num_searches * config.dim_head + config.value_width())) as u64
            * case.precision.bytes();
    let copy_ms = copy_ms(ctx, kv_bytes, 1, iters)?;
    Ok(DecodeReport {
        adapter: machine.adapter,
        backend: machine.backend,
        batch,
        dim,
        dim_head: config.dim_head,
        num_searches: config.num_searches,
        num_retrievals: config.num_retrievals,
        prenorm: config.prenorm,
        precision: case.precision.name(),
        context,
        decode_ms,
        decode_min_ms,
        recompute_ms,
        speedup: recompute_ms / decode_ms,
        tokens_per_s: batch as f64 * 1e3 / decode_ms,
        cache_bytes,
        kv_bytes,
        copy_ms,
        decode_over_copy: decode_ms / copy_ms,
        iters,
        timing: "host-wall-clock",
    })
}

/// `--decode`: one context, a table or one JSON object.
pub fn run(case: BenchCase, context: usize, json: bool) -> CliResult {
    crate::sizes::at_least_one("--context", context)?;
    let ctx = open_gpu(json)?;
    let option = SizeOption {
        name: "--context",
        value: context,
        default: DEFAULT_CONTEXT,
    };
    check_fits(&ctx, &case, option)?;
    let report = measure(&ctx, case, context, json)?;
    if json {
        return Ok(print_json(&report)?);
    }
    println!();
    println!(
        "decode step      median {} ms (min {} ms) over {} steps at context {context}",
        fmt_ms(report.decode_ms),
        fmt_ms(report.decode_min_ms),
        report.iters
    );
    println!(
        "recompute        median {} ms: the causal forward over {} tokens",
        fmt_ms(report.recompute_ms),
        context + 1
    );
    println!(
        "speedup          {:.1}× (recompute / decode)",
        report.speedup
    );
    println!(
        "tokens/s         {:.1} (batch {})",
        report.tokens_per_s, report.batch
    );
    println!(
        "KV cache         {} ({} of keys and values; copying them on the device: {} ms, decode \
         is {:.1}× that)",
        fmt_mib(report.cache_bytes),
        fmt_mib(report.kv_bytes),
        fmt_ms(report.copy_ms),
        report.decode_over_copy
    );
    Ok(())
}

#[derive(Serialize)]
struct DecodeSweep {
    plot: String,
    results: Vec<DecodeReport>,
}

/// `--decode --sweep`: [`measure`] at every context, a table (or one JSON object) and a plot.
pub fn run_sweep(case: BenchCase, contexts: &[usize], out: &Path, json: bool) -> CliResult {
    crate::sizes::list_of_positive("--seq-list", contexts)?;
    let ctx = open_gpu(json)?;
    for &context in contexts {
        let option = SizeOption {
            name: "--seq-list",
            value: context,
            default: SWEEP_CONTEXTS[SWEEP_CONTEXTS.len() - 1],
        };
        check_fits(&ctx, &case, option)?;
    }
    let mut results = Vec::with_capacity(contexts.len());
    for &context in contexts {
        results.push(measure(&ctx, case, context, json)?);
    }
    let c = case.config;
    let title = format!(
        "decode vs recompute, {} (b {}, dim {}, d {}, s {}, r {})",
        ctx.info().name,
        case.batch,
        c.dim,
        c.dim_head,
        c.num_searches,
        c.num_retrievals
    );
    let svg = plot(&title, &results).draw()?;
    std::fs::write(out, svg).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    if json {
        return Ok(print_json(&DecodeSweep {
            plot: out.display().to_string(),
            results,
        })?);
    }
    println!();
    println!(
        "{:>8} {:>11} {:>13} {:>9} {:>9} {:>11} {:>9}",
        "context", "decode ms", "recompute ms", "speedup", "tokens/s", "cache", "copy ms"
    );
    for r in &results {
        println!(
            "{:>8} {:>11} {:>13} {:>8.1}× {:>9.1} {:>11} {:>9}",
            r.context,
            fmt_ms(r.decode_ms),
            fmt_ms(r.recompute_ms),
            r.speedup,
            r.tokens_per_s,
            fmt_mib(r.cache_bytes),
            fmt_ms(r.copy_ms)
        );
    }
    println!("plot: {}", out.display());
    Ok(())
}

/// decode_ms, recompute_ms and copy_ms against the context, log–log.
fn plot<'a>(title: &'a str, results: &[DecodeReport]) -> LinePlot<'a> {
    let line = |label: &str, colour, value: fn(&DecodeReport) -> f64| Series {
        label: label.into(),
        colour,
        points: results
            .iter()
            .map(|r| (r.context as f64, value(r)))
            .collect(),
        dashed: false,
    };
    LinePlot {
        title,
        x_desc: "context N (positions in the cache)",
        y_desc: "median ms (host clock)",
        x_keys: results.iter().map(|r| r.context as f64).collect(),
        y_room: (4.0, 2.0),
        series: vec![
            line("decode step (KV cache)", COLOURS[0], |r| r.decode_ms),
            line("recompute: causal forward over N + 1", COLOURS[1], |r| {
                r.recompute_ms
            }),
            line(
                "device copy of the cache's keys and values",
                COLOURS[3],
                |r| r.copy_ms,
            ),
        ],
    }
}
