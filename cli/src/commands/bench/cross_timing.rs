//! `compattn bench --cross --seq N --memory-seq M`: cross-attention timed beside self-attention
//! in one run, on one configuration: the memory projected once (`CompositionalAttention::memory`),
//! `N` query rows attending it (`forward_cross`), the self-attention forward at `n = N` on the
//! same weights, and a decode loop of one query row per step over the same memory, against
//! projecting the memory again at every step (what a layer without `Memory` would do).
//!
//! Every sample is the host's wall clock around one blocking call with its result read back (a
//! memory's projection waits for the device), so the figures compare like for like; medians of
//! `--iters` samples after `--warmup` untimed ones (the first compiles the pipelines).

use compositional_attention::rng::Rng;
use compositional_attention::testing::normal;
use compositional_attention::{
    CompositionalAttention, Error, GpuContext, MemoryDims, Strategy, Weights,
};
use serde::Serialize;

use super::case::{BenchCase, SEED};
use crate::common::{CliResult, Failure, open_gpu};
use crate::fits;
use crate::output::{fmt_mib, fmt_ms, note, print_json};
use crate::sizes::SizeOption;

/// Decode steps of the loop over one memory.
pub const DECODE_STEPS: usize = 16;

/// `--memory-seq` without a value.
pub const DEFAULT_MEMORY_SEQ: usize = 512;

/// What `--cross --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CrossReport {
    pub batch: usize,
    pub seq: usize,
    pub memory_seq: usize,
    pub dim: usize,
    pub dim_head: usize,
    pub num_searches: usize,
    pub num_retrievals: usize,
    /// Whether the projections have biases (fairseq's form; `--no-bias` leaves them out).
    pub bias: bool,
    /// Median time to project the memory (`memory_blocking`, then wait for the device).
    pub memory_ms: f64,
    /// Median time of `forward_cross` with `seq` query rows over the memory.
    pub cross_ms: f64,
    /// Median time of the self-attention forward at `n = seq`, same weights.
    pub self_ms: f64,
    /// cross_ms / self_ms (issue 19 asks ≤ 1.1 at seq = memory_seq).
    pub cross_over_self: f64,
    /// Median time of one decode step (`forward_cross` of one query row).
    pub decode_ms: f64,
    /// Median time of `decode_steps` decode steps over one memory, its projection included.
    pub decode_loop_ms: f64,
    /// The same steps each projecting the memory again.
    pub reproject_loop_ms: f64,
    pub decode_steps: usize,
    /// `Memory::gpu_bytes` (keys, values, mask and the workspaces of its query shapes).
    pub memory_bytes: u64,
    pub iters: usize,
    pub timing: &'static str,
}

/// Median of `iters` runs of `f` after `warmup` untimed ones, in ms (host clock).
fn time_ms(
    warmup: usize,
    iters: usize,
    f: impl FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    super::decode_timing::time_ms(warmup, iters, f).map(|(median, _)| median)
}

/// Waits until the device has run everything submitted.
fn wait(ctx: &GpuContext) -> Result<(), Error> {
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map(drop)
        .map_err(|e| Error::Readback(e.to_string()))
}

pub fn run(case: BenchCase, memory_seq: usize, bias: bool, json: bool) -> CliResult {
    let ctx = open_gpu(json)?;
    let report = measure(&ctx, case, memory_seq, bias, json)?;
    if json {
        return Ok(print_json(&report)?);
    }
    let r = &report;
    println!();
    println!(
        "{:<22} {} ms (once per memory of {} positions)",
        "memory projection",
        fmt_ms(r.memory_ms),
        r.memory_seq
    );
    println!(
        "{:<22} {} ms ({} query rows; {:.2}× self-attention)",
        "cross-attention",
        fmt_ms(r.cross_ms),
        r.seq,
        r.cross_over_self
    );
    println!(
        "{:<22} {} ms (n = {})",
        "self-attention",
        fmt_ms(r.self_ms),
        r.seq
    );
    println!(
        "{:<22} {} ms (one query row)",
        "decode step",
        fmt_ms(r.decode_ms)
    );
    println!(
        "{:<22} {} ms for {} steps over one memory; {} ms projecting it at every step",
        "decode loop",
        fmt_ms(r.decode_loop_ms),
        r.decode_steps,
        fmt_ms(r.reproject_loop_ms)
    );
    println!("{:<22} {}", "memory GPU bytes", fmt_mib(r.memory_bytes));
    Ok(())
}

