//! `compattn bench --decode --context N`: one decode step over a KV cache of N positions against
//! recomputing the causal forward over N + 1 tokens, measured in the same run.
//!
//! Both are timed with the host clock around the whole call (upload, submit, wait, readback), so
//! they compare like for like. A decode step reads the cache once: the report sets its time beside
//! the time the device takes to copy `cache_bytes` (one read and one write of the same bytes).

use std::time::Instant;

use compositional_attention::bench::summarize;
use compositional_attention::verify::random_problem;
use compositional_attention::{CompositionalAttention, Config, Error, GpuContext};
use serde::Serialize;

use crate::bench::{Machine, fmt_mib, fmt_ms, note, open_gpu, print_json, progress_bar};
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

pub fn run(
    config: Config,
    batch: usize,
    context: usize,
    warmup: usize,
    iters: usize,
    json: bool,
) -> CliResult {
    let config = config.causal(true);
    let ctx = open_gpu(json)?;
    let machine = Machine::of(Some(&ctx));
    note(
        json,
        &format!(
            "decode: batch {batch}, context {context}, dim {}, dim_head {}, {} searches, {} \
             retrievals; {warmup} warm-up + {iters} timed steps, then the causal forward over \
             {} tokens",
            config.dim,
            config.dim_head,
            config.num_searches,
            config.num_retrievals,
            context + 1
        ),
    );
    let total = context + 1;
    let (weights, input) = random_problem(config, batch, total, None, 1.0, 0)?;
    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
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
        (batch * context * (config.num_searches * config.dim_head + config.value_width()) * 4)
            as u64;
    let copy_ms = copy_ms(&ctx, kv_bytes, 1, iters)?;
    let report = DecodeReport {
        adapter: machine.adapter,
        backend: machine.backend,
        batch,
        dim,
        dim_head: config.dim_head,
        num_searches: config.num_searches,
        num_retrievals: config.num_retrievals,
        prenorm: config.prenorm,
        precision: "f32",
        context,
        decode_ms,
        decode_min_ms,
        recompute_ms,
        speedup: recompute_ms / decode_ms,
        tokens_per_s: batch as f64 * 1e3 / decode_ms,
        cache_bytes,
        copy_ms,
        decode_over_copy: decode_ms / copy_ms,
        iters,
        timing: "host-wall-clock",
    };
    if json {
        return print_json(&report);
    }
    println!();
    println!(
        "decode step      median {} ms (min {} ms) over {iters} steps at context {context}",
        fmt_ms(report.decode_ms),
        fmt_ms(report.decode_min_ms)
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
        "tokens/s         {:.1} (batch {batch})",
        report.tokens_per_s
    );
    println!(
        "KV cache         {} ({} of keys and values; copying them on the device: {} ms, decode \
         is {:.1}× that)",
        fmt_mib(report.cache_bytes),
        fmt_mib(kv_bytes),
        fmt_ms(report.copy_ms),
        report.decode_over_copy
    );
    Ok(())
}
