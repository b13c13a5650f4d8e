//! The sizes a user types, checked before anything is allocated: the layer configuration and
//! shape (`--batch`, `--seq`, `--dim`, ...), counts that must be at least 1, and the host bytes
//! a command's random problem and CPU reference will need.
//!
//! No GPU here: this is the part of the command line the fuzz target `cli_sizes` (fuzz/) drives
//! with arbitrary numbers, so it must answer every one with a value or a typed error. When a
//! problem is too large, [`SizeOption::blame`] names the option to change.

use compositional_attention::{Config, Error, MapsOptions};

/// The layer configuration and input shape, shared by `verify`, `bench` and `shaders`; each
/// command fills the sizes left out with defaults of its own (its `--help` says which).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProblemArgs {
    /// Batch size b.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Sequence length n.
    #[arg(long)]
    pub seq: Option<usize>,
    /// Model width (dim).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Width of every search and retrieval head (dim_head).
    #[arg(long)]
    pub dim_head: Option<usize>,
    /// Number of searches (num_searches).
    #[arg(long)]
    pub searches: Option<usize>,
    /// Number of retrievals (num_retrievals).
    #[arg(long)]
    pub retrievals: Option<usize>,
    /// Causal attention.
    #[arg(long)]
    pub causal: bool,
    /// LayerNorm before the projections.
    #[arg(long)]
    pub prenorm: bool,
}

/// Sizes a command uses for the flags left out.
#[derive(Clone, Copy, Debug)]
pub struct ProblemDefaults {
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub dim_head: usize,
    pub searches: usize,
    pub retrievals: usize,
}

/// `compattn verify`'s defaults: small, odd sizes.
pub const VERIFY_DEFAULTS: ProblemDefaults = ProblemDefaults {
    batch: 2,
    seq: 77,
    dim: 64,
    dim_head: 16,
    searches: 3,
    retrievals: 2,
};

/// A problem the command line asked for: the validated configuration, batch and sequence
/// length (both at least 1), and the options that set them, to blame when it is too large.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    pub config: Config,
    pub batch: usize,
    pub seq: usize,
    /// `--batch`, `--seq`, `--dim`, `--dim-head`, `--searches`, `--retrievals` with their values
    /// and the command's defaults.
    pub options: [SizeOption; 6],
}

impl ProblemArgs {
    /// Whether any flag was given.
    pub fn any_given(&self) -> bool {
        [
            self.batch,
            self.seq,
            self.dim,
            self.dim_head,
            self.searches,
            self.retrievals,
        ]
        .iter()
        .any(Option::is_some)
            || self.causal
            || self.prenorm
    }

    /// The validated problem, sizes left out taken from `defaults`.
    pub fn resolve(&self, defaults: ProblemDefaults) -> Result<Problem, Error> {
        let option = |name, value: Option<usize>, default| SizeOption {
            name,
            value: value.unwrap_or(default),
            default,
        };
        let options = [
            option("--batch", self.batch, defaults.batch),
            option("--seq", self.seq, defaults.seq),
            option("--dim", self.dim, defaults.dim),
            option("--dim-head", self.dim_head, defaults.dim_head),
            option("--searches", self.searches, defaults.searches),
            option("--retrievals", self.retrievals, defaults.retrievals),
        ];
        let [batch, seq, dim, dim_head, searches, retrievals] = options.map(|o| o.value);
        let config = Config::new(dim)
            .dim_head(dim_head)
            .num_searches(searches)
            .num_retrievals(retrievals)
            .causal(self.causal)
            .prenorm(self.prenorm);
        config.validate()?;
        at_least_one("--batch", batch)?;
        at_least_one("--seq", seq)?;
        Ok(Problem {
            config,
            batch,
            seq,
            options,
        })
    }
}

