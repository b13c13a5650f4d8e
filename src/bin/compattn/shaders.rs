//! `compattn shaders`: every WGSL source the host submits, written out for offline tools.
//!
//! The sources come from the pipeline cache after layers were prepared on a real device
//! (`compositional_attention::shaders::collect_variants`), so each file is exactly the text the
//! host hands to `create_shader_module`, specialisation preamble included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use compositional_attention::gpu::pipelines::ShaderVariant;
use compositional_attention::shaders::{self, Problem};
use compositional_attention::{Config, Error, GpuContext, GpuOptions, KernelProfile, io};

use crate::common::CliResult;

/// Which kernel families to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileArg {
    /// The family the host would run here: `COMPATTN_KERNELS`, else by the adapter's type.
    Auto,
    /// The CPU-driver variants (register blocks, texture operands).
    Cpu,
    /// The GPU variants (workgroup-memory tiles).
    Gpu,
    /// Both families, whatever the adapter.
    Both,
}

impl ProfileArg {
    /// The profiles to open a device with; `from_env` is the environment's choice.
    fn profiles(self, from_env: KernelProfile) -> Vec<KernelProfile> {
        match self {
            ProfileArg::Auto => vec![from_env],
            ProfileArg::Cpu => vec![KernelProfile::Cpu],
            ProfileArg::Gpu => vec![KernelProfile::Gpu],
            ProfileArg::Both => vec![KernelProfile::Cpu, KernelProfile::Gpu],
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write `<variant label>.wgsl` files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Kernel family: `cpu`, `gpu`, `both`, or `auto` (what the host would run here:
    /// `COMPATTN_KERNELS`, else by the adapter's device type).
    #[arg(long, value_enum, default_value_t = ProfileArg::Both)]
    profile: ProfileArg,
    /// Batch size (with any configuration flag: one problem, the others at `compattn verify`'s
    /// defaults; with none: a built-in set of problems that reaches every variant kind).
    #[arg(long)]
    batch: Option<usize>,
    /// Sequence length n.
    #[arg(long)]
    seq: Option<usize>,
    /// Model width (dim).
    #[arg(long)]
    dim: Option<usize>,
    /// Width of every search and retrieval head (dim_head).
    #[arg(long)]
    dim_head: Option<usize>,
    /// Number of searches (num_searches).
    #[arg(long)]
    searches: Option<usize>,
    /// Number of retrievals (num_retrievals).
    #[arg(long)]
    retrievals: Option<usize>,
    /// Causal attention.
    #[arg(long)]
    causal: bool,
    /// LayerNorm before the projections.
    #[arg(long)]
    prenorm: bool,
}

impl Args {
    /// The one problem the flags describe, or `None` when no configuration flag was given.
    fn problem(&self) -> Result<Option<Problem>, Error> {
        let given = [
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
            || self.prenorm;
        if !given {
            return Ok(None);
        }
        // The defaults of `compattn verify`.
        let config = Config::new(self.dim.unwrap_or(64))
            .dim_head(self.dim_head.unwrap_or(16))
            .num_searches(self.searches.unwrap_or(3))
            .num_retrievals(self.retrievals.unwrap_or(2))
            .causal(self.causal)
            .prenorm(self.prenorm);
        config.validate()?;
        let (batch, seq) = (self.batch.unwrap_or(2), self.seq.unwrap_or(77));
        for (field, value) in [("--batch", batch), ("--seq", seq)] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        Ok(Some(Problem {
            name: "command line",
            config,
            batch,
            seq,
        }))
    }
}

pub fn run(args: &Args) -> CliResult {
    let problems = match args.problem()? {
        Some(problem) => {
            let c = problem.config;
            println!(
                "problem: batch {}, seq {}, dim {}, dim_head {}, {} searches, {} retrievals, \
                 causal {}, prenorm {}",
                problem.batch,
                problem.seq,
                c.dim,
                c.dim_head,
                c.num_searches,
                c.num_retrievals,
                c.causal,
                c.prenorm
            );
            vec![problem]
        }
        None => {
            let problems = shaders::representative_problems();
            let names: Vec<&str> = problems.iter().map(|p| p.name).collect();
            println!("problems: the representative set ({})", names.join(", "));
            problems
        }
    };

    let env = GpuOptions::from_env()?;
    let mut variants: BTreeMap<String, ShaderVariant> = BTreeMap::new();
    for profile in args.profile.profiles(env.kernels) {
        let options = GpuOptions {
            kernels: profile,
            ..env.clone()
        };
        let ctx = pollster::block_on(GpuContext::new(&options))?;
        let family = if ctx.cpu_kernels() { "cpu" } else { "gpu" };
        let collected = pollster::block_on(shaders::collect_variants(&ctx, &problems))?;
        println!(
            "{family} kernels on {}: {} variants",
            ctx.describe(),
            collected.len()
        );
        for variant in collected {
            variants.entry(variant.label()).or_insert(variant);
        }
    }

    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;
    let mut per_kernel: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (label, variant) in &variants {
        io::write_file(
            &args.out.join(format!("{label}.wgsl")),
            variant.wgsl().as_bytes(),
        )?;
        *per_kernel.entry(variant.kernel_name()).or_default() += 1;
    }
    println!(
        "wrote {} WGSL files to {}",
        variants.len(),
        args.out.display()
    );
    let width = per_kernel.keys().map(|k| k.len()).max().unwrap_or(0);
    for (kernel, count) in &per_kernel {
        println!("    {kernel:<width$} {count}");
    }
    Ok(())
}
