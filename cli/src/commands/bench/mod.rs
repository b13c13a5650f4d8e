//! `compattn bench`: the forward pass timed per strategy (fused, unfused, or the `f64` CPU
//! reference), a sweep over sequence lengths drawn as an SVG plot, generation over a KV cache
//! (`--decode`), the training forward and backward beside the forward (`--backward`),
//! cross-attention over a memory beside self-attention (`--cross`), our
//! GEMM on its own (`--gemm`), and all of it at the configurations people train, in one run on
//! whatever adapter is there (`--suite`). Each mode has its module; this one holds the arguments
//! and picks the mode.
//!
//! GPU times come from `TIMESTAMP_QUERY` where the adapter has it (the kernels alone, on the
//! GPU's clock, one compute pass per kernel), else from the host wall clock around upload, submit
//! and readback; every report says which (`timing`). The CPU reference is timed with the host
//! clock. FLOPs are `Config::forward_flops` (SPEC §7, dense: causal masking does not reduce them).
//!
//! Everything but the results goes to stderr (progress bar, notes), so `--json` output can be
//! piped straight into a JSON parser. Every size is asked of the device and the host before
//! anything is made (`fits`): a size too large is an error naming the option to change.

mod backward_timing;
mod case;
mod cross_timing;
mod decode_timing;
mod forward_timing;
mod gemm_timing;
mod machine;
mod report;
mod single;
mod suite;
mod sweep;

use std::path::PathBuf;

use compositional_attention::{Error, Precision, Strategy};

use crate::common::{CliResult, Failure};
use crate::sizes::{ProblemArgs, ProblemDefaults, at_least_one};
use case::{BenchCase, Method, method_parser};

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
    /// With --suite, `--json FILE` writes the suite's results to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// Run the whole suite on the adapter found: our GEMM; the forward at the README
    /// configuration, r 4, the paper's 8 × 8, the target and r 1; a decode step at context
    /// 2048; f16 against f32; the long sequence; a training step. Prints a Markdown table (each figure with
    /// its fraction of our GEMM); --json FILE and --markdown FILE write the results.
    #[arg(
        long,
        conflicts_with_all = ["gemm", "strategy", "sweep", "decode", "backward", "precision",
            "context", "seq", "batch", "dim", "dim_head", "searches", "retrievals", "causal",
            "prenorm", "no_gemm", "cross"]
    )]
    suite: bool,
    /// Where --suite writes its Markdown table (also printed).
    #[arg(long, value_name = "FILE", requires = "suite")]
    markdown: Option<PathBuf>,
    /// With --suite: every sequence length divided by 8, to check the command quickly (the
    /// numbers are not the suite's).
    #[arg(long, requires = "suite")]
    quick: bool,
    /// Time generation instead of the forward: one decode step over a KV cache holding
    /// --context positions, against recomputing the causal forward over context + 1 tokens
    /// (the layer is made causal). Reports decode_ms, recompute_ms, tokens_per_s, cache_bytes
    /// and the time to copy cache_bytes on the device.
    /// With --sweep: every context of --seq-list (default 256,512,1024,2048), a table, and an
    /// SVG plot of decode_ms and recompute_ms against the context (--out).
    #[arg(long, conflicts_with_all = ["gemm", "strategy", "seq"])]
    decode: bool,
    /// Time training beside inference at the shape options: the eval forward, the training
    /// forward (which keeps the activations) and the backward, medians of --iters rounds, each
    /// call timed on the host's wall clock with its result read back (the training calls have
    /// no GPU-timestamp form). Reports forward_ms, forward_train_ms, backward_ms,
    /// backward_over_forward (backward_ms / forward_ms), activation_bytes and gpu_bytes (layer
    /// + gradients + activations). Needs f32 storage (--precision f32, the default).
    #[arg(long, conflicts_with_all = ["gemm", "strategy", "sweep", "decode"])]
    backward: bool,
    /// Time cross-attention beside self-attention at the shape options: a memory of
    /// --memory-seq positions projected once, --seq query rows attending it, the
    /// self-attention forward at n = --seq on the same weights (both with fairseq's biases unless
    /// --no-bias), one decode step, and a loop of
    /// 16 decode steps over one memory against projecting it at every step. Reports memory_ms,
    /// cross_ms, self_ms, cross_over_self, decode_ms, decode_loop_ms, reproject_loop_ms and
    /// memory_bytes (host wall clock, results read back).
    #[arg(long, conflicts_with_all = ["gemm", "strategy", "sweep", "decode", "backward", "causal", "prenorm"])]
    cross: bool,
    /// Positions of the memory --cross attends [default: 512].
    #[arg(long, value_name = "M", requires = "cross")]
    memory_seq: Option<usize>,
    /// With --cross: both layers without biases (the PyTorch package's form, whose
    /// self-attention runs the texel cores on CPU drivers) instead of fairseq's biased
    /// projections, the form cross-attention checkpoints have.
    #[arg(long, requires = "cross")]
    no_bias: bool,
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

