//! `compattn bench --suite`: one command for a whole machine. On whatever adapter it finds, it
//! times our GEMM; the forward at the README configuration, at `r = 4`, at the paper's 8 × 8, at
//! the target configuration and at `r = 1` (so that the cores' fractions cover `r·d` = 64, 128,
//! 256 and 512, issue 18's target 2); a decode step over 2048 cached positions; f16 storage against
//! f32; the long sequence; and a training step. Every figure comes with its fraction of our
//! GEMM's GFLOP/s on the same adapter, measured in the same run. `--json F` and `--markdown F`
//! write the results (the Markdown table is what BENCHMARKS.md takes); the table is also
//! printed.
//!
//! A part the adapter cannot run (a size past its limits, f16 without `shader-f16`) is reported
//! as skipped with the library's reason, and the rest still runs; a part that fails otherwise is
//! marked `FAILED`, and the command fails once every part has run and its files are written. `--quick` divides every
//! sequence length by 8, to check the command itself in a few seconds (its numbers are not the
//! suite's).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use compositional_attention::{Config, Error, GpuContext, Precision, Strategy};
use serde::Serialize;

use super::backward_timing::{self, BackwardReport};
use super::case::{BenchCase, Method};
use super::decode_timing::{self, DecodeReport};
use super::forward_timing::measure_case;
use super::gemm_timing::{GemmBetween, GemmReport, time_our_gemm};
use super::machine::Machine;
use super::report::{Report, report};
use crate::common::{CliResult, Failure, open_gpu};
use crate::fits;
use crate::output::note;
use crate::sizes::SizeOption;

/// One configuration of the suite: its name in the tables and its sizes.
struct Shape {
    name: &'static str,
    batch: usize,
    seq: usize,
    dim: usize,
    dim_head: usize,
    searches: usize,
    retrievals: usize,
}

impl Shape {
    fn config(&self) -> Config {
        Config::new(self.dim)
            .dim_head(self.dim_head)
            .num_searches(self.searches)
            .num_retrievals(self.retrievals)
    }

    /// `b 1, n 512, dim 1024, ...` (`length` names the sequence: `n 512`, `context 2048`).
    fn describe(&self, length: String) -> String {
        format!(
            "b {}, {length}, dim {}, d {}, s {}, r {}",
            self.batch, self.dim, self.dim_head, self.searches, self.retrievals
        )
    }
}

/// The README configuration (also the f16 comparison's and the training step's).
const README: Shape = Shape {
    name: "README",
    batch: 1,
    seq: 512,
    dim: 1024,
    dim_head: 64,
    searches: 8,
    retrievals: 2,
};

/// The forward's configurations: the three issue 18 measures against burn, the target, and
/// `r·d` = 64 (the tuning table's r 1 row in BENCHMARKS.md).
const FORWARDS: [Shape; 5] = [
    README,
    Shape {
        name: "r 4",
        batch: 1,
        seq: 1024,
        dim: 512,
        dim_head: 64,
        searches: 4,
        retrievals: 4,
    },
    Shape {
        name: "the paper's 8 × 8",
        batch: 1,
        seq: 512,
        dim: 512,
        dim_head: 64,
        searches: 8,
        retrievals: 8,
    },
    Shape {
        name: "target",
        batch: 1,
        seq: 2048,
        dim: 512,
        dim_head: 64,
        searches: 8,
        retrievals: 2,
    },
    Shape {
        name: "r 1",
        batch: 1,
        seq: 1024,
        dim: 512,
        dim_head: 64,
        searches: 8,
        retrievals: 1,
    },
];

/// The decode step's configuration (`compattn bench --decode`'s defaults) and context.
const DECODE: Shape = Shape {
    name: "decode",
    batch: 1,
    seq: decode_timing::DEFAULT_CONTEXT,
    dim: 512,
    dim_head: 64,
    searches: 8,
    retrievals: 2,
};

/// The long sequence (BENCHMARKS.md's), timed once after one warm-up.
const LONG: Shape = Shape {
    name: "long sequence",
    batch: 1,
    seq: 16384,
    dim: 256,
    dim_head: 32,
    searches: 4,
    retrievals: 4,
};

/// What `--suite` was asked for.
pub struct SuiteRequest {
    pub warmup: usize,
    pub iters: usize,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

/// A part's result; or why it was skipped (the adapter cannot run it); or how it failed.
#[derive(Serialize)]
struct Part<T> {
    name: String,
    configuration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

impl<T> Part<T> {
    /// The table cells of the result (`measured`), or of the reason it was skipped.
    fn cells(&self, measured: impl Fn(&T) -> [String; 4]) -> [String; 4] {
        let why = match (&self.result, &self.skipped, &self.failed) {
            (Some(result), ..) => return measured(result),
            (None, Some(reason), _) => format!("skipped: {reason}"),
            (None, None, failed) => format!("FAILED: {}", failed.as_deref().unwrap_or("")),
        };
        ["–".into(), "–".into(), "–".into(), why]
    }

