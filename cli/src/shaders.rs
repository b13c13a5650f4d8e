//! `compattn shaders`: every WGSL source the host submits, written out for offline tools.
//!
//! The sources come from the pipeline cache after layers were prepared on a real device
//! (`compositional_attention::shader_variants::collect_variants`), so each file is exactly the text the
//! host hands to `create_shader_module`, specialisation preamble included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use compositional_attention::gpu::pipelines::ShaderVariant;
use compositional_attention::shader_variants::{self, Problem};
use compositional_attention::{Error, GpuContext, GpuOptions, KernelFamilyRequest, io};

use crate::common::{CliResult, ProblemArgs, VERIFY_DEFAULTS};

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
    fn profiles(self, from_env: KernelFamilyRequest) -> Vec<KernelFamilyRequest> {
        match self {
            ProfileArg::Auto => vec![from_env],
            ProfileArg::Cpu => vec![KernelFamilyRequest::Cpu],
            ProfileArg::Gpu => vec![KernelFamilyRequest::Gpu],
            ProfileArg::Both => vec![KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu],
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
    /// One configuration and shape (sizes left out take `compattn verify`'s defaults); with no
    /// such flag, a built-in set of problems that reaches every variant kind.
    #[command(flatten)]
    problem: ProblemArgs,
}

impl Args {
    /// The one problem the flags describe, or `None` when no configuration flag was given.
    fn problem(&self) -> Result<Option<Problem>, Error> {
        if !self.problem.any_given() {
            return Ok(None);
        }
        let (config, batch, seq) = self.problem.resolve(VERIFY_DEFAULTS)?;
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
            let problems = shader_variants::representative_problems();
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
        let collected = pollster::block_on(shader_variants::collect_variants(&ctx, &problems))?;
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