/// Fails with [`Error::InvalidConfig`] naming `option` when `value` is 0.
pub fn at_least_one(option: &'static str, value: usize) -> Result<(), Error> {
    if value == 0 {
        return Err(Error::InvalidConfig {
            field: option,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// Fails with [`Error::InvalidConfig`] naming `option` when `values` is empty or holds a 0.
pub fn list_of_positive(option: &'static str, values: &[usize]) -> Result<(), Error> {
    if values.is_empty() {
        return Err(Error::InvalidConfig {
            field: option,
            value: String::new(),
            reason: "needs at least one value",
        });
    }
    values.iter().try_for_each(|&v| at_least_one(option, v))
}

/// The maps options of `forward --maps-rows I,J,.. --maps-max-mib N`: those rows (default:
/// every row) and that many MiB (default: `MapsOptions::DEFAULT_MAX_BYTES`; saturating, so a
/// huge `N` means no limit rather than a wrapped small one).
pub fn maps_options(rows: Option<&[usize]>, max_mib: Option<u64>) -> MapsOptions {
    let options = match rows {
        Some(rows) => MapsOptions::rows(rows.to_vec()),
        None => MapsOptions::default(),
    };
    match max_mib {
        Some(mib) => options.max_bytes(mib.saturating_mul(1 << 20)),
        None => options,
    }
}

/// A size option as the user gave it (or the command's default for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeOption {
    /// `--seq`, `--batch`, ...
    pub name: &'static str,
    pub value: usize,
    /// What the command takes when the option is left out.
    pub default: usize,
}

impl SizeOption {
    /// The options to change when a problem of `options` is too large: the one raised furthest
    /// above its default (by ratio), then the others raised above theirs, as
    /// `--seq 100000000 (default 512)`; every option when none was raised.
    pub fn blame(options: &[SizeOption]) -> String {
        let ratio = |o: &SizeOption| o.value as f64 / o.default.max(1) as f64;
        let mut raised: Vec<&SizeOption> = options.iter().filter(|o| o.value > o.default).collect();
        raised.sort_by(|a, b| ratio(b).total_cmp(&ratio(a)));
        let chosen: Vec<&SizeOption> = match raised.is_empty() {
            true => options.iter().collect(),
            false => raised,
        };
        let names: Vec<String> = chosen
            .iter()
            .map(|o| format!("{} {} (default {})", o.name, o.value, o.default))
            .collect();
        match names.split_first() {
            None => String::from("a smaller problem"),
            Some((first, [])) => first.clone(),
            Some((first, rest)) => format!("{first} (or {})", rest.join(", ")),
        }
    }
}

/// `dims` multiplied into bytes of `element_bytes` each, saturating at `u64::MAX`.
fn bytes(dims: &[u64], element_bytes: u64) -> u64 {
    dims.iter()
        .fold(element_bytes, |acc, &d| acc.saturating_mul(d))
}

/// Host bytes of random weights for `config` (f32, every parameter, biases counted).
pub fn weights_bytes(config: &Config) -> u64 {
    let (dim, d) = (config.dim as u64, config.dim_head as u64);
    let (s, r) = (config.num_searches as u64, config.num_retrievals as u64);
    let heads = s.saturating_mul(3).saturating_add(r);
    bytes(&[dim, d, s.saturating_mul(4).saturating_add(r)], 4)
        .saturating_add(bytes(&[d, d], 4))
        .saturating_add(bytes(&[dim, 2], 4))
        .saturating_add(bytes(&[heads, d], 4))
}

/// Host bytes of a random problem (`testing::random_problem`) of `batch × seq`: the weights,
/// the input, the output the forward returns and a mask.
pub fn problem_bytes(config: &Config, batch: usize, seq: usize) -> u64 {
    let (b, n) = (batch as u64, seq as u64);
    let tensor = bytes(&[b, n, config.dim as u64], 4);
    weights_bytes(config)
        .saturating_add(tensor.saturating_mul(2))
        .saturating_add(bytes(&[b, n], 1))
}

/// Host bytes the `f64` CPU reference holds at once for `batch × seq`, roughly: its search
/// logits and their softmax (`b·s·n²` each) and its projections and outputs (`b·n` rows of the
/// projection width and of `dim`, a few times over).
pub fn reference_bytes(config: &Config, batch: usize, seq: usize) -> u64 {
    let (b, n) = (batch as u64, seq as u64);
    let logits = bytes(&[b, config.num_searches as u64, n, n], 8);
    let width = config.projection_width().max(config.dim) as u64;
    let rows = bytes(&[b, n, width, 4], 8);
    logits.saturating_mul(2).saturating_add(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seq: Option<usize>, batch: Option<usize>) -> ProblemArgs {
        ProblemArgs {
            seq,
            batch,
            ..ProblemArgs::default()
        }
    }

    #[test]
    fn the_option_raised_furthest_is_blamed_first() {
        let problem = args(Some(4096), Some(100_000))
            .resolve(VERIFY_DEFAULTS)
            .unwrap();
        let blame = SizeOption::blame(&problem.options);
        assert!(
            blame.starts_with("--batch 100000 (default 2) (or --seq 4096"),
            "{blame}"
        );
        let problem = args(Some(100_000_000), None)
            .resolve(VERIFY_DEFAULTS)
            .unwrap();
        assert_eq!(
            SizeOption::blame(&problem.options),
            "--seq 100000000 (default 77)"
        );
        let defaults = args(None, None).resolve(VERIFY_DEFAULTS).unwrap();
        assert!(SizeOption::blame(&defaults.options).contains("--retrievals 2"));
    }

    #[test]
    fn zero_sizes_and_empty_lists_name_their_option() {
        for (field, problem) in [
            ("--seq", args(Some(0), None)),
            ("--batch", args(None, Some(0))),
        ] {
            let err = problem.resolve(VERIFY_DEFAULTS).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(list_of_positive("--gemm", &[]).is_err());
        assert!(list_of_positive("--gemm", &[3, 0]).is_err());
        assert!(list_of_positive("--gemm", &[3, 1]).is_ok());
    }

    /// Found by the fuzz target `cli_sizes`: the maps' byte count overflowed (a panic in debug
    /// builds, a wrapped small count past the limit in release ones).
    #[test]
    fn huge_maps_are_refused_not_wrapped() {
        let options = maps_options(Some(&[0, 1]), Some(1 << 40));
        let huge = usize::MAX / 2;
        let err = options.resolve(huge, 2, huge, 3).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MapsTooLarge {
                    bytes: u64::MAX,
                    ..
                }
            ),
            "{err}"
        );
        let rows = maps_options(Some(&[0, 5]), None)
            .resolve(1, 6, 2, 2)
            .unwrap();
        assert_eq!(rows, [0, 5]);
        let err = maps_options(Some(&[99]), None)
            .resolve(1, 6, 2, 2)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("row 99 is past the sequence (n = 6)"),
            "{err}"
        );
    }

    #[test]
    fn byte_counts_saturate_instead_of_wrapping() {
        let config = Config::new(64)
            .dim_head(16)
            .num_searches(3)
            .num_retrievals(2);
        assert_eq!(problem_bytes(&config, usize::MAX, usize::MAX), u64::MAX);
        assert_eq!(reference_bytes(&config, usize::MAX, 2), u64::MAX);
        // dim 64: weights 64·16·(12 + 2) + 16² + 2·64 + 14·16 floats.
        assert_eq!(
            weights_bytes(&config),
            4 * (64 * 16 * 14 + 256 + 128 + 11 * 16)
        );
        assert_eq!(
            problem_bytes(&config, 2, 3),
            weights_bytes(&config) + 2 * 4 * 2 * 3 * 64 + 6
        );
    }
}
