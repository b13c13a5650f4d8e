//! Criterion benchmarks: our GEMM, every attention kernel of both strategies, a decode step's
//! attention over the cache, the whole forward per strategy, what attention maps cost, and the `f64` CPU reference.
//!
//! GPU entries report **GPU time**: each iteration's time is what `KernelBench::sample_ms` or
//! `CompositionalAttention::profile` measured (timestamp queries where the adapter has them, else
//! the host wall time around submit and wait), handed to criterion through `iter_custom`. The
//! throughput criterion prints as "elem/s" is FLOP/s (one element = one FLOP).
//!
//! Sizes are chosen to finish in minutes on lavapipe (a CPU Vulkan driver): config dim 256,
//! dim_head 32, 4 searches, 2 retrievals, batch 1, n ∈ {128, 512, 2048}; 10 flat samples each.
//!
//! ```sh
//! cargo bench --bench kernels                         # everything
//! cargo bench --bench kernels -- forward/fused        # a filter (regex on the benchmark id)
//! cargo bench --bench kernels -- --quick gemm         # criterion's quick mode
//! ```
//!
//! The adapter is the one the environment selects (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
//! `COMPATTN_LIMITS`); without one, only the CPU reference runs.

use std::sync::OnceLock;
use std::time::Duration;

use compositional_attention::kernel_bench::{
    GemmKernel, KernelBench, attention_kernel_flops, decode_attention_flops,
};
use compositional_attention::testing::random_problem;
use compositional_attention::{
    CompositionalAttention, Config, Error, GpuContext, MapsOptions, Strategy, reference,
};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};

/// Sequence lengths of the attention kernels and the forward.
const SEQS: [usize; 3] = [128, 512, 2048];
/// Sequence lengths of the CPU reference (slow beyond).
const CPU_SEQS: [usize; 2] = [128, 512];
/// GEMM sizes (`m = n = k`).
const GEMM_SIZES: [usize; 2] = [256, 512];
const BATCH: usize = 1;
const SEED: u64 = 0;

fn config() -> Config {
    Config::new(256)
        .dim_head(32)
        .num_searches(4)
        .num_retrievals(2)
}

/// The device, opened once for every group; `None` (with a note) where there is no adapter.
fn gpu() -> Option<&'static GpuContext> {
    static GPU: OnceLock<Option<GpuContext>> = OnceLock::new();
    GPU.get_or_init(|| match GpuContext::from_env_blocking() {
        Ok(ctx) => {
            eprintln!("adapter: {}", ctx.describe());
            if !ctx.has_timestamps() {
                eprintln!("note: no TIMESTAMP_QUERY: GPU entries report host wall time");
            }
            Some(ctx)
        }
        Err(error) => {
            eprintln!("note: no GPU ({error}); only the CPU reference runs");
            None
        }
    })
    .as_ref()
}

/// Few flat samples and short times: every entry takes seconds, not minutes, on lavapipe.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat);
}

fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms / 1e3)
}

/// Criterion's FLOP count for an entry (rounded; elements = FLOPs).
fn flops(value: f64) -> Throughput {
    Throughput::Elements(value.round() as u64)
}

/// The unfused strategy stores `b·s·n²` search logits: does that buffer fit the device? (The
/// layer checks the same limits and fails with `Error::LimitExceeded` where it does not.)
fn unfused_fits(ctx: &GpuContext, config: &Config, seq: usize) -> bool {
    let bytes = (BATCH * config.num_searches * seq * seq * 4) as u64;
    let limits = ctx.limits();
    bytes <= limits.max_storage_buffer_binding_size && bytes <= limits.max_buffer_size
}

/// The kernels `KernelBench::attention_kernels` returns: the unfused strategy's four, then the
/// fused strategy's: `value_mean`, the general fused kernel, and the blocked core the layer runs
/// on CPU drivers (only where `KernelBench::has_blocked_attention`).
const ATTENTION_KERNELS: [&str; 7] = [
    "search_scores",
    "masked_softmax",
    "search_values",
    "retrieval_select",
    "value_mean",
    "fused_attention",
    "blocked_attention",
];

