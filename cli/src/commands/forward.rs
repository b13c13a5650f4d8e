//! `compattn forward`: one layer on one input file, output to a safetensors file. The weights
//! may come from any implementation the crate reads (`checkpoint`): lucidrains' by default,
//! Keras, fairseq or xformers with `--config C.json` (the module's constructor arguments and
//! `"format"`) or by their tensor names. With `--maps M.safetensors` it also writes the layer's
//! attention maps (`forward_with_maps`), which `compattn plot` draws.

use std::path::PathBuf;

use compositional_attention::io::{self, Input};
use compositional_attention::testing::ErrorStats;
use compositional_attention::{CompositionalAttention, Error, Strategy};

use crate::checkpoint_args::CheckpointArgs;
use crate::common::{self, CliResult, timed};
use crate::output::{ms, yes_no};
use crate::sizes::maps_options;

/// Tolerance the reference comparison is reported against (relative to max|output|).
const TOLERANCE: f64 = 1e-4;

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint: --weights, --config, --causal, --prefix.
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    /// Input: `input` [batch, seq, dim] and optionally `mask` [batch, seq] (U8/BOOL, 1 = may be
    /// attended). If it also holds `output`, the result is compared with it. May be the weights
    /// file.
    #[arg(long, value_name = "X.safetensors")]
    input: PathBuf,
    /// How the attention core is computed (default: the library's default).
    #[arg(long, value_parser = common::strategy_parser())]
    strategy: Option<Strategy>,
    /// Where to write `output` [batch, seq, dim] (F32 safetensors).
    #[arg(long, value_name = "Y.safetensors")]
    output: PathBuf,
    /// Also write the attention maps to this file: `search_attention` [batch, searches,
    /// queries, seq] (each query's softmax over the keys), `retrieval_selection` [batch,
    /// searches, queries, retrievals] and `query_rows` (I64) — F32 safetensors, loadable with
    /// `safetensors.torch.load_file` and drawn by `compattn plot`. They come from one more
    /// forward on the unfused core, after the timed ones.
    #[arg(long, value_name = "M.safetensors")]
    maps: Option<PathBuf>,
    /// Only these query rows (token positions, strictly increasing, comma-separated, e.g.
    /// `0,5,9`) in the maps; default: every row.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',', requires = "maps")]
    maps_rows: Option<Vec<usize>>,
    /// The most MiB the maps may take (both tensors, f32); larger requests are refused before
    /// anything runs. Default: the library's `MapsOptions::DEFAULT_MAX_BYTES` (256 MiB).
    #[arg(long, value_name = "N", requires = "maps")]
    maps_max_mib: Option<u64>,
}

pub fn run(args: &Args) -> CliResult {
    let (weights, format) = args.checkpoint.load()?;
    let input_bytes = io::read_file(&args.input)?;
    let input = Input::from_safetensors(&input_bytes)?;
    let reference = io::read_output(&input_bytes)?;
    let c = weights.config();
    let (b, n, dim) = (input.batch, input.seq, input.dim);
    // Refuse bad query rows or maps over the size limit before anything runs.
    let maps_options = maps_options(args.maps_rows.as_deref(), args.maps_max_mib);
    if args.maps.is_some() {
        maps_options
            .resolve(b, n, c.num_searches, c.num_retrievals)
            .map_err(|error| match error {
                // The rows come from --maps-rows: name the option, keep the library's reason.
                Error::InvalidConfig {
                    field: "query_rows",
                    value,
                    reason,
                } => Error::InvalidConfig {
                    field: "--maps-rows",
                    value,
                    reason,
                },
                other => other,
            })?;
    }

    let ctx = common::open_gpu(false)?;
    println!(
        "weights: {format} checkpoint; layer dim {}, dim_head {}, {} searches, {} retrievals, \
         prenorm {}, causal {}",
        c.dim,
        c.dim_head,
        c.num_searches,
        c.num_retrievals,
        yes_no(c.prenorm),
        yes_no(c.causal)
    );
    println!(
        "input: [{b}, {n}, {dim}], mask {}",
        yes_no(input.mask.is_some())
    );
    let mut layer = CompositionalAttention::new(&ctx, &weights)?;
    if let Some(strategy) = args.strategy {
        layer.set_strategy(strategy);
    }
    println!("strategy: {}", layer.strategy());

    let (first, first_time) = timed(|| pollster::block_on(layer.forward_input(&input)));
    first?;
    let (y, steady_time) = timed(|| pollster::block_on(layer.forward_input(&input)));
    let y = y?;
    println!("first call (compiles pipelines): {}", ms(first_time));
    println!("steady-state: {}", ms(steady_time));

    io::write_file(&args.output, &io::output_to_safetensors(b, n, dim, &y)?)?;
    println!(
        "wrote output [{b}, {n}, {dim}] to {}",
        args.output.display()
    );

    if let Some(path) = &args.maps {
        let (result, maps_time) = timed(|| {
            layer.forward_with_maps_blocking(&input.x, b, n, input.mask.as_deref(), &maps_options)
        });
        let (_, maps) = result?;
        println!(
            "forward with maps (the unfused strategy; a first call compiles its pipelines): {}",
            ms(maps_time)
        );
        let bytes = maps.to_safetensors()?;
        io::write_file(path, &bytes)?;
        let (s, q, r) = (maps.searches, maps.queries(), maps.retrievals);
        println!(
            "wrote attention maps: search_attention [{b}, {s}, {q}, {n}], retrieval_selection \
             [{b}, {s}, {q}, {r}], {q} query rows, {} bytes to {}",
            bytes.len(),
            path.display()
        );
    }

    if let Some((shape, expected)) = reference {
        if shape != [b, n, dim] {
            return Err(Error::Shape {
                name: format!("{}: output", args.input.display()),
                expected: vec![b, n, dim],
                found: shape,
            }
            .into());
        }
        let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
        let stats = ErrorStats::compare(&y, &expected);
        println!(
            "vs the file's `output`: {stats} (within {TOLERANCE:e}: {})",
            yes_no(stats.within(TOLERANCE))
        );
    }
    Ok(())
}
