//! `compattn train`: fine-tunes a checkpoint on a regression set (`input` → `target`, MSE) with
//! AdamW on the GPU, and saves the trained parameters. The checkpoint is read as `forward` reads
//! it (`checkpoint_args`); the set's shapes are checked against each other and the layer from
//! the file's header, and the sizes asked of the host and the device, before any tensor is
//! converted or any buffer made ([`data`]).
//!
//! Step `k` (from 0) trains on the sequences `(k·B + i) mod m`, `i < B`, with dropout seeded
//! `S + k`: the loss is the mean of `(y − target)²` over the batch's elements (masked positions
//! included) and `dL/dy = 2(y − target)/numel`.

mod data;

use std::path::PathBuf;
use std::time::Instant;

use compositional_attention::host_memory::bytes_of;
use compositional_attention::io;
use compositional_attention::{AdamW, CompositionalAttention, Error, Precision, Strategy};
use serde::Serialize;

use crate::checkpoint_args::CheckpointArgs;
use crate::common::{self, CliResult};
use crate::fits;
use crate::output::loss_plot::loss_svg;
use crate::output::{fmt_ms, note, print_json, progress_bar_of, yes_no};
use crate::sizes::{SizeOption, at_least_one};
use data::{Batch, DataFile, batch_rows};

/// Sequences per step when `--batch` is left out (or every sequence, if fewer).
pub const DEFAULT_BATCH: usize = 8;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint to start from: --weights, --config, --causal, --prefix (as `forward`).
    /// The layer's dropout p is the checkpoint's.
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Training set (safetensors): `input` [m, n, dim] and `target` [m, n, dim] (F32, F64, F16
    /// or BF16, finite), optionally `mask` [m, n] (U8, BOOL or an integer type; 1 = the key may
    /// be attended). The loss is the mean squared error over every element of the batch.
    #[arg(long, value_name = "D.safetensors")]
    data: PathBuf,
    /// Optimiser steps (one batch each).
    #[arg(long, value_name = "N")]
    steps: usize,
    /// AdamW's learning rate (finite, > 0). β = (0.9, 0.999) and eps 1e-8, PyTorch's defaults.
    #[arg(long, value_name = "LR")]
    lr: f64,
    /// AdamW's decoupled weight decay (finite, ≥ 0).
    #[arg(long, value_name = "W", default_value_t = 0.01)]
    weight_decay: f64,
    /// Sequences per step, 1..=m. Step k takes sequences (k·B + i) mod m for i < B: the steps
    /// walk through the set in order and wrap around [default: min(m, 8)].
    #[arg(long, value_name = "B")]
    batch: Option<usize>,
    /// Dropout seed: step k (from 0) seeds the layer's dropout with S + k (wrapping), so a run
    /// repeats exactly. Without dropout in the checkpoint it changes nothing.
    #[arg(long, value_name = "S", default_value_t = 0)]
    dropout_seed: u64,
    /// Where to write the trained parameters: safetensors, F32, under the crate's
    /// (lucidrains') state_dict names, whatever format --weights came in; `Weights::load` and
    /// `compattn forward --weights` read it (pass --causal again if the layer is causal).
    #[arg(long, value_name = "W2.safetensors")]
    out: PathBuf,
    /// Also draw the loss curve (every step's loss) as an SVG line plot; the y axis is
    /// logarithmic when the loss spans more than a decade.
    #[arg(long, value_name = "loss.svg")]
    plot: Option<PathBuf>,
    /// Print `{"losses": [...], "steps": N, "ms_per_step": X}` on stdout instead of the
    /// summary (notes go to stderr). ms_per_step is the host's wall time per step (forward,
    /// backward, AdamW, with the loss read back), after the pipelines are compiled.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct TrainReport {
    /// The loss of every step, before that step's update.
    losses: Vec<f64>,
    steps: usize,
    ms_per_step: f64,
}

/// `--lr` or `--weight-decay` refused unless finite and positive (or zero, if `zero_allowed`).
fn check_rate(option: &'static str, value: f64, zero_allowed: bool) -> Result<(), Error> {
    let ok = value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0));
    match ok {
        true => Ok(()),
        false => Err(Error::InvalidConfig {
            field: option,
            value: value.to_string(),
            reason: match zero_allowed {
                true => "must be a finite number ≥ 0",
                false => "must be a finite number > 0",
            },
        }),
    }
}

