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
use compositional_attention::verify::random_problem;
use compositional_attention::{CompositionalAttention, Error, GpuContext};
use serde::Serialize;

use crate::bench::{
    Machine, Plan, fmt_mib, fmt_ms, note, open_gpu, plot_error, print_json, progress_bar,
};
use crate::common::CliResult;

#[derive(Serialize)]
struct DecodeReport {
    adapter: String,
    backend: String,
    batch: usize,
    dim: usize,
    dim_head: usize,
    num_searches: usize,
    num_retrievals: usize,
    prenorm: bool,
    precision: &'static str,
    context: usize,
    /// Median host time of one decode step (one new token per sequence).
    decode_ms: f64,
    decode_min_ms: f64,
    /// Median host time of the causal forward over context + 1 tokens.
    recompute_ms: f64,
    /// recompute_ms / decode_ms.
    speedup: f64,
    /// New tokens per second over the batch: batch / decode time.
    tokens_per_s: f64,
    /// Bytes the KV cache holds (keys, values, mask, state, and its step workspaces).
    cache_bytes: u64,
    /// Bytes of the cached keys and values alone (what a step reads).
    kv_bytes: u64,
    /// Median time to copy the cache's keys and values (one buffer of that size) on the device.
    copy_ms: f64,
    /// decode_ms / copy_ms.
    decode_over_copy: f64,
    iters: usize,
    timing: &'static str,
}

/// Median of `iters` runs of `f` after `warmup` untimed ones, in ms (host clock).
fn time_ms(
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<(), Error>,
) -> Result<(f64, f64), Error> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(iters);
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

/// Prefills `context` positions and times decode steps, the recompute and the copy.
fn measure(
    ctx: &GpuContext,
    plan: Plan,
    context: usize,
    json: bool,
) -> Result<DecodeReport, Error> {
    let (batch, warmup, iters) = (plan.batch, plan.warmup, plan.iters);
    let config = plan.config.causal(true);
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
            plan.precision,
            context + 1
        ),
    );
    let total = context + 1;
    let (weights, input) = random_problem(config, batch, total, None, 1.0, 0)?;
    let mut layer = CompositionalAttention::with_precision(ctx, &weights, plan.precision)?;
    let mut cache = layer.kv_cache(batch, context + warmup + iters)?;
    let dim = config.dim;
    // The prompt: the first `context` tokens, prefilled in chunks of at most 512.
    let mut t = 0;
    while t < context {
        let chunk = (context - t).min(512);
        let x: Vec<f32> = (0..batch)
            .flat_map(|b| input.x[(b * total + t) * dim..(b * total + t + chunk) * dim].to_vec())
            .collect();
        layer.prefill_blocking(&mut cache, &x, chunk, None)?;
        t += chunk;
    }
    let token: Vec<f32> = (0..batch)
        .flat_map(|b| input.x[(b * total + context) * dim..][..dim].to_vec())
        .collect();
    let progress = progress_bar((2 * (warmup + iters)) as u64);
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
            * plan.precision.bytes();
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
        precision: plan.precision.name(),
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

pub fn run(plan: Plan, context: usize, json: bool) -> CliResult {
    let ctx = open_gpu(json)?;
    let report = measure(&ctx, plan, context, json)?;
    if json {
        return print_json(&report);
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
pub fn run_sweep(plan: Plan, contexts: &[usize], out: &Path, json: bool) -> CliResult {
    let ctx = open_gpu(json)?;
    let mut results = Vec::with_capacity(contexts.len());
    for &context in contexts {
        results.push(measure(&ctx, plan, context, json)?);
    }
    let c = plan.config;
    let title = format!(
        "decode vs recompute, {} (b {}, dim {}, d {}, s {}, r {})",
        ctx.info().name,
        plan.batch,
        c.dim,
        c.dim_head,
        c.num_searches,
        c.num_retrievals
    );
    let svg = plot(&title, &results)?;
    std::fs::write(out, svg).map_err(|source| Error::Io {
        path: out.to_path_buf(),
        source,
    })?;
    if json {
        return print_json(&DecodeSweep {
            plot: out.display().to_string(),
            results,
        });
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

/// A plotted line: its legend, colour and the field it reads.
type Series = (
    &'static str,
    plotters::style::RGBColor,
    fn(&DecodeReport) -> f64,
);

/// decode_ms, recompute_ms and copy_ms against the context, log–log.
fn plot(title: &str, results: &[DecodeReport]) -> Result<String, Error> {
    use plotters::prelude::*;

    let xs: Vec<f64> = results.iter().map(|r| r.context as f64).collect();
    let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = xs.iter().copied().fold(1.0, f64::max);
    let ys = results
        .iter()
        .flat_map(|r| [r.decode_ms, r.recompute_ms, r.copy_ms])
        .filter(|v| v.is_finite() && *v > 0.0);
    let (y_min, y_max) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y_min, y_max) = if y_max > 0.0 {
        (y_min / 4.0, y_max * 2.0)
    } else {
        (0.01, 10.0)
    };
    let series: [Series; 3] = [
        ("decode step (KV cache)", RGBColor(31, 119, 180), |r| {
            r.decode_ms
        }),
        (
            "recompute: causal forward over N + 1",
            RGBColor(214, 39, 40),
            |r| r.recompute_ms,
        ),
        (
            "device copy of the cache's keys and values",
            RGBColor(127, 127, 127),
            |r| r.copy_ms,
        ),
    ];
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
                    .with_key_points(xs.clone()),
                (y_min..y_max).log_scale(),
            )
            .map_err(|e| plot_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("context N (positions in the cache)")
            .y_desc("median ms (host clock)")
            .x_label_formatter(&|x| format!("{}", x.round()))
            .draw()
            .map_err(|e| plot_error(&e))?;
        for (label, colour, value) in series {
            let points: Vec<(f64, f64)> = results
                .iter()
                .map(|r| (r.context as f64, value(r)))
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .collect();
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
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| plot_error(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(&e))?;
        root.present().map_err(|e| plot_error(&e))?;
    }
    Ok(svg)
}
