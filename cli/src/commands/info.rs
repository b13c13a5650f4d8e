//! `compattn info`: the adapters wgpu can see, and the one the default selection picks.

use compositional_attention::gpu::context::{INSTALL_HINT, enumerate_adapters};
use compositional_attention::{Error, GpuContext, GpuOptions};

use crate::common::CliResult;

/// Features the crate uses or could use: timestamps for benchmarks, f16 and subgroups for
/// future kernels.
const FEATURES: [(&str, wgpu::Features); 3] = [
    ("TIMESTAMP_QUERY", wgpu::Features::TIMESTAMP_QUERY),
    ("SHADER_F16", wgpu::Features::SHADER_F16),
    ("SUBGROUP", wgpu::Features::SUBGROUP),
];

pub fn run() -> CliResult {
    let adapters = pollster::block_on(enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: Some("on any backend (Vulkan, Metal, DX12, GL)".into()),
            hint: INSTALL_HINT,
        }
        .into());
    }
    println!("{} adapter(s):", adapters.len());
    for (index, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        let limits = adapter.limits();
        println!();
        println!("[{index}] {}", info.name);
        println!("    backend      {:?}", info.backend);
        println!("    device type  {:?}", info.device_type);
        let driver = format!("{} {}", info.driver, info.driver_info);
        println!("    driver       {}", driver.trim());
        let bytes = [
            (
                "max_storage_buffer_binding_size",
                limits.max_storage_buffer_binding_size,
            ),
            ("max_buffer_size", limits.max_buffer_size),
            (
                "max_compute_workgroup_storage_size",
                limits.max_compute_workgroup_storage_size.into(),
            ),
        ];
        let counts = [
            (
                "max_compute_invocations_per_workgroup",
                limits.max_compute_invocations_per_workgroup,
            ),
            (
                "max_compute_workgroups_per_dimension",
                limits.max_compute_workgroups_per_dimension,
            ),
            (
                "max_storage_buffers_per_shader_stage",
                limits.max_storage_buffers_per_shader_stage,
            ),
        ];
        for (name, value) in bytes {
            println!("    {name:<38} {}", with_size(value));
        }
        for (name, value) in counts {
            println!("    {name:<38} {value}");
        }
        let features = adapter.features();
        let listed: Vec<String> = FEATURES
            .iter()
            .map(|(name, feature)| {
                let mark = if features.contains(*feature) {
                    "yes"
                } else {
                    "no"
                };
                format!("{name} {mark}")
            })
            .collect();
        println!("    features     {}", listed.join(", "));
    }
    println!();
    let options = GpuOptions::from_env()?;
    let ctx = pollster::block_on(GpuContext::new(&options))?;
    println!(
        "default selection (WGPU_BACKEND={}, WGPU_ADAPTER_NAME={}, COMPATTN_LIMITS={}): {}",
        env_or_unset("WGPU_BACKEND"),
        env_or_unset("WGPU_ADAPTER_NAME"),
        env_or_unset("COMPATTN_LIMITS"),
        ctx.describe()
    );
    println!(
        "    opened with max_storage_buffer_binding_size {}, max_compute_workgroup_storage_size {}",
        with_size(ctx.limits().max_storage_buffer_binding_size),
        with_size(ctx.limits().max_compute_workgroup_storage_size.into()),
    );
    println!(
        "    tuning COMPATTN_TUNE={}, cache {}",
        ctx.tune_mode().name(),
        ctx.tune_cache_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none (memory only)".into())
    );
    Ok(())
}

fn env_or_unset(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unset".into())
}

/// A byte limit, with its size in KiB/MiB/GiB when it is a whole multiple of one.
fn with_size(value: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if value >= 1 << shift && value.is_multiple_of(1 << shift) {
            return format!("{value} ({} {unit})", value >> shift);
        }
    }
    value.to_string()
}
