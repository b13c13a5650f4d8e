//! `compattn demo`: the README configuration, timed and checked against the f64 reference.

use std::time::Duration;

use compositional_attention::testing::{self as check, ErrorStats};
use compositional_attention::{CompositionalAttention, Config, reference};

use crate::common::{self, CliResult, Failure, timed};
use crate::output::ms;

const BATCH: usize = 1;
const SEQ: usize = 512;
const SEED: u64 = 0;
const TIMED_CALLS: usize = 3;
const TOLERANCE: f64 = 1e-4;

pub fn run() -> CliResult {
    let config = Config::new(1024)
        .dim_head(64)
        .num_searches(8)
        .num_retrievals(2);
    let flops = config.forward_flops(BATCH, SEQ);
    println!(
        "Compositional Attention: dim {}, dim_head {}, {} searches, {} retrievals; \
         batch {BATCH}, seq {SEQ}; {:.2} GFLOP per forward",
        config.dim,
        config.dim_head,
        config.num_searches,
        config.num_retrievals,
        flops / 1e9
    );
    let (weights, input) = check::random_problem(config, BATCH, SEQ, None, 1.0, SEED)?;

    let ctx = common::open_gpu(false)?;
    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
    println!("strategy: {}", layer.strategy());
    let (y, first) = timed(|| pollster::block_on(layer.forward_input(&input)));
    let mut y = y?;
    println!("first call (compiles pipelines): {}", ms(first));
    let mut times: Vec<Duration> = Vec::with_capacity(TIMED_CALLS);
    for _ in 0..TIMED_CALLS {
        let (result, time) = timed(|| pollster::block_on(layer.forward_input(&input)));
        y = result?;
        times.push(time);
    }
    times.sort();
    let median = times[TIMED_CALLS / 2];
    println!(
        "steady-state: {} (median of {TIMED_CALLS}, wall time incl. upload and readback), {:.1} GFLOP/s",
        ms(median),
        flops / median.as_secs_f64() / 1e9
    );

    println!("running the f64 CPU reference (single-threaded; may take several seconds)...");
    let (expected, reference_time) =
        timed(|| reference::forward(&weights, &input.x, BATCH, SEQ, None));
    let expected = expected?;
    println!("f64 CPU reference: {}", ms(reference_time));
    println!(
        "GPU speed-up over the f64 CPU reference: {:.2}x (reference time / GPU steady-state time)",
        reference_time.as_secs_f64() / median.as_secs_f64()
    );

    let stats = ErrorStats::compare(&y, &expected);
    println!("error vs reference: {stats}");
    if stats.within(TOLERANCE) {
        println!("within tolerance {TOLERANCE:e}");
        Ok(())
    } else {
        Err(Failure::Check(format!(
            "the GPU output exceeds tolerance {TOLERANCE:e} against the f64 reference: {stats}"
        )))
    }
}
