//! `compattn`: run, check and inspect the Compositional Attention layer from the command line.
//!
//! Every subcommand that uses a GPU picks it from the environment (`WGPU_BACKEND`,
//! `WGPU_ADAPTER_NAME`, `COMPATTN_LIMITS`) and prints the adapter it got. Errors are printed as
//! `error: ...` with exit status 1; command-line usage errors exit with status 2. The library's
//! log lines go to stderr through `env_logger` (`RUST_LOG=info`, `RUST_LOG=debug`, ...).

mod checkpoint_args;
mod commands;
mod common;
mod fits;
mod output;
mod sizes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::{bench, demo, forward, info, plot, shaders, soak, train, verify};

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
    /// Fine-tune a checkpoint (any format `forward` reads) on a regression set with AdamW on the
    /// GPU (MSE against `target`), and save the trained weights as safetensors.
    ///
    /// Step k trains on sequences (k·B + i) mod m, i < B, with dropout seeded S + k.
    Train(train::Args),
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
    /// the adapter has them; sweep n into an SVG plot (--sweep); time the training forward and
    /// backward beside it (--backward); or time our GEMM (--gemm N).
    ///
    /// Sizes left out: batch 1, seq 512, dim 512, dim_head 64, 8 searches, 2 retrievals (with
    /// --sweep: dim 256, dim_head 32, 4 searches).
    Bench(bench::Args),
    /// Run many forwards on one layer, cycling shapes, masks and strategies, every output
    /// checked against the f64 reference, and report the host memory and gpu_bytes curve.
    Soak(soak::Args),
    /// Draw an attention maps file (`forward --maps`) as SVG heatmaps, with an index.html.
    ///
    /// Per batch row b and search s: search_b{b}_s{s}.svg (the search attention, query rows ×
    /// keys, colour scale 0..its largest value) and selection_b{b}_s{s}.svg (the retrieval
    /// selection, query rows × retrievals, 0..1). No GPU.
    Plot(plot::Args),
}

fn main() -> ExitCode {
    quiet_wayland_probes();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info => info::run(),
        Command::Forward(args) => forward::run(args),
        Command::Train(args) => train::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Demo => demo::run(),
        Command::Shaders(args) => shaders::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Plot(args) => plot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Without a display, every command that opens a Vulkan instance used to print `error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment.` (once per instance). The line comes
/// from libwayland-client: Mesa's Vulkan device-selection layer (`VK_LAYER_MESA_device_select`,
/// an implicit layer that `mesa-vulkan-drivers` installs for every Vulkan application) calls
/// `wl_display_connect` to find the display's GPU whenever the instance enables
/// `VK_KHR_wayland_surface`, as wgpu's does. Where no Wayland connection is possible (no
/// absolute `XDG_RUNTIME_DIR`, no absolute `WAYLAND_DISPLAY`, no `WAYLAND_SOCKET`), this points
/// `XDG_RUNTIME_DIR` at a private empty directory, so the probe finds no socket and fails
/// quietly, as on a desktop without Wayland. Where a display may exist nothing changes, and the
/// layer keeps working (`MESA_VK_DEVICE_SELECT` still applies).
fn quiet_wayland_probes() {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let absolute =
        |name: &str| std::env::var_os(name).is_some_and(|v| v.to_string_lossy().starts_with('/'));
    if absolute("XDG_RUNTIME_DIR") || absolute("WAYLAND_DISPLAY") || set("WAYLAND_SOCKET") {
        return;
    }
    if let Some(dir) = private_runtime_dir() {
        // SAFETY: the first thing `main` does, before any thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir) };
    }
}

/// `$TMPDIR/compattn-runtime-<uid>`, created with mode 0700 and checked to be ours and private
/// (a directory someone else made could hold a socket of theirs); `None` if that fails.
#[cfg(unix)]
fn private_runtime_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = std::env::temp_dir().join(format!("compattn-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    private.then_some(dir)
}

#[cfg(not(unix))]
fn private_runtime_dir() -> Option<std::path::PathBuf> {
    None
}