/// `slot`'s value, built on first use. Criterion calls a routine only for the entries its filter
/// selects (and then once per sample), so building there keeps a filtered run from compiling
/// and allocating everything else. Failures here are bugs, not limits (those are checked before
/// an entry is registered), so they abort the run with their message.
fn lazily<'a, T>(
    slot: &'a mut Option<T>,
    what: &str,
    build: impl FnOnce() -> Result<T, Error>,
) -> &'a mut T {
    slot.get_or_insert_with(|| build().unwrap_or_else(|error| panic!("{what}: {error}")))
}

/// `iters` samples of `kernel`, summed GPU time.
fn kernel_time(kernel: &mut KernelBench, iters: u64) -> Duration {
    let total: f64 = (0..iters)
        .map(|_| match kernel.sample_ms_blocking() {
            Ok((ms, _)) => ms,
            Err(error) => panic!("{}: {error}", kernel.name()),
        })
        .sum();
    millis(total)
}

fn gemm(c: &mut Criterion) {
    let Some(ctx) = gpu() else { return };
    let mut group = c.benchmark_group("gemm");
    configure(&mut group);
    for (kernel, name) in [
        (GemmKernel::Register, "register"),
        (GemmKernel::Tiled, "tiled"),
    ] {
        for size in GEMM_SIZES {
            let mut slot = None;
            group.throughput(flops(2.0 * (size as f64).powi(3)));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                let bench = lazily(&mut slot, &format!("gemm/{name}/{size}"), || {
                    pollster::block_on(KernelBench::gemm(ctx, kernel, size, size, size))
                });
                b.iter_custom(|iters| kernel_time(bench, iters))
            });
        }
    }
    group.finish();
}

fn attention_kernels(c: &mut Criterion) {
    let Some(ctx) = gpu() else { return };
    let config = config();
    let mut group = c.benchmark_group("attention_kernels");
    configure(&mut group);
    for seq in SEQS {
        // One set of kernels per n, built by the first selected entry, shared by the others.
        let mut slot: Option<Vec<KernelBench>> = None;
        if !unfused_fits(ctx, &config, seq) {
            eprintln!(
                "note: attention_kernels at n = {seq} skipped: the b·s·n² logits exceed the device's buffer limits"
            );
            continue;
        }
        for name in ATTENTION_KERNELS {
            if name == "blocked_attention"
                && !KernelBench::has_blocked_attention(ctx, &config, BATCH, seq)
            {
                eprintln!("note: blocked_attention at n = {seq} skipped: not run on this adapter");
                continue;
            }
            group.throughput(flops(attention_kernel_flops(name, &config, BATCH, seq)));
            group.bench_function(BenchmarkId::new(name, seq), |b| {
                let kernels = lazily(
                    &mut slot,
                    &format!("attention kernels at n = {seq}"),
                    || pollster::block_on(KernelBench::attention_kernels(ctx, &config, BATCH, seq)),
                );
                let Some(kernel) = kernels.iter_mut().find(|k| k.name() == name) else {
                    panic!("KernelBench::attention_kernels has no `{name}`");
                };
                b.iter_custom(|iters| kernel_time(kernel, iters))
            });
        }
    }
    group.finish();
}