/// The memory's projection, the cross and self forwards and the decode loops of `case`, with
/// biased projections (fairseq's form) where `bias`.
pub fn measure(
    ctx: &GpuContext,
    case: BenchCase,
    memory_seq: usize,
    bias: bool,
    json: bool,
) -> Result<CrossReport, Failure> {
    let (b, n) = (case.batch, case.seq);
    let self_config = case.config.causal(false).bias(bias);
    let dim = self_config.dim;
    let cross_config = self_config.memory(Some(MemoryDims {
        key_dim: dim,
        value_dim: dim,
        encoder_decoder: false,
    }));
    let memory_option = SizeOption {
        name: "--memory-seq",
        value: memory_seq,
        default: DEFAULT_MEMORY_SEQ,
    };
    let options = [case.options.as_slice(), &[memory_option]].concat();
    // Asked before anything is made: the self forward, the memory and its query shapes.
    fits::forward(
        ctx,
        &self_config,
        case.precision,
        Strategy::default(),
        (b, n),
        &options,
    )?;
    for seq in [n, 1] {
        fits::memory(
            ctx,
            &cross_config,
            case.precision,
            (b, seq, memory_seq),
            &options,
        )?;
    }
    let tensors = (b as u64)
        .saturating_mul(n.max(memory_seq) as u64)
        .saturating_mul(dim as u64)
        .saturating_mul(4 * 3);
    fits::host("the benchmark's problem", tensors, &options)?;
    note(
        json,
        &format!(
            "problem: {}, memory_seq {memory_seq}, biases {bias}; {} warm-up + {} timed calls each (host wall \
             clock, results read back)",
            case.describe(Some(n)),
            case.warmup,
            case.iters
        ),
    );
    // The same weights for both layers (a memory as wide as the input draws the same numbers).
    let weights = Weights::random(cross_config, SEED)?;
    let self_weights = Weights::random(self_config, SEED)?;
    let mut rng = Rng::seed_from_u64(SEED ^ 0xc055);
    let x = normal(&mut rng, b * n * dim, 1.0);
    let memory_input = normal(&mut rng, b * memory_seq * dim, 1.0);
    let step: Vec<f32> = x[..b * dim].to_vec();
    let mut layer = CompositionalAttention::with_precision(ctx, &weights, case.precision)?;
    let mut plain = CompositionalAttention::with_precision(ctx, &self_weights, case.precision)?;
    let (warmup, iters) = (case.warmup, case.iters);

    let memory_ms = time_ms(warmup, iters, || {
        layer.memory_blocking(&memory_input, b, memory_seq, None)?;
        wait(ctx)
    })?;
    let memory = layer.memory_blocking(&memory_input, b, memory_seq, None)?;
    let cross_ms = time_ms(warmup, iters, || {
        layer.forward_cross_blocking(&x, &memory, n).map(drop)
    })?;
    let self_ms = time_ms(warmup, iters, || {
        plain.forward_blocking(&x, b, n, None).map(drop)
    })?;
    let decode_ms = time_ms(warmup, iters, || {
        layer.forward_cross_blocking(&step, &memory, 1).map(drop)
    })?;
    let decode_loop_ms = time_ms(warmup.min(1), iters, || {
        let memory = layer.memory_blocking(&memory_input, b, memory_seq, None)?;
        for _ in 0..DECODE_STEPS {
            layer.forward_cross_blocking(&step, &memory, 1)?;
        }
        Ok(())
    })?;
    let reproject_loop_ms = time_ms(warmup.min(1), iters, || {
        for _ in 0..DECODE_STEPS {
            let memory = layer.memory_blocking(&memory_input, b, memory_seq, None)?;
            layer.forward_cross_blocking(&step, &memory, 1)?;
        }
        Ok(())
    })?;
    let c = &self_config;
    Ok(CrossReport {
        batch: b,
        seq: n,
        memory_seq,
        dim,
        dim_head: c.dim_head,
        num_searches: c.num_searches,
        num_retrievals: c.num_retrievals,
        bias,
        memory_ms,
        cross_ms,
        self_ms,
        cross_over_self: cross_ms / self_ms,
        decode_ms,
        decode_loop_ms,
        reproject_loop_ms,
        decode_steps: DECODE_STEPS,
        memory_bytes: memory.gpu_bytes(),
        iters,
        timing: "host wall clock",
    })
}