impl Args {
    /// The problem and sample counts of the chosen mode.
    fn case(&self) -> Result<BenchCase, Error> {
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
        let problem = self.problem.resolve(defaults)?;
        let case = BenchCase {
            config: problem.config,
            precision: self.precision.unwrap_or_default(),
            batch: problem.batch,
            seq: problem.seq,
            warmup: pick(self.warmup, 2, 1),
            iters: pick(self.iters, 10, 5),
            options: problem.options,
        };
        at_least_one("--iters", case.iters)?;
        Ok(case)
    }
}

pub fn run(args: &Args) -> CliResult {
    if args.suite {
        let json = args.json.clone().filter(|path| path.as_os_str() != "-");
        if args.json.is_some() && json.is_none() {
            return Err(Failure::Check(
                "--suite --json takes a file (--json results.json): the suite prints its table \
                 on stdout"
                    .into(),
            ));
        }
        let iters = args.iters.unwrap_or(5);
        at_least_one("--iters", iters)?;
        return suite::run(&suite::SuiteRequest {
            warmup: args.warmup.unwrap_or(1),
            iters,
            quick: args.quick,
            json,
            markdown: args.markdown.clone(),
        });
    }
    // Outside --suite, --json prints on stdout.
    let json = match &args.json {
        None => false,
        Some(path) if path.as_os_str() == "-" => true,
        Some(path) => {
            return Err(Failure::Check(format!(
                "--json {} : only --suite writes JSON to a file; other modes print it on stdout \
                 (--json alone)",
                path.display()
            )));
        }
    };
    if let Some(sizes) = &args.gemm {
        return gemm_timing::run(sizes, args.warmup, args.iters, json);
    }
    let case = args.case()?;
    if args.decode && args.sweep {
        let contexts = args
            .seq_list
            .clone()
            .unwrap_or_else(|| decode_timing::SWEEP_CONTEXTS.to_vec());
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("decode-sweep.svg"));
        return decode_timing::run_sweep(case, &contexts, &out, json);
    }
    if args.backward {
        return backward_timing::run(case, json);
    }
    if args.cross {
        let memory_seq = args.memory_seq.unwrap_or(cross_timing::DEFAULT_MEMORY_SEQ);
        at_least_one("--memory-seq", memory_seq)?;
        return cross_timing::run(case, memory_seq, !args.no_bias, json);
    }
    if args.decode {
        let context = args.context.unwrap_or(decode_timing::DEFAULT_CONTEXT);
        return decode_timing::run(case, context, json);
    }
    if args.sweep {
        let seqs = args
            .seq_list
            .clone()
            .unwrap_or_else(|| sweep::SWEEP_SEQS.to_vec());
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("sweep.svg"));
        let request = sweep::SweepRequest {
            seqs: &seqs,
            cpu_max_seq: args.cpu_max_seq.unwrap_or(1024),
            out: &out,
            no_gemm: args.no_gemm,
            json,
        };
        return sweep::run(case, request);
    }
    let method = args.strategy.unwrap_or(Method::Gpu(Strategy::Fused));
    single::run(case, method, args.no_gemm, json)
}
