//! The command line's numeric options, as `compattn` parses and checks them before anything
//! runs: the sizes (`--batch`, `--seq`, `--dim`, `--dim-head`, `--searches`, `--retrievals`),
//! seeds, counts and lists (`--seq-list`, `--gemm`, `--mask-lengths`, `--maps-rows`), through
//! clap and `cli/src/sizes.rs` (GPU-free, included here as it is). Every argument list must
//! parse to a value or a clap error, and every parsed size must check to a value or a typed
//! error whose message formats, without a panic, an overflow or an allocation sized by the
//! numbers (`guarded`). What checks out must hold what the commands rely on.
#![no_main]

#[path = "../../cli/src/sizes.rs"]
#[allow(dead_code)]
mod sizes;

use clap::Parser;
use compositional_attention_fuzz::guarded;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sizes::{ProblemArgs, ProblemDefaults, SizeOption, VERIFY_DEFAULTS};

/// The numeric options of `verify`, `bench` and `forward`, with the shared size options as the
/// commands flatten them.
#[derive(Parser, Debug)]
#[command(name = "compattn")]
struct NumericOptions {
    #[command(flatten)]
    problem: ProblemArgs,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    iters: Option<usize>,
    #[arg(long)]
    context: Option<usize>,
    #[arg(long, value_delimiter = ',')]
    seq_list: Option<Vec<usize>>,
    #[arg(long, value_delimiter = ',')]
    gemm: Option<Vec<usize>>,
    #[arg(long, value_delimiter = ',')]
    mask_lengths: Option<Vec<usize>>,
    #[arg(long, value_delimiter = ',')]
    maps_rows: Option<Vec<usize>>,
    #[arg(long)]
    maps_max_mib: Option<u64>,
}

const OPTIONS: [&str; 15] = [
    "--batch",
    "--seq",
    "--dim",
    "--dim-head",
    "--searches",
    "--retrievals",
    "--causal",
    "--seed",
    "--iters",
    "--context",
    "--seq-list",
    "--gemm",
    "--mask-lengths",
    "--maps-rows",
    "--maps-max-mib",
];

/// One option's value: a number (often near a boundary), a list of them, or any text.
#[derive(Arbitrary, Debug)]
enum Value {
    Number(u64),
    Edge(u8),
    List(Vec<u64>),
    Text(String),
}

impl Value {
    fn text(&self) -> String {
        let edge = |e: u8| match e % 8 {
            0 => "0".to_string(),
            1 => "1".to_string(),
            2 => u32::MAX.to_string(),
            3 => (u32::MAX as u64 + 1).to_string(),
            4 => usize::MAX.to_string(),
            5 => "18446744073709551616".to_string(),
            6 => "-1".to_string(),
            _ => "100000000".to_string(),
        };
        match self {
            Value::Number(n) => n.to_string(),
            Value::Edge(e) => edge(*e),
            Value::List(items) => items
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Value::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    /// (which option, its value) in order.
    args: Vec<(u8, Value)>,
    /// Defaults the command fills in: `verify`'s or any (each at least 1, as the commands' are).
    defaults: Option<[u16; 6]>,
}

fuzz_target!(|request: Request| {
    let mut argv = vec!["compattn".to_string()];
    for (option, value) in request.args.iter().take(16) {
        let option = OPTIONS[*option as usize % OPTIONS.len()];
        argv.push(option.to_string());
        if option != "--causal" {
            argv.push(value.text());
        }
    }
    let Ok(parsed) = NumericOptions::try_parse_from(&argv) else {
        return;
    };
    let defaults = match request.defaults {
        None => VERIFY_DEFAULTS,
        Some(d) => {
            let [batch, seq, dim, dim_head, searches, retrievals] = d.map(|v| v.max(1) as usize);
            ProblemDefaults {
                batch,
                seq,
                dim,
                dim_head,
                searches,
                retrievals,
            }
        }
    };
    // Checking numbers allocates by their count and text, never by their values.
    guarded(argv.iter().map(String::len).sum(), || {
        check(&parsed, defaults)
    });
});

fn check(parsed: &NumericOptions, defaults: ProblemDefaults) {
    for (option, list) in [("--seq-list", &parsed.seq_list), ("--gemm", &parsed.gemm)] {
        if let Some(list) = list {
            match sizes::list_of_positive(option, list) {
                Ok(()) => assert!(!list.is_empty() && list.iter().all(|&v| v >= 1)),
                Err(error) => assert!(error.to_string().contains(option)),
            }
        }
    }
    for (option, value) in [("--iters", parsed.iters), ("--context", parsed.context)] {
        if let Some(value) = value {
            assert_eq!(sizes::at_least_one(option, value).is_ok(), value >= 1);
        }
    }
    let problem = match parsed.problem.resolve(defaults) {
        Ok(problem) => problem,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let (config, batch, seq) = (problem.config, problem.batch, problem.seq);
    assert!(batch >= 1 && seq >= 1);
    config
        .validate()
        .expect("a resolved configuration validates");
    let blame = SizeOption::blame(&problem.options);
    assert!(blame.starts_with("--"), "{blame}");
    let weights = sizes::weights_bytes(&config);
    let problem_bytes = sizes::problem_bytes(&config, batch, seq);
    assert!(weights >= 4 && problem_bytes >= weights);
    let _ = sizes::reference_bytes(&config, batch, seq);
    if let Some(rows) = &parsed.maps_rows {
        let options = sizes::maps_options(Some(rows), parsed.maps_max_mib);
        match options.resolve(batch, seq, config.num_searches, config.num_retrievals) {
            Ok(resolved) => {
                assert_eq!(&resolved, rows);
                assert!(resolved.windows(2).all(|w| w[0] < w[1]));
                assert!(resolved.iter().all(|&row| row < seq));
            }
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }
}