/// A decode step's attention over the cache (`decode_attention` and `decode_reduce`) at issue
/// 8's configuration (dim 512, d 64, s 8, r 2), contexts 512 and 2048.
fn decode_attention(c: &mut Criterion) {
    let Some(ctx) = gpu() else { return };
    let config = Config::new(512)
        .dim_head(64)
        .num_searches(8)
        .num_retrievals(2);
    let mut group = c.benchmark_group("decode_attention");
    configure(&mut group);
    for context in [512, 2048] {
        let mut slot = None;
        group.throughput(flops(decode_attention_flops(&config, context)));
        group.bench_function(BenchmarkId::from_parameter(context), |b| {
            let bench = lazily(&mut slot, &format!("decode_attention/{context}"), || {
                pollster::block_on(KernelBench::decode_attention(ctx, &config, context))
            });
            b.iter_custom(|iters| kernel_time(bench, iters))
        });
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    let Some(ctx) = gpu() else { return };
    let config = config();
    let mut group = c.benchmark_group("forward");
    configure(&mut group);
    for strategy in Strategy::ALL {
        for seq in SEQS {
            if strategy == Strategy::Unfused && !unfused_fits(ctx, &config, seq) {
                eprintln!(
                    "note: forward/{strategy}/{seq} skipped: the b·s·n² logits exceed the device's buffer limits"
                );
                continue;
            }
            let mut slot = None;
            group.throughput(flops(config.forward_flops(BATCH, seq)));
            group.bench_function(BenchmarkId::new(strategy.name(), seq), |b| {
                let (layer, input) =
                    lazily(&mut slot, &format!("forward/{strategy}/{seq}"), || {
                        let (weights, input) = random_problem(config, BATCH, seq, None, 1.0, SEED)?;
                        let mut layer = CompositionalAttention::new(ctx, &weights)?;
                        layer.set_strategy(strategy);
                        // Compiles the pipelines and builds the workspace outside the timing.
                        pollster::block_on(layer.forward_timed(&input.x, BATCH, seq, None))?;
                        Ok((layer, input))
                    });
                b.iter_custom(|iters| {
                    let total: f64 = (0..iters)
                        .map(|_| {
                            match pollster::block_on(
                                layer.forward_timed(&input.x, BATCH, seq, None),
                            ) {
                                Ok(profile) => profile.total_ms,
                                Err(error) => panic!("forward/{strategy}/{seq}: {error}"),
                            }
                        })
                        .sum();
                    millis(total)
                })
            });
        }
    }
    group.finish();
}

/// What attention maps cost: the host forward of each strategy against `forward_with_maps` with
/// every query row and with 8 rows, all as host wall time (upload to readback), since the maps
/// call has no profiled variant.
fn maps(c: &mut Criterion) {
    let Some(ctx) = gpu() else { return };
    let config = config();
    let mut group = c.benchmark_group("maps");
    configure(&mut group);
    let eight = |seq: usize| -> Vec<usize> { (0..8).map(|k| k * (seq - 1) / 7).collect() };
    for seq in SEQS {
        if !unfused_fits(ctx, &config, seq) {
            eprintln!("note: maps/*/{seq} skipped: the b·s·n² weights exceed the device's limits");
            continue;
        }
        for entry in ["fused", "unfused", "maps_all", "maps_8"] {
            let mut slot = None;
            group.bench_function(BenchmarkId::new(entry, seq), |b| {
                let (layer, input) = lazily(&mut slot, &format!("maps/{entry}/{seq}"), || {
                    let (weights, input) = random_problem(config, BATCH, seq, None, 1.0, SEED)?;
                    let mut layer = CompositionalAttention::new(ctx, &weights)?;
                    if entry == "unfused" {
                        layer.set_strategy(Strategy::Unfused);
                    }
                    Ok((layer, input))
                });
                let options = match entry {
                    "maps_8" => Some(MapsOptions::rows(eight(seq))),
                    "maps_all" => Some(MapsOptions::default()),
                    _ => None,
                };
                let mut once = || {
                    let result = match &options {
                        Some(options) => layer
                            .forward_with_maps_blocking(&input.x, BATCH, seq, None, options)
                            .map(|(y, _)| y),
                        None => layer.forward_blocking(&input.x, BATCH, seq, None),
                    };
                    if let Err(error) = result {
                        panic!("maps/{entry}/{seq}: {error}");
                    }
                };
                // Compiles the pipelines and builds the workspace outside the timing.
                once();
                b.iter_custom(|iters| {
                    let start = std::time::Instant::now();
                    (0..iters).for_each(|_| once());
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

fn cpu_reference(c: &mut Criterion) {
    let config = config();
    let mut group = c.benchmark_group("cpu_reference");
    configure(&mut group);
    for seq in CPU_SEQS {
        let mut slot = None;
        group.throughput(flops(config.forward_flops(BATCH, seq)));
        group.bench_function(BenchmarkId::from_parameter(seq), |b| {
            let (weights, input) = lazily(&mut slot, &format!("cpu_reference/{seq}"), || {
                random_problem(config, BATCH, seq, None, 1.0, SEED)
            });
            b.iter(|| reference::forward(weights, &input.x, BATCH, seq, None))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    gemm,
    attention_kernels,
    decode_attention,
    forward,
    maps,
    cpu_reference
);
criterion_main!(benches);
