//! `compattn forward`: one layer on one input file, output to a safetensors file. The weights
//! may come from any implementation the crate reads (`checkpoint`): lucidrains' by default,
//! Keras, fairseq or xformers with `--config C.json` (the module's constructor arguments and
//! `"format"`) or by their tensor names. With `--maps M.safetensors` it also writes the layer's
//! attention maps (`forward_with_maps`), which `compattn plot` draws. An input file that holds
//! `memory` (and `value_input`) runs cross-attention: the memory is projected once
//! (`CompositionalAttention::memory`) and the input's queries attend it (`forward_cross`).

use std::path::PathBuf;

use compositional_attention::io::{self, Input, MemoryInput};
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
    /// attended). For cross-attention it also holds `memory` [batch, memory_seq, kdim] (and,
    /// for separate key and value inputs, `value_input` [batch, memory_seq, vdim]), and `mask`
    /// is then the memory's, [batch, memory_seq]. If it also holds `output`, the result is
    /// compared with it. May be the weights file.
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
    let memory = MemoryInput::from_safetensors(&input_bytes)?;
    if memory.is_some() && args.maps.is_some() {
        return Err(Error::InvalidConfig {
            field: "--maps",
            value: args.input.display().to_string(),
            reason: "attention maps come from the unfused self-attention core; cross-attention \
                     (an input file with `memory`) has none",
        }
        .into());
    }
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
    let y = match &memory {
        Some(memory) => cross_attention(&mut layer, &input, memory)?,
        None => {
            println!("strategy: {}", layer.strategy());
            let (first, first_time) = timed(|| pollster::block_on(layer.forward_input(&input)));
            first?;
            let (y, steady_time) = timed(|| pollster::block_on(layer.forward_input(&input)));
            let y = y?;
            println!("first call (compiles pipelines): {}", ms(first_time));
            println!("steady-state: {}", ms(steady_time));
            y
        }
    };

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

/// Cross-attention of `input`'s queries over `memory`: the memory projected once, then the
/// queries attending it twice (the first call compiles the pipelines).
fn cross_attention(
    layer: &mut CompositionalAttention,
    input: &Input,
    memory: &MemoryInput,
) -> Result<Vec<f32>, Error> {
    let (b, n) = (input.batch, input.seq);
    if memory.batch != b {
        return Err(Error::Shape {
            name: "memory".into(),
            expected: vec![b, memory.seq, memory.key_dim],
            found: vec![memory.batch, memory.seq, memory.key_dim],
        });
    }
    println!(
        "memory: [{b}, {}, {}]{}, mask {} (cross-attention)",
        memory.seq,
        memory.key_dim,
        memory
            .values
            .as_ref()
            .map_or(String::new(), |(_, vdim)| format!(
                ", value_input [{b}, {}, {vdim}]",
                memory.seq
            )),
        yes_no(memory.mask.is_some())
    );
    let mask = memory.mask.as_deref();
    let (projected, memory_time) = timed(|| match &memory.values {
        Some((values, _)) => layer.memory_kv_blocking(&memory.keys, values, b, memory.seq, mask),
        None => layer.memory_blocking(&memory.keys, b, memory.seq, mask),
    });
    let projected = projected?;
    let (first, first_time) = timed(|| layer.forward_cross_blocking(&input.x, &projected, n));
    first?;
    let (y, steady_time) = timed(|| layer.forward_cross_blocking(&input.x, &projected, n));
    println!(
        "memory projection (once; compiles its pipelines): {}",
        ms(memory_time)
    );
    println!("first cross call (compiles pipelines): {}", ms(first_time));
    println!("steady-state cross call: {}", ms(steady_time));
    y
}