pub fn run(args: &Args) -> CliResult {
    // The options first: nothing is read for a run that cannot start.
    at_least_one("--steps", args.steps)?;
    check_rate("--lr", args.lr, false)?;
    check_rate("--weight-decay", args.weight_decay, true)?;
    if args.batch == Some(0) {
        at_least_one("--batch", 0)?;
    }

    let (weights, format) = args.checkpoint.load()?;
    let config = *weights.config();
    let bytes = io::read_file(&args.data)?;
    let file = DataFile::parse(&bytes, &args.data, config.dim)?;
    let shape = file.shape;
    let batch = args.batch.unwrap_or(shape.sequences.min(DEFAULT_BATCH));
    if batch > shape.sequences {
        return Err(Error::InvalidConfig {
            field: "--batch",
            value: format!("{batch} (the training set holds m = {})", shape.sequences),
            reason: "must be at most the number of sequences m",
        }
        .into());
    }
    let options = [
        SizeOption {
            name: "--batch",
            value: batch,
            default: shape.sequences.min(DEFAULT_BATCH),
        },
        SizeOption {
            name: "the training set's n",
            value: shape.seq,
            default: shape.seq,
        },
    ];
    // Host: the converted set, one batch's input, target, mask, output and dL/dy.
    let batch_bytes = bytes_of(&[batch, shape.seq, shape.dim], 4).saturating_mul(4);
    fits::host(
        "the training set and one batch",
        shape.host_bytes().saturating_add(batch_bytes),
        &options,
    )?;
    let ctx = common::open_gpu(args.json)?;
    fits::forward(
        &ctx,
        &config,
        Precision::F32,
        Strategy::default(),
        (batch, shape.seq),
        &options,
    )?;
    let data = file.read()?;
    drop(bytes);

    note(
        args.json,
        &format!(
            "weights: {format} checkpoint; layer dim {}, dim_head {}, {} searches, {} retrievals, \
             prenorm {}, causal {}, dropout {}",
            config.dim,
            config.dim_head,
            config.num_searches,
            config.num_retrievals,
            yes_no(config.prenorm),
            yes_no(config.causal),
            config.dropout
        ),
    );
    note(
        args.json,
        &format!(
            "data: {} sequences of {} tokens, mask {}; batch {batch}; {} steps at lr {}",
            shape.sequences,
            shape.seq,
            yes_no(shape.masked),
            args.steps,
            args.lr
        ),
    );

    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
    let mut grads = layer.gradients()?;
    let mut opt = AdamW::new(&layer, args.lr)?.weight_decay(args.weight_decay);
    layer.prepare_training_blocking(batch, shape.seq)?;
    let mut buffers = Batch::new(&shape, batch)?;
    let mut losses = Vec::new();
    let progress = progress_bar_of(args.steps as u64, "steps");
    let start = Instant::now();
    for step in 0..args.steps as u64 {
        buffers.fill(&data, batch_rows(step, batch, shape.sequences));
        let seed = args.dropout_seed.wrapping_add(step);
        let (y, act) = layer.forward_train_blocking(
            &buffers.input,
            batch,
            shape.seq,
            buffers.mask.as_deref(),
            seed,
        )?;
        let numel = y.len() as f64;
        let mut sum = 0.0f64;
        let dy: Vec<f32> = y
            .iter()
            .zip(&buffers.target)
            .map(|(&y, &t)| {
                let diff = f64::from(y) - f64::from(t);
                sum += diff * diff;
                (2.0 * diff / numel) as f32
            })
            .collect();
        let loss = sum / numel;
        grads.zero();
        layer.backward_blocking(&act, &dy, &mut grads)?;
        opt.step_blocking(&mut layer, &grads)?;
        losses.push(loss);
        progress.inc(1);
        progress.set_message(format!("loss {loss:.4e}"));
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    let ms_per_step = elapsed.as_secs_f64() * 1e3 / args.steps as f64;

    layer.weights_blocking()?.save(&args.out)?;
    note(
        args.json,
        &format!("wrote the trained weights to {}", args.out.display()),
    );
    if let Some(path) = &args.plot {
        let title = format!(
            "compattn train: {} steps, batch {batch}, lr {}",
            args.steps, args.lr
        );
        io::write_file(path, loss_svg(&losses, &title).as_bytes())?;
        note(
            args.json,
            &format!("wrote the loss curve to {}", path.display()),
        );
    }
    if args.json {
        return Ok(print_json(&TrainReport {
            losses,
            steps: args.steps,
            ms_per_step,
        })?);
    }
    let first = losses.first().copied().unwrap_or(f64::NAN);
    let last = losses.last().copied().unwrap_or(f64::NAN);
    println!("loss: step 1 {first:.4e}, step {} {last:.4e}", args.steps);
    println!("{} ms per step", fmt_ms(ms_per_step));
    Ok(())
}
