//! `compattn verify`: the GPU forward against the f64 CPU reference on a random problem.

use compositional_attention::testing::{self as check, ErrorStats};
use compositional_attention::{CompositionalAttention, Error, Precision, Strategy, reference};

use crate::common::{self, CliResult, Failure, timed};
use crate::fits;
use crate::output::{ms, yes_no};
use crate::sizes::{ProblemArgs, VERIFY_DEFAULTS, problem_bytes, reference_bytes};

#[derive(clap::Args)]
pub struct Args {
    /// Seed of the random weights and input (default: COMPATTN_SEED, else fresh from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Configuration and shape [defaults: batch 2, seq 77, dim 64, dim_head 16, 3 searches,
    /// 2 retrievals].
    #[command(flatten)]
    problem: ProblemArgs,
    /// Key mask: batch row i may attend its first L_i keys (comma-separated; rows without a
    /// length attend every key; 0 masks a whole row).
    #[arg(long, value_delimiter = ',', value_name = "L,...")]
    mask_lengths: Option<Vec<usize>>,
    /// Standard deviation of the random input.
    #[arg(long, default_value_t = 1.0)]
    input_scale: f32,
    /// Strategy to check (default: every strategy).
    #[arg(long, value_parser = common::strategy_parser())]
    strategy: Option<Strategy>,
    /// Largest accepted max-abs error relative to max|reference| (and relative L2 error).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
}

pub fn run(args: &Args) -> CliResult {
    let seed = args.seed.unwrap_or_else(check::test_seed);
    println!("seed: {seed} (reproduce with --seed {seed})");
    let problem = args.problem.resolve(VERIFY_DEFAULTS)?;
    let (config, batch, seq) = (problem.config, problem.batch, problem.seq);
    if let Some(lengths) = &args.mask_lengths
        && lengths.len() > batch
    {
        return Err(Error::InvalidConfig {
            field: "--mask-lengths",
            value: format!("{lengths:?}"),
            reason: "at most one length per batch row",
        }
        .into());
    }
    let (b, n) = (batch, seq);
    println!(
        "problem: batch {b}, seq {n}, dim {}, dim_head {}, {} searches, {} retrievals, causal {}, \
         prenorm {}, mask lengths {}, input scale {}",
        config.dim,
        config.dim_head,
        config.num_searches,
        config.num_retrievals,
        yes_no(config.causal),
        yes_no(config.prenorm),
        args.mask_lengths
            .as_ref()
            .map_or("none".to_string(), |l| format!("{l:?}")),
        args.input_scale
    );

    let ctx = common::open_gpu(false)?;
    let strategies: Vec<Strategy> = match args.strategy {
        Some(strategy) => vec![strategy],
        None => Strategy::ALL.to_vec(),
    };
    // Asked before anything is made: can the device run every strategy checked, and can the
    // host hold the problem and the f64 reference's intermediates?
    for &strategy in &strategies {
        let precision = Precision::default();
        fits::forward(&ctx, &config, precision, strategy, (b, n), &problem.options)?;
    }
    let host_bytes = problem_bytes(&config, b, n).saturating_add(reference_bytes(&config, b, n));
    fits::host(
        "the problem and its f64 reference",
        host_bytes,
        &problem.options,
    )?;
    let (weights, input) = check::random_problem(
        config,
        batch,
        seq,
        args.mask_lengths.as_deref(),
        args.input_scale,
        seed,
    )?;
    let (expected, reference_time) =
        timed(|| reference::forward(&weights, &input.x, b, n, input.mask.as_deref()));
    let expected = expected?;
    println!("f64 CPU reference: {}", ms(reference_time));

    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
    let mut failed = Vec::new();
    for strategy in strategies {
        layer.set_strategy(strategy);
        let y = pollster::block_on(layer.forward_input(&input))?;
        let stats = ErrorStats::compare(&y, &expected);
        let verdict = if stats.within(args.tolerance) {
            "ok"
        } else {
            failed.push(strategy.name());
            "FAILED"
        };
        println!("{strategy}: {stats}: {verdict}");
    }
    if failed.is_empty() {
        println!("all within tolerance {:e}", args.tolerance);
        Ok(())
    } else {
        Err(Failure::Check(format!(
            "{} exceeded tolerance {:e} (seed {seed}: rerun the same command with --seed {seed} to \
             reproduce)",
            failed.join(", "),
            args.tolerance
        )))
    }
}