    /// A size past the adapter's limits (or the host's memory) and a missing feature skip the
    /// part; any other error fails it (and the suite, once every part has run).
    fn of(name: &str, configuration: String, outcome: Result<T, Failure>) -> Part<T> {
        let mut part = Part {
            name: name.to_string(),
            configuration,
            result: None,
            skipped: None,
            failed: None,
        };
        match outcome {
            Ok(value) => part.result = Some(value),
            // The suite's sizes are fixed: the library's reason, without options to lower.
            Err(Failure::TooLarge { error, .. }) => part.skipped = Some(error.to_string()),
            Err(Failure::Library(
                error @ (Error::MissingFeature { .. }
                | Error::LimitExceeded { .. }
                | Error::HostMemory { .. }),
            )) => part.skipped = Some(error.to_string()),
            Err(other) => part.failed = Some(other.to_string()),
        }
        part
    }

    /// `name: how it failed`, if it did.
    fn failure(&self) -> Option<String> {
        self.failed
            .as_ref()
            .map(|failed| format!("{}: {failed}", self.name))
    }
}

/// f16 storage against f32 at the README configuration.
#[derive(Serialize)]
struct PrecisionComparison {
    f32_ms: f64,
    f16_ms: f64,
    /// `f16_ms / f32_ms` (issue 18's target: ≤ 1.25 on CPU drivers).
    f16_over_f32: f64,
}

/// A training step (training forward + backward) with its estimated GFLOP/s.
#[derive(Serialize)]
struct TrainingStep {
    #[serde(flatten)]
    timing: BackwardReport,
    /// `forward_train_ms + backward_ms`.
    step_ms: f64,
    /// `3 × Config::forward_flops` (the backward's GEMMs and recomputed attention cost about
    /// twice the forward's) over `step_ms`: an estimate, for the fraction of our GEMM.
    estimated_gflops: f64,
    fraction_of_gemm: Option<f64>,
}

/// Everything `--suite --json F` writes.
#[derive(Serialize)]
struct Suite {
    adapter: String,
    backend: String,
    quick: bool,
    warmup: usize,
    iters: usize,
    gemm: Part<GemmReport>,
    forwards: Vec<Part<Report>>,
    decode: Part<DecodeReport>,
    f16_against_f32: Part<PrecisionComparison>,
    long_sequence: Part<Report>,
    training_step: Part<TrainingStep>,
}

/// The sequence length of `shape` in this run.
fn seq_of(shape: &Shape, quick: bool) -> usize {
    if quick {
        (shape.seq / 8).max(8)
    } else {
        shape.seq
    }
}

/// A bench case of `shape` at `seq` (the suite's sizes are fixed: `Part::of` reports a refusal
/// without the options to lower).
fn case_of(shape: &Shape, seq: usize, precision: Precision, samples: (usize, usize)) -> BenchCase {
    let option = |name, value| SizeOption {
        name,
        value,
        default: value,
    };
    BenchCase {
        config: shape.config(),
        precision,
        batch: shape.batch,
        seq,
        warmup: samples.0,
        iters: samples.1,
        options: [
            option("--batch", shape.batch),
            option("--seq", seq),
            option("--dim", shape.dim),
            option("--dim-head", shape.dim_head),
            option("--searches", shape.searches),
            option("--retrievals", shape.retrievals),
        ],
    }
}

/// The fused forward of `case`, timed and reported against `beside`, our GEMM sampled after each
/// of its timed forwards. A GEMM that fails there drops the comparison, not the forward.
fn forward(
    ctx: &GpuContext,
    case: &BenchCase,
    beside: &mut Option<GemmBetween>,
    json: bool,
) -> Result<Report, Failure> {
    let (config, batch, seq) = (case.config, case.batch, case.seq);
    fits::forward(
        ctx,
        &config,
        case.precision,
        Strategy::Fused,
        (batch, seq),
        &case.options,
    )?;
    note(
        json,
        &format!(
            "forward: {} ({} storage)",
            case.describe(Some(seq)),
            case.precision
        ),
    );
    if let Some(gemm) = beside.as_mut() {
        gemm.restart();
    }
    let mut lost = None;
    let measurement = measure_case(
        Some(ctx),
        case,
        Method::Gpu(Strategy::Fused),
        seq,
        &mut || {
            if let (Some(gemm), None) = (beside.as_mut(), &lost) {
                lost = gemm.sample().err();
            }
            Ok(())
        },
    )?;
    if let Some(error) = lost {
        note(
            json,
            &format!("our GEMM failed beside this forward ({error}): no comparison from here on"),
        );
        *beside = None;
    }
    let gemm = beside.as_ref().and_then(GemmBetween::report);
    Ok(report(
        case,
        &Machine::of(Some(ctx)),
        &measurement,
        gemm.as_ref(),
    ))
}

pub fn run(request: &SuiteRequest) -> CliResult {
    let json = request.json.is_some();
    let ctx = open_gpu(json)?;
    let machine = Machine::of(Some(&ctx));
    let quick = request.quick;
    // At least one warm-up everywhere: CPU drivers compile a kernel at its first dispatch, so
    // the first run would time the compiler.
    let samples = (request.warmup.max(1), request.iters);
    let gemm = Part::of(
        "GEMM",
        "1024³, the layer's kernel".into(),
        time_our_gemm(&ctx, json).map_err(Failure::from),
    );
    let gemm_report = gemm.result.as_ref();
    // Our GEMM again beside each forward, where the row above could time it.
    let mut beside = match gemm_report {
        Some(_) => GemmBetween::new(&ctx, json)
            .map_err(|error| note(json, &format!("no GEMM beside the forwards: {error}")))
            .ok(),
        None => None,
    };
    let forwards = FORWARDS
        .iter()
        .map(|shape| {
            let seq = seq_of(shape, quick);
            let case = case_of(shape, seq, Precision::F32, samples);
            Part::of(
                shape.name,
                shape.describe(format!("n {seq}")),
                forward(&ctx, &case, &mut beside, json),
            )
        })
        .collect();
    let context = seq_of(&DECODE, quick);
    let decode_case = case_of(&DECODE, context, Precision::F32, samples);
    let decode = Part::of(
        DECODE.name,
        DECODE.describe(format!("context {context}")),
        decode_timing::check_fits(
            &ctx,
            &decode_case,
            SizeOption {
                name: "--context",
                value: context,
                default: context,
            },
        )
        .and_then(|()| Ok(decode_timing::measure(&ctx, decode_case, context, json)?)),
    );
    let readme_seq = seq_of(&README, quick);
    let f16 = Part::of(
        "f16 against f32",
        README.describe(format!("n {readme_seq}")),
        precision_comparison(&ctx, readme_seq, samples, &mut beside, json),
    );
    let long_seq = seq_of(&LONG, quick);
    let long_sequence = Part::of(
        LONG.name,
        LONG.describe(format!("n {long_seq}")),
        forward(
            &ctx,
            &case_of(&LONG, long_seq, Precision::F32, (1, 1)),
            &mut beside,
            json,
        ),
    );
    let training_case = case_of(&README, readme_seq, Precision::F32, samples);
    let training_step = Part::of(
        "training step",
        README.describe(format!("n {readme_seq}")),
        backward_timing::measure(&ctx, training_case, json).map(|timing| {
            let step_ms = timing.forward_train_ms + timing.backward_ms;
            let gflop = 3.0 * training_case.config.forward_flops(README.batch, readme_seq) / 1e9;
            let estimated_gflops = gflop / (step_ms / 1e3);
            TrainingStep {
                timing,
                step_ms,
                estimated_gflops,
                fraction_of_gemm: gemm_report.map(|g| estimated_gflops / g.gflops),
            }
        }),
    );
    let suite = Suite {
        adapter: machine.adapter,
        backend: machine.backend,
        quick,
        warmup: samples.0,
        iters: samples.1,
        gemm,
        forwards,
        decode,
        f16_against_f32: f16,
        long_sequence,
        training_step,
    };
    let table = markdown(&suite);
    println!("{table}");
    if let Some(path) = &request.json {
        let text = serde_json::to_string_pretty(&suite).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        write(path, &text)?;
    }
    if let Some(path) = &request.markdown {
        write(path, &table)?;
    }
    let failures: Vec<String> = [suite.gemm.failure()]
        .into_iter()
        .chain(suite.forwards.iter().map(Part::failure))
        .chain([
            suite.decode.failure(),
            suite.f16_against_f32.failure(),
            suite.long_sequence.failure(),
            suite.training_step.failure(),
        ])
        .flatten()
        .collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Failure::Check(format!(
            "{} part(s) of the suite failed: {}",
            failures.len(),
            failures.join("; ")
        ))),
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The README configuration's forward in f32 and in f16, in one run.
fn precision_comparison(
    ctx: &GpuContext,
    seq: usize,
    samples: (usize, usize),
    beside: &mut Option<GemmBetween>,
    json: bool,
) -> Result<PrecisionComparison, Failure> {
    let f32 = forward(
        ctx,
        &case_of(&README, seq, Precision::F32, samples),
        beside,
        json,
    )?;
    let f16 = forward(
        ctx,
        &case_of(&README, seq, Precision::F16, samples),
        beside,
        json,
    )?;
    Ok(PrecisionComparison {
        f32_ms: f32.median_ms,
        f16_ms: f16.median_ms,
        f16_over_f32: f16.median_ms / f32.median_ms,
    })
}

/// The GEMM a forward's fractions divide by, as its row's table cell says it.
fn beside_gemm(gemm: Option<&GemmReport>) -> String {
    match gemm {
        Some(g) => format!(
            "our GEMM beside it {} ms, {} GFLOP/s ({} samples)",
            figure(Some(g.median_ms)),
            figure(Some(g.gflops)),
            g.samples
        ),
        None => "no GEMM beside it".into(),
    }
}

/// `x` to 3 significant figures, or `–`.
fn figure(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => {
            let digits = (2 - x.abs().max(1e-12).log10().floor() as i32).max(0) as usize;
            format!("{x:.digits$}")
        }
        _ => "–".into(),
    }
}

/// The suite as one Markdown table (what BENCHMARKS.md takes).
fn markdown(suite: &Suite) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`compattn bench --suite{}` on {} ({}), {} warm-up + {} timed runs each (the long \
         sequence: 1 + 1); each forward's fractions are of our GEMM timed after each of its \
         timed runs, the training step's of the GEMM row's\n",
        if suite.quick { " --quick" } else { "" },
        suite.adapter,
        suite.backend,
        suite.warmup,
        suite.iters
    );
    let _ = writeln!(
        out,
        "| part | configuration | median ms | GFLOP/s | fraction of our GEMM | also |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut row = |part: &str, configuration: &str, cells: [String; 4]| {
        // A reason may hold `|` (`STORAGE | COPY_DST`) or span lines: one cell each.
        let [ms, gflops, fraction, also] =
            cells.map(|cell| cell.replace('|', "\\|").replace('\n', " "));
        let _ = writeln!(
            out,
            "| {part} | {configuration} | {ms} | {gflops} | {fraction} | {also} |"
        );
    };
    let gemm = &suite.gemm;
    let cells = gemm.cells(|g| {
        [
            figure(Some(g.median_ms)),
            figure(Some(g.gflops)),
            "1".into(),
            format!("`{}`", g.variant),
        ]
    });
    row("GEMM", &gemm.configuration, cells);
    for part in suite.forwards.iter().chain([&suite.long_sequence]) {
        let cells = part.cells(|r| {
            [
                figure(Some(r.median_ms)),
                figure(Some(r.gflops)),
                figure(r.fraction_of_gemm),
                format!(
                    "core at {} of our GEMM; {}; {}; {}",
                    figure(r.core_fraction_of_gemm),
                    beside_gemm(r.gemm.as_ref()),
                    r.timing,
                    r.plan.as_deref().unwrap_or("–")
                ),
            ]
        });
        row(
            &format!("forward, {}", part.name),
            &part.configuration,
            cells,
        );
    }
    let d = &suite.decode;
    let cells = d.cells(|r| {
        [
            figure(Some(r.decode_ms)),
            "–".into(),
            "–".into(),
            format!(
                "context {}: {}× copying the cache once, {}× faster than recomputing",
                r.context,
                figure(Some(r.decode_over_copy)),
                figure(Some(r.speedup))
            ),
        ]
    });
    row("decode step", &d.configuration, cells);
    let p = &suite.f16_against_f32;
    let cells = p.cells(|r| {
        [
            figure(Some(r.f16_ms)),
            "–".into(),
            "–".into(),
            format!(
                "f16 storage at {}× the f32 forward ({} ms)",
                figure(Some(r.f16_over_f32)),
                figure(Some(r.f32_ms))
            ),
        ]
    });
    row("forward, f16 storage", &p.configuration, cells);
    let t = &suite.training_step;
    let cells = t.cells(|r| {
        [
            figure(Some(r.step_ms)),
            figure(Some(r.estimated_gflops)),
            figure(r.fraction_of_gemm),
            format!(
                "backward {}× the eval forward; host wall clock",
                figure(Some(r.timing.backward_over_forward))
            ),
        ]
    });
    row("training step", &t.configuration, cells);
    out
}
