//! `compattn`: run, check and inspect the Compositional Attention layer from the command line.
//!
//! Every subcommand that uses a GPU picks it from the environment (`WGPU_BACKEND`,
//! `WGPU_ADAPTER_NAME`, `COMPATTN_LIMITS`) and prints the adapter it got. Errors are printed as
//! `error: ...` with exit status 1; command-line usage errors exit with status 2.

mod bench;
mod common;
mod demo;
mod forward;
mod info;
mod shaders;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Compositional Attention (searches × retrievals) on any GPU through wgpu.
///
/// The GPU is chosen with WGPU_BACKEND (vulkan, gl, metal, dx12), WGPU_ADAPTER_NAME (a substring
/// of the adapter's name) and COMPATTN_LIMITS (adapter or webgpu).
#[derive(Parser)]
#[command(name = "compattn", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its limits and features, and the one the default selection
    /// picks.
    Info,
    /// Run the layer on an input file with weights exported from PyTorch, and write the output.
    Forward(forward::Args),
    /// Check the GPU forward against the f64 CPU reference on a random problem.
    ///
    /// Sizes left out: batch 2, seq 77, dim 64, dim_head 16, 3 searches, 2 retrievals.
    Verify(verify::Args),
    /// Time the README configuration (dim 1024, 8 searches, 2 retrievals, n 512) and check it.
    Demo,
    /// Write every WGSL source the host submits (one file per pipeline variant) to a directory,
    /// for offline translation to Metal, HLSL, SPIR-V or GLSL.
    ///
    /// With a configuration flag, that one problem (sizes left out as in `verify`); with none, a
    /// built-in set of problems that reaches every kind of variant.
    Shaders(shaders::Args),
    /// Time the forward pass (fused, unfused or the f64 CPU reference) with GPU timestamps where
    /// the adapter has them; sweep n into an SVG plot (--sweep); or time our GEMM (--gemm N).
    ///
    /// Sizes left out: batch 1, seq 512, dim 512, dim_head 64, 8 searches, 2 retrievals (with
    /// --sweep: dim 256, dim_head 32, 4 searches).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info => info::run(),
        Command::Forward(args) => forward::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Demo => demo::run(),
        Command::Shaders(args) => shaders::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}
