//! Adapter and device setup, and the error scopes that turn wgpu errors into [`Error`]s.
//!
//! One [`GpuContext`] holds a device, its queue and the pipeline cache; layers share it through
//! cheap clones. It either opens a device of its own ([`GpuContext::new`], picking the adapter
//! the way wgpu's own tools do: `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, but a name that matches
//! nothing is an error that lists what exists, where wgpu's helper would panic), or works on a
//! device the caller opened ([`GpuContext::from_device`]) within that device's limits and
//! features.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::pipelines::{BoundsChecks, PipelineCache, Reduction, ShaderVariant, TexelRead};
use crate::gpu::tuning_store::{TuneMode, TuningStore, default_cache_path};
use crate::precision::Precision;

/// Printed when no adapter exists: on a machine without a GPU, Mesa's CPU drivers provide one.
pub const INSTALL_HINT: &str = "Install a Vulkan or OpenGL driver; on a machine without a GPU, Mesa's CPU \
     drivers work: `apt-get install -y mesa-vulkan-drivers` (Vulkan lavapipe) or \
     `libegl1 libgl1-mesa-dri` (OpenGL llvmpipe), as root or with sudo";

/// Which limits to request from the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitsPolicy {
    /// Everything the adapter offers: larger tiles and buffers where the hardware allows.
    #[default]
    Adapter,
    /// WebGPU's defaults (`wgpu::Limits::default()`, clamped to the adapter): what every browser
    /// grants without asking, so a run with this policy proves the kernels fit there.
    WebGpuDefaults,
}

impl LimitsPolicy {
    /// `COMPATTN_LIMITS=webgpu` selects [`LimitsPolicy::WebGpuDefaults`]; unset or `adapter`
    /// selects [`LimitsPolicy::Adapter`].
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_LIMITS").as_deref() {
            Err(_) | Ok("") | Ok("adapter") => Ok(LimitsPolicy::Adapter),
            Ok("webgpu") | Ok("default") => Ok(LimitsPolicy::WebGpuDefaults),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_LIMITS",
                value: other.to_string(),
                reason: "must be `adapter` or `webgpu`",
            }),
        }
    }
}

/// Whether kernels use subgroup operations (`wgpu::Features::SUBGROUP`) where the device has
/// them. Only the workgroup-wide reductions of the row kernels do ([`Reduction`]); each has the
/// workgroup-memory tree as its fallback, and both give the same result to f32 rounding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubgroupPolicy {
    /// Request `SUBGROUP` where the adapter has it and [`LimitsPolicy::Adapter`] applies, and
    /// use it on native back ends (a browser's WGSL compiler takes subgroups behind an `enable`
    /// directive that wgpu 30's does not accept, so the browser keeps the fallback).
    #[default]
    WhereAvailable,
    /// Never: the workgroup-memory reductions everywhere (to compare, or to test the fallback
    /// on an adapter that has subgroups).
    Off,
}

impl SubgroupPolicy {
    /// `COMPATTN_SUBGROUPS=on|off` (unset: `on`, [`SubgroupPolicy::WhereAvailable`]).
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_SUBGROUPS").as_deref() {
            Err(_) | Ok("") | Ok("on") => Ok(SubgroupPolicy::WhereAvailable),
            Ok("off") => Ok(SubgroupPolicy::Off),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_SUBGROUPS",
                value: other.to_string(),
                reason: "must be `on` or `off`",
            }),
        }
    }
}

/// Which kernels run without wgpu's runtime bounds checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BoundsCheckPolicy {
    /// Kernels declared [`BoundsChecks::Proven`] (every index proven in range; measured faster)
    /// run unchecked on native back ends; every other kernel is checked.
    #[default]
    ProvenUnchecked,
    /// Every kernel checked: to rule the unchecked kernels out when chasing a fault.
    AllChecked,
}

impl BoundsCheckPolicy {
    /// `COMPATTN_BOUNDS_CHECKS=proven|all` (unset: `proven`,
    /// [`BoundsCheckPolicy::ProvenUnchecked`]).
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_BOUNDS_CHECKS").as_deref() {
            Err(_) | Ok("") | Ok("proven") => Ok(BoundsCheckPolicy::ProvenUnchecked),
            Ok("all") => Ok(BoundsCheckPolicy::AllChecked),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_BOUNDS_CHECKS",
                value: other.to_string(),
                reason: "must be `proven` or `all`",
            }),
        }
    }
}

/// Whether the texel kernels (the texel GEMM, the blocked core) read their operands as
/// read-only storage textures where the device allows ([`TexelRead::Storage`]), or always as
/// sampled textures. Both read the same values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TexelReadPolicy {
    /// Storage reads of a format on a native Vulkan, Metal or DX12 device with four storage
    /// textures per stage whose adapter has read-only storage for that format (`rgba32float`,
    /// `rgba16float`): a device this crate opens with [`LimitsPolicy::Adapter`], or a caller's
    /// device (`GpuContext::from_device`) with those limits, `wgpu::Limits::default()`'s
    /// included. Sampled reads elsewhere: in a browser (read-only storage textures are a WGSL
    /// language extension there), on a device this crate opens with
    /// [`LimitsPolicy::WebGpuDefaults`] (which stands for what a browser grants, so that run
    /// tests the fallback), on OpenGL (no texel operands).
    #[default]
    WhereAvailable,
    /// Sampled reads everywhere (to compare, or to test the fallback on any adapter).
    Sampled,
}

impl TexelReadPolicy {
    /// `COMPATTN_TEXEL_READS=auto|sampled` (unset: `auto`, [`TexelReadPolicy::WhereAvailable`]).
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_TEXEL_READS").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(TexelReadPolicy::WhereAvailable),
            Ok("sampled") => Ok(TexelReadPolicy::Sampled),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_TEXEL_READS",
                value: other.to_string(),
                reason: "must be `auto` or `sampled`",
            }),
        }
    }
}

/// What a context decides once, when it is made: the kernel family asked for, subgroups, bounds
/// checks, texel reads.
#[derive(Clone, Copy, Debug)]
struct Choices {
    kernels: KernelFamilyRequest,
    subgroups: SubgroupPolicy,
    bounds_checks: BoundsCheckPolicy,
    texel_reads: TexelReadPolicy,
}

impl Choices {
    /// `kernels` with the rest from the environment.
    fn from_env(kernels: KernelFamilyRequest) -> Result<Self> {
        Ok(Choices {
            kernels,
            subgroups: SubgroupPolicy::from_env()?,
            bounds_checks: BoundsCheckPolicy::from_env()?,
            texel_reads: TexelReadPolicy::from_env()?,
        })
    }
}

/// Which family of kernel variants to run.
///
/// CPU drivers (lavapipe, llvmpipe, SwiftShader) run invocations as SIMD lanes: they want big
/// register blocks and lane-uniform loads. GPUs want workgroup-memory tiles and many small
/// invocations. `Auto` picks by the adapter's device type; forcing one lets the other family
/// be tested and benchmarked anywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelFamilyRequest {
    /// `Cpu` on CPU adapters, `Gpu` on everything else.
    #[default]
    Auto,
    /// Register-blocked GEMM, fused kernel reading keys directly, several queries per lane.
    Cpu,
    /// Workgroup-tiled GEMM, fused kernel staging key tiles in workgroup memory.
    Gpu,
}

/// The old name of [`KernelFamilyRequest`] (it requests a kernel family; it is not a timing profile).
#[deprecated(note = "renamed to KernelFamilyRequest")]
pub type KernelProfile = KernelFamilyRequest;

impl KernelFamilyRequest {
    /// `COMPATTN_KERNELS=cpu|gpu|auto` (unset: `auto`).
    pub fn from_env() -> Result<Self> {
        match std::env::var("COMPATTN_KERNELS").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(KernelFamilyRequest::Auto),
            Ok("cpu") => Ok(KernelFamilyRequest::Cpu),
            Ok("gpu") => Ok(KernelFamilyRequest::Gpu),
            Ok(other) => Err(Error::InvalidConfig {
                field: "COMPATTN_KERNELS",
                value: other.to_string(),
                reason: "must be `auto`, `cpu` or `gpu`",
            }),
        }
    }
}

/// How to pick the adapter and device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` reads `WGPU_BACKEND` (`vulkan`, `gl`, `metal`, `dx12`,
    /// comma-separated) and falls back to every backend compiled in.
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this (case-insensitive); `None` reads
    /// `WGPU_ADAPTER_NAME` and falls back to wgpu's default choice.
    pub adapter_name: Option<String>,
    /// Limits to request; see [`LimitsPolicy`].
    pub limits: LimitsPolicy,
    /// Which kernel variants to run; see [`KernelFamilyRequest`].
    pub kernels: KernelFamilyRequest,
    /// Whether reductions use subgroups where the device has them; see [`SubgroupPolicy`].
    pub subgroups: SubgroupPolicy,
    /// Which kernels run without runtime bounds checks; see [`BoundsCheckPolicy`].
    pub bounds_checks: BoundsCheckPolicy,
    /// How the texel kernels read their operands; see [`TexelReadPolicy`].
    pub texel_reads: TexelReadPolicy,
    /// Passed to `request_adapter` when no name is given.
    pub power_preference: wgpu::PowerPreference,
    /// The longest a wait on the GPU may take before it is an [`Error::Timeout`]
    /// (`COMPATTN_WAIT_TIMEOUT_S`); `None`: [`DEFAULT_WAIT_TIMEOUT`].
    pub wait_timeout: Option<std::time::Duration>,
    /// Whether plans use tilings measured on this adapter (`COMPATTN_TUNE`); see [`TuneMode`].
    /// `GpuOptions::default()` has [`TuneMode::On`], memory only.
    pub tune: TuneMode,
    /// Where measured tilings are kept between processes; `None`: in memory only.
    /// [`GpuOptions::from_env`] sets [`default_cache_path`].
    pub tune_cache: Option<std::path::PathBuf>,
}

impl GpuOptions {
    /// Options from the environment: `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `COMPATTN_LIMITS`,
    /// `COMPATTN_KERNELS`, `COMPATTN_SUBGROUPS`, `COMPATTN_BOUNDS_CHECKS`,
    /// `COMPATTN_TEXEL_READS`, `WGPU_POWER_PREF`,
    /// `COMPATTN_WAIT_TIMEOUT_S`, `COMPATTN_TUNE` and
    /// `COMPATTN_TUNE_CACHE` (or the platform's cache folder; [`default_cache_path`]).
    pub fn from_env() -> Result<Self> {
        Ok(GpuOptions {
            backends: backends_from_env()?,
            adapter_name: env_var("WGPU_ADAPTER_NAME"),
            limits: LimitsPolicy::from_env()?,
            kernels: KernelFamilyRequest::from_env()?,
            subgroups: SubgroupPolicy::from_env()?,
            bounds_checks: BoundsCheckPolicy::from_env()?,
            texel_reads: TexelReadPolicy::from_env()?,
            power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
            wait_timeout: env_var("COMPATTN_WAIT_TIMEOUT_S")
                .map(|v| match v.parse::<f64>() {
                    Ok(s) if s.is_finite() && s > 0.0 => Ok(std::time::Duration::from_secs_f64(s)),
                    _ => Err(Error::InvalidConfig {
                        field: "COMPATTN_WAIT_TIMEOUT_S",
                        value: v.clone(),
                        reason: "must be a positive number of seconds",
                    }),
                })
                .transpose()?,
            tune: TuneMode::from_env()?,
            tune_cache: default_cache_path(),
        })
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses `WGPU_BACKEND` strictly: wgpu's own parser skips unknown names with a log line, which
/// turns a typo into a confusing "no adapter".
fn backends_from_env() -> Result<Option<wgpu::Backends>> {
    env_var("WGPU_BACKEND")
        .map(|v| parse_backends(&v))
        .transpose()
}

/// Parses a comma-separated backend list (`vulkan,gl`), rejecting unknown names.
pub fn parse_backends(value: &str) -> Result<wgpu::Backends> {
    for name in value.split(',') {
        let known = [
            "vulkan", "vk", "dx12", "d3d12", "metal", "mtl", "opengl", "gles", "gl", "webgpu",
        ];
        if !known.contains(&name.trim().to_lowercase().as_str()) {
            return Err(Error::InvalidConfig {
                field: "WGPU_BACKEND",
                value: value.to_string(),
                reason: "names must be among vulkan, gl, metal, dx12, webgpu (comma-separated)",
            });
        }
    }
    Ok(wgpu::Backends::from_comma_list(value))
}

/// A device, its queue, and everything built on them once: shared by every layer on it.
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
    /// Whether dispatches built through this handle leave a pipeline not yet compiled to
    /// [`crate::gpu::dispatch::compile_pending`] (see [`GpuContext::deferring_compiles`]).
    defer_compiles: bool,
}

struct Inner {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: PipelineCache,
    /// Errors no scope caught, recorded by the handler this crate installs on a device it opened
    /// itself; `None` on a caller's device, whose handler stays in place.
    uncaptured: Option<Arc<Mutex<Vec<String>>>>,
    /// Serialises GPU work on the GL backend (see [`GpuContext::serial`]).
    serial: Option<futures::lock::Mutex<()>>,
    /// The kernel family asked for (resolved against the device type by
    /// [`GpuContext::cpu_kernels`]).
    family_request: KernelFamilyRequest,
    /// Why the device was lost, once it is (set by the device-lost callback on a device this
    /// crate opened, or by a failed readback).
    lost: Arc<Mutex<Option<String>>>,
    /// The longest a wait on the GPU may take, in milliseconds.
    wait_timeout_ms: std::sync::atomic::AtomicU64,
    /// Tilings measured on this adapter, by shape class (`plan::tuned`).
    tuning: TuningStore,
    /// How row kernels reduce across a workgroup ([`GpuContext::reduction`]).
    reduction: Reduction,
    /// Which kernels run without runtime bounds checks ([`GpuContext::bounds_checks`]).
    bounds_checks: BoundsCheckPolicy,
    /// Whether the texel kernels read texel rows of each of `Precision::ALL` (in that order)
    /// as storage textures ([`GpuContext::texel_read_for`]).
    storage_texel_reads: [bool; 2],
}

/// The default [`GpuContext::wait_timeout`]: generous, since one forward of a long sequence on a
/// CPU driver takes seconds; a wait this long means a hung device.
pub const DEFAULT_WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter as `options` say and opens a device on it.
    pub async fn new(options: &GpuOptions) -> Result<Self> {
        let adapter = match options.backends {
            Some(backends) => select_adapter(backends, options).await?,
            // Vulkan, Metal, DX12 or the browser first; GL only if none of them has an adapter.
            // Probing GL initialises EGL, which is slow and, headless, prints warnings.
            None => match select_adapter(wgpu::Backends::PRIMARY, options).await {
                Ok(adapter) => adapter,
                Err(_) => select_adapter(wgpu::Backends::all(), options).await?,
            },
        };
        let choices = Choices {
            kernels: options.kernels,
            subgroups: options.subgroups,
            bounds_checks: options.bounds_checks,
            texel_reads: options.texel_reads,
        };
        let ctx = Self::open(adapter, options.limits, choices).await?;
        if let Some(timeout) = options.wait_timeout {
            ctx.set_wait_timeout(timeout);
        }
        ctx.set_tune_mode(options.tune);
        ctx.set_tune_cache_path(options.tune_cache.clone());
        Ok(ctx)
    }

    /// [`GpuContext::new`] with [`GpuOptions::from_env`].
    pub async fn from_env() -> Result<Self> {
        Self::new(&GpuOptions::from_env()?).await
    }

    /// Blocking [`GpuContext::from_env`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_env_blocking() -> Result<Self> {
        pollster::block_on(Self::from_env())
    }

    /// Opens a device on an adapter the caller picked. Tuning follows `COMPATTN_TUNE` and
    /// `COMPATTN_TUNE_CACHE` (a value other than `off`, `on` or `force` is an
    /// [`Error::InvalidConfig`]); [`GpuContext::set_tune_mode`] changes it. Subgroups follow
    /// `COMPATTN_SUBGROUPS` ([`SubgroupPolicy::from_env`]), bounds checks
    /// `COMPATTN_BOUNDS_CHECKS` ([`BoundsCheckPolicy::from_env`]), texel reads
    /// `COMPATTN_TEXEL_READS` ([`TexelReadPolicy::from_env`]).
    pub async fn from_adapter(
        adapter: wgpu::Adapter,
        policy: LimitsPolicy,
        kernels: KernelFamilyRequest,
    ) -> Result<Self> {
        let tune = TuneMode::from_env()?;
        let ctx = Self::open(adapter, policy, Choices::from_env(kernels)?).await?;
        ctx.set_tune_mode(tune);
        ctx.set_tune_cache_path(default_cache_path());
        Ok(ctx)
    }

    async fn open(adapter: wgpu::Adapter, policy: LimitsPolicy, choices: Choices) -> Result<Self> {
        let adapter_limits = adapter.limits();
        let limits = match policy {
            LimitsPolicy::Adapter => adapter_limits,
            LimitsPolicy::WebGpuDefaults => {
                wgpu::Limits::default().or_worse_values_from(&adapter_limits)
            }
        };
        // The optional features used where the adapter has them: timestamp queries
        // (benchmarks), shader-f16 (Precision::F16 storage) and subgroups (the row kernels'
        // reductions; not under WebGPU's defaults, which stand for what a browser grants, nor
        // in a browser, which the kernels do not use them in: see `assemble`). The
        // f32 kernels need nothing beyond WebGPU's core.
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        if policy == LimitsPolicy::Adapter
            && choices.subgroups == SubgroupPolicy::WhereAvailable
            && adapter.get_info().backend != wgpu::Backend::BrowserWebGpu
        {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let required_features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("compositional-attention"),
                required_features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await?;
        // wgpu's default handler panics on any error no scope caught. Every operation here runs
        // inside scopes, so this only records stragglers for the next call to report.
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(error.to_string());
            }
        }));
        // WebGPU's defaults stand for what a browser grants, whose texel reads are sampled.
        let choices = match policy {
            LimitsPolicy::Adapter => choices,
            LimitsPolicy::WebGpuDefaults => Choices {
                texel_reads: TexelReadPolicy::Sampled,
                ..choices
            },
        };
        let ctx = Self::assemble(adapter, (device, queue), limits, Some(uncaptured), choices);
        // Record why the device went (destroyed, driver reset): every later call reports it.
        let lost = ctx.inner.lost.clone();
        ctx.inner
            .device
            .set_device_lost_callback(move |reason, message| {
                if let Ok(mut lost) = lost.lock() {
                    *lost = Some(format!("{reason:?}: {message}"));
                }
            });
        log::info!("opened a device on {}", ctx.describe());
        Ok(ctx)
    }

    /// Works on a device the caller opened (a game engine's, a renderer's, burn's), within the
    /// limits and features it was opened with: nothing more is asked for. Fails with
    /// [`Error::DeviceUnsuitable`] naming every limit or capability the kernels need that the
    /// device lacks. The caller's uncaptured-error handler stays in place; this crate's own
    /// operations run inside error scopes, so their errors still come back as typed
    /// [`Error`]s. The kernel family follows the adapter ([`KernelFamilyRequest::Auto`]); see
    /// [`GpuContext::from_device_with`] to force one. Tuning follows `COMPATTN_TUNE` and
    /// `COMPATTN_TUNE_CACHE` (a value other than `off`, `on` or `force` is an
    /// [`Error::InvalidConfig`]); [`GpuContext::set_tune_mode`] changes it. `COMPATTN_SUBGROUPS`,
    /// `COMPATTN_BOUNDS_CHECKS` and `COMPATTN_TEXEL_READS` apply as in
    /// [`GpuContext::from_adapter`], within the device's own limits and features.
    pub fn from_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<GpuContext> {
        Self::from_device_with(adapter, device, queue, KernelFamilyRequest::Auto)
    }

    /// [`GpuContext::from_device`] with an explicit kernel family.
    pub fn from_device_with(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        kernels: KernelFamilyRequest,
    ) -> Result<GpuContext> {
        let limits = device.limits();
        let tune = TuneMode::from_env()?;
        let ctx = Self::assemble(
            adapter.clone(),
            (device, queue),
            limits,
            None,
            Choices::from_env(kernels)?,
        );
        ctx.check_requirements()?;
        ctx.set_tune_mode(tune);
        ctx.set_tune_cache_path(default_cache_path());
        log::info!("using the caller's device on {}", ctx.describe());
        Ok(ctx)
    }

    fn assemble(
        adapter: wgpu::Adapter,
        (device, queue): (wgpu::Device, wgpu::Queue),
        limits: wgpu::Limits,
        uncaptured: Option<Arc<Mutex<Vec<String>>>>,
        choices: Choices,
    ) -> GpuContext {
        let info = adapter.get_info();
        // wgpu 30's WGSL front end takes subgroup operations without the `enable subgroups;`
        // directive that a browser's compiler requires, so only native back ends use them.
        let reduction = if cfg!(not(target_arch = "wasm32"))
            && choices.subgroups == SubgroupPolicy::WhereAvailable
            && device.features().contains(wgpu::Features::SUBGROUP)
            && info.backend != wgpu::Backend::BrowserWebGpu
        {
            Reduction::Subgroup
        } else {
            Reduction::Workgroup
        };
        // Read-only storage textures are WGSL's `readonly_and_readwrite_storage_textures`, which
        // naga takes and a browser may not; OpenGL reads no texel operands (`texel_loads_work`).
        // The texel GEMM's epilogue with dropout and the blocked core writing texels bind four
        // storage textures (WebGPU's default). Each format must allow read-only storage on the
        // adapter too (DX12 ties it to typed UAV loads).
        let read_only_storage = |format| {
            adapter
                .get_texture_format_features(format)
                .flags
                .contains(wgpu::TextureFormatFeatureFlags::STORAGE_READ_ONLY)
        };
        let storage_reads = cfg!(not(target_arch = "wasm32"))
            && choices.texel_reads == TexelReadPolicy::WhereAvailable
            && !matches!(
                info.backend,
                wgpu::Backend::BrowserWebGpu | wgpu::Backend::Gl
            )
            && limits.max_storage_textures_per_shader_stage >= 4;
        let storage_texel_reads = Precision::ALL
            .map(|precision| storage_reads && read_only_storage(precision.texel_format()));
        let serial = (info.backend == wgpu::Backend::Gl).then(|| futures::lock::Mutex::new(()));
        // Memory only and off until the constructor applies the options.
        let reads = match storage_texel_reads[0] {
            true => "storage",
            false => "sampled",
        };
        let tuning = TuningStore::new(&info, reads, TuneMode::Off, None);
        GpuContext {
            defer_compiles: false,
            inner: Arc::new(Inner {
                adapter,
                device,
                queue,
                info,
                limits,
                pipelines: PipelineCache::default(),
                uncaptured,
                serial,
                family_request: choices.kernels,
                lost: Arc::new(Mutex::new(None)),
                wait_timeout_ms: std::sync::atomic::AtomicU64::new(
                    DEFAULT_WAIT_TIMEOUT.as_millis() as u64,
                ),
                tuning,
                reduction,
                bounds_checks: choices.bounds_checks,
                storage_texel_reads,
            }),
        }
    }

    /// What every kernel variant of this device's family needs beyond WebGPU's guarantees for a
    /// device opened with lower limits (`wgpu::Limits::downlevel_defaults`, say): compute
    /// shaders, eight storage buffers per stage (WebGPU's default: the fused kernel splitting
    /// keys, with its keys and values bound apart, and the decode kernels), a 96-byte uniform
    /// block (the fused kernel's), a 256-invocation, 8 KiB tiled GEMM (and the blocked core's 8 KiB
    /// of shared scores), and in the CPU family with
    /// texel operands, three sampled textures (the blocked core's queries, keys and values) and
    /// two storage textures per stage (training's dropout epilogue writes two); the texel
    /// kernels read their operands as storage textures only where there are four
    /// ([`GpuContext::texel_read_for`]). Per-problem sizes (buffers, textures,
    /// workgroup counts) are checked when a plan is built.
    fn check_requirements(&self) -> Result<()> {
        let limits = &self.inner.limits;
        let mut missing = Vec::new();
        let downlevel = self.inner.adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            missing.push("compute shaders (wgpu::DownlevelFlags::COMPUTE_SHADERS)".to_string());
        }
        let mut need = vec![
            ("max_bind_groups", limits.max_bind_groups, 1),
            (
                "max_storage_buffers_per_shader_stage",
                limits.max_storage_buffers_per_shader_stage,
                8,
            ),
            (
                "max_compute_invocations_per_workgroup",
                limits.max_compute_invocations_per_workgroup,
                256,
            ),
            (
                "max_compute_workgroup_size_x",
                limits.max_compute_workgroup_size_x,
                64,
            ),
            (
                "max_compute_workgroup_size_y",
                limits.max_compute_workgroup_size_y,
                16,
            ),
            (
                "max_compute_workgroup_storage_size",
                limits.max_compute_workgroup_storage_size,
                8192,
            ),
            (
                "max_compute_workgroups_per_dimension",
                limits.max_compute_workgroups_per_dimension,
                1,
            ),
            (
                "max_uniform_buffer_binding_size",
                limits.max_uniform_buffer_binding_size.min(u32::MAX as u64) as u32,
                96,
            ),
        ];
        // The CPU family reads GEMM operands as texels where texel loads work
        // (`plan::OperandStorage::of_operands`).
        if self.cpu_kernels() && self.texel_loads_work() {
            need.extend([
                (
                    "max_sampled_textures_per_shader_stage",
                    limits.max_sampled_textures_per_shader_stage,
                    3,
                ),
                (
                    "max_storage_textures_per_shader_stage",
                    limits.max_storage_textures_per_shader_stage,
                    2,
                ),
            ]);
        }
        for (name, have, need) in need {
            if have < need {
                missing.push(format!("{name} ≥ {need} (the device has {have})"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::DeviceUnsuitable {
                adapter: self.describe(),
                missing: missing.join(", "),
            })
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter the device was opened on.
    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.inner.adapter
    }

    /// Name, backend and driver of the adapter.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The limits the device was opened with (what the kernels may rely on).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The most loop iterations one invocation may run, summed over all its loops, where the
    /// driver imposes such a cap; `None` where it does not.
    ///
    /// Mesa's gallivm (llvmpipe, lavapipe) guards against endless shaders with one counter per
    /// invocation that every loop iteration decrements, starting at 65 535; at zero every loop
    /// exits after one pass, silently. Kernels whose loops grow with the problem (the key loop
    /// of attention, the K loop of a GEMM) split their range over several dispatches so that
    /// each stays under this budget. CPU adapters get the cap whatever their driver: splitting
    /// costs little there, and SwiftShader's limits are not documented.
    pub fn loop_budget(&self) -> Option<u64> {
        let info = &self.inner.info;
        let gallivm = [&info.name, &info.driver]
            .iter()
            .any(|s| s.to_lowercase().contains("llvmpipe"));
        // A margin below 65 535 for loops the cost models do not count.
        (gallivm || info.device_type == wgpu::DeviceType::Cpu).then_some(48_000)
    }

    /// The kernel family asked for; [`GpuContext::cpu_kernels`] resolves it for this adapter.
    pub fn kernel_family_request(&self) -> KernelFamilyRequest {
        self.inner.family_request
    }

    /// The name [`GpuContext::kernel_family_request`] had before it was renamed.
    #[deprecated(note = "renamed kernel_family_request")]
    pub fn kernel_profile(&self) -> KernelFamilyRequest {
        self.kernel_family_request()
    }

    /// Whether the CPU-driver kernel family runs here: asked for, or `Auto` on a CPU adapter
    /// (lavapipe, llvmpipe, SwiftShader). `plan::KernelFamily::of` reads it.
    pub fn cpu_kernels(&self) -> bool {
        match self.inner.family_request {
            KernelFamilyRequest::Cpu => true,
            KernelFamilyRequest::Gpu => false,
            KernelFamilyRequest::Auto => self.inner.info.device_type == wgpu::DeviceType::Cpu,
        }
    }

    /// Whether compute shaders here read `rgba32float` array textures with `textureLoad`: not
    /// on wgpu's GL backend, where they returned zeros on llvmpipe. The plan stores GEMM
    /// operands as texels only where this holds (`plan::OperandStorage::of_operands`).
    pub fn texel_loads_work(&self) -> bool {
        self.inner.info.backend != wgpu::Backend::Gl
    }

    /// Whether the device is lost (see [`Error::DeviceLost`]). On a device this crate opened,
    /// wgpu's device-lost callback says so; on a caller's device (whose callback this crate
    /// leaves alone), the first readback that fails does.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.lock().map(|l| l.is_some()).unwrap_or(true)
    }

    /// Fails with [`Error::DeviceLost`] once the device is lost: every public operation checks
    /// this first, so nothing is submitted to, polled on or mapped from a lost device.
    pub(crate) fn check_alive(&self, operation: &str) -> Result<()> {
        let reason = match self.inner.lost.lock() {
            Ok(lost) => lost.clone(),
            Err(_) => Some("the device-loss record was poisoned".into()),
        };
        match reason {
            Some(reason) => Err(Error::DeviceLost {
                operation: operation.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Records that the device is lost, with `reason` (a failed map, say).
    pub(crate) fn mark_lost(&self, reason: &str) {
        if let Ok(mut lost) = self.inner.lost.lock()
            && lost.is_none()
        {
            *lost = Some(reason.to_string());
        }
    }

    /// The longest a wait on the GPU may take before it is an [`Error::Timeout`].
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.inner
                .wait_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets [`GpuContext::wait_timeout`] for every layer on this context.
    pub fn set_wait_timeout(&self, timeout: std::time::Duration) {
        self.inner.wait_timeout_ms.store(
            timeout.as_millis().clamp(1, u64::MAX as u128) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether plans on this context use tilings measured on its adapter ([`TuneMode`]).
    pub fn tune_mode(&self) -> TuneMode {
        self.inner.tuning.mode()
    }

    /// Sets [`GpuContext::tune_mode`] for every layer on this context from now on; workspaces
    /// already built keep their plans.
    pub fn set_tune_mode(&self, mode: TuneMode) {
        self.inner.tuning.set_mode(mode);
    }

    /// The file measured tilings are kept in between processes; `None`: memory only.
    pub fn tune_cache_path(&self) -> Option<std::path::PathBuf> {
        self.inner.tuning.path()
    }

    /// Sets [`GpuContext::tune_cache_path`] (`None`: memory only).
    pub fn set_tune_cache_path(&self, path: Option<std::path::PathBuf>) {
        self.inner.tuning.set_path(path);
    }

    /// The tilings this context holds, shape class → choice, as `compattn` reports them.
    pub fn tuned_choices(&self) -> std::collections::BTreeMap<String, String> {
        self.inner.tuning.entries()
    }

    pub(crate) fn tuning(&self) -> &TuningStore {
        &self.inner.tuning
    }

    /// Whether this crate opened the device (and installed its own uncaptured-error handler).
    pub fn owns_device(&self) -> bool {
        self.inner.uncaptured.is_some()
    }

    /// Whether the device can store in f16 (`shader-f16`, for
    /// [`Precision::F16`](crate::Precision::F16)).
    pub fn supports_f16(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    /// How row kernels reduce across a workgroup on this device: through subgroups where it has
    /// `wgpu::Features::SUBGROUP` on a native back end and [`SubgroupPolicy`] allows, else
    /// through workgroup memory.
    pub fn reduction(&self) -> Reduction {
        self.inner.reduction
    }

    /// How the texel kernels (the texel GEMM, the blocked core) read a texel matrix of
    /// `precision` on this device: as a read-only storage texture where [`TexelReadPolicy`]
    /// allows and the device has it, else as a sampled texture. Both read the same values.
    pub fn texel_read_for(&self, precision: Precision) -> TexelRead {
        let storage = match precision {
            Precision::F32 => self.inner.storage_texel_reads[0],
            Precision::F16 => self.inner.storage_texel_reads[1],
        };
        match storage {
            true => TexelRead::Storage(precision),
            false => TexelRead::Sampled,
        }
    }

    /// Whether `variant` is compiled without runtime bounds checks here: where its kernel is
    /// [`BoundsChecks::Proven`], the [`BoundsCheckPolicy`] allows, and the back end is native
    /// (a browser checks every access whatever it is asked).
    pub fn bounds_checks(&self, variant: &ShaderVariant) -> BoundsChecks {
        if cfg!(not(target_arch = "wasm32"))
            && variant.bounds_checks() == BoundsChecks::Proven
            && self.inner.bounds_checks == BoundsCheckPolicy::ProvenUnchecked
            && self.inner.info.backend != wgpu::Backend::BrowserWebGpu
        {
            BoundsChecks::Proven
        } else {
            BoundsChecks::Checked
        }
    }

    /// Whether GPU timestamps can time passes on this device.
    pub fn has_timestamps(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// "name (backend, device type)", for logs and reports.
    pub fn describe(&self) -> String {
        let info = &self.inner.info;
        let name = if info.name.is_empty() {
            "unnamed adapter"
        } else {
            &info.name
        };
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if driver.is_empty() {
            format!("{name} ({:?}, {:?})", info.backend, info.device_type)
        } else {
            format!(
                "{name} ({:?}, {:?}, driver {driver})",
                info.backend, info.device_type
            )
        }
    }

    /// Exclusive use of the device for one public operation, on backends that need it.
    ///
    /// wgpu's GL backend guards its single GL context with a lock that panics after six seconds
    /// of waiting, and on a CPU driver one shader compile or one wait for a long kernel holds it
    /// that long. Public entry points (layer construction, forward, benchmarks) take this guard
    /// first, so calls from several threads queue here instead. Other backends return `None`.
    /// Internal functions never take it, so it cannot be taken twice.
    pub(crate) async fn serial(&self) -> Option<futures::lock::MutexGuard<'_, ()>> {
        match &self.inner.serial {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    pub(crate) fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }

    /// The same device, through a handle whose dispatches leave pipelines not yet compiled for
    /// [`crate::gpu::dispatch::compile_pending`]: a workspace records every dispatch first, so
    /// that it knows how many pipelines it needs before it compiles one, and can report
    /// progress (a browser compiles for seconds on a first visit).
    pub(crate) fn deferring_compiles(&self) -> GpuContext {
        GpuContext {
            inner: self.inner.clone(),
            defer_compiles: true,
        }
    }

    /// See [`GpuContext::deferring_compiles`].
    pub(crate) fn defers_compiles(&self) -> bool {
        self.defer_compiles
    }

    /// Runs `work` inside validation, out-of-memory and internal error scopes and turns the first
    /// error caught into an [`Error`] that names `operation`.
    ///
    /// The scope guards are consumed before the first `.await`, so the returned future stays
    /// `Send` on native targets.
    pub(crate) async fn scoped<T>(
        &self,
        operation: &str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.check_alive(operation)?;
        let device = &self.inner.device;
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let value = work();
        let internal = internal.pop();
        let validation = validation.pop();
        let out_of_memory = out_of_memory.pop();
        let caught = [validation.await, out_of_memory.await, internal.await];
        if let Some(error) = caught.into_iter().flatten().next() {
            return Err(Error::from_wgpu(operation, error));
        }
        self.take_uncaptured(operation)?;
        value
    }

    /// [`GpuContext::scoped`] for synchronous callers (`encode`). On native targets wgpu reports
    /// errors as the work is recorded, so the popped scopes are ready at once. In a browser the
    /// scopes would resolve later, so none are pushed there: errors go to the device's
    /// uncaptured-error handler (this crate's records them for the next awaited call).
    pub(crate) fn scoped_now<T>(
        &self,
        operation: &str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = operation;
            work()
        }
        #[cfg(not(target_arch = "wasm32"))]
        pollster::block_on(self.scoped(operation, work))
    }

    /// Reports errors that escaped every scope (for example from a callback thread).
    fn take_uncaptured(&self, operation: &str) -> Result<()> {
        let Some(uncaptured) = &self.inner.uncaptured else {
            return Ok(());
        };
        let mut errors = uncaptured
            .lock()
            .map_err(|_| Error::Readback("error log poisoned".into()))?;
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.drain(..).collect::<Vec<_>>().join("; ");
        Err(Error::GpuValidation {
            operation: operation.to_string(),
            message,
        })
    }
}

async fn select_adapter(backends: wgpu::Backends, options: &GpuOptions) -> Result<wgpu::Adapter> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    // With WebGPU's limits, also hide what WebGPU would not expose (native-only features and
    // limits, adapters below WebGPU's baseline). Not for GL: no GL driver meets that baseline,
    // and GL is only reached when asked for or when nothing else exists.
    if options.limits == LimitsPolicy::WebGpuDefaults && !backends.contains(wgpu::Backends::GL) {
        descriptor.flags |= wgpu::InstanceFlags::STRICT_WEBGPU_COMPLIANCE;
    }
    let instance = wgpu::Instance::new(descriptor);
    if let Some(wanted) = &options.adapter_name {
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!("{} ({:?})", info.name, info.backend)
            })
            .collect();
        let wanted_lower = wanted.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lower))
            .ok_or_else(|| Error::NoAdapter {
                detail: Some(format!(
                    "named like {wanted:?} among backends {backends:?}; available: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )),
                hint: INSTALL_HINT,
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: options.power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter {
            detail: Some(format!("among backends {backends:?}: {e}")),
            hint: INSTALL_HINT,
        })
}

/// Every adapter on the given backends, for `compattn info`.
pub async fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
        .enumerate_adapters(backends)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::context;

    #[test]
    fn backend_names_are_checked() {
        assert_eq!(parse_backends("vulkan").unwrap(), wgpu::Backends::VULKAN);
        assert_eq!(
            parse_backends("Vulkan, gl").unwrap(),
            wgpu::Backends::VULKAN | wgpu::Backends::GL
        );
        assert!(matches!(
            parse_backends("vulkn"),
            Err(Error::InvalidConfig {
                field: "WGPU_BACKEND",
                ..
            })
        ));
    }

    #[test]
    fn validation_errors_become_typed_errors() {
        let ctx = context();
        let result = pollster::block_on(ctx.scoped("an oversized buffer", || {
            Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("too big"),
                size: ctx.limits().max_buffer_size + 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        }));
        match result {
            Err(Error::GpuValidation { operation, .. }) => {
                assert_eq!(operation, "an oversized buffer")
            }
            Err(Error::GpuOutOfMemory { .. }) => {}
            other => panic!("expected a validation error, got {other:?}"),
        }
        // The device is still usable afterwards.
        pollster::block_on(ctx.scoped("a valid buffer", || {
            Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }))
        }))
        .unwrap();
    }

    /// The row kernels reduce through subgroups exactly where the device has them, the back end
    /// is native and the policies allow (so lavapipe runs the subgroup path for real), and
    /// `SubgroupPolicy::Off` keeps the workgroup tree on the same adapter.
    #[test]
    fn subgroups_are_used_where_the_device_has_them() {
        let ctx = context();
        let expected = if ctx.adapter().features().contains(wgpu::Features::SUBGROUP)
            && ctx.info().backend != wgpu::Backend::BrowserWebGpu
            && LimitsPolicy::from_env().unwrap() == LimitsPolicy::Adapter
            && SubgroupPolicy::from_env().unwrap() == SubgroupPolicy::WhereAvailable
        {
            Reduction::Subgroup
        } else {
            Reduction::Workgroup
        };
        assert_eq!(ctx.reduction(), expected, "on {}", ctx.describe());
        // CI sets this on lavapipe, which has SUBGROUP: should wgpu stop offering it there, the
        // subgroup kernels would otherwise go untested without a failure.
        if std::env::var("COMPATTN_EXPECT_SUBGROUPS").is_ok_and(|v| v == "1") {
            assert_eq!(
                ctx.reduction(),
                Reduction::Subgroup,
                "on {}",
                ctx.describe()
            );
        }
        let choices = Choices {
            subgroups: SubgroupPolicy::Off,
            ..Choices::from_env(KernelFamilyRequest::Auto).unwrap()
        };
        let off = pollster::block_on(GpuContext::open(
            ctx.adapter().clone(),
            LimitsPolicy::from_env().unwrap(),
            choices,
        ))
        .unwrap();
        assert_eq!(off.reduction(), Reduction::Workgroup);
        assert!(!off.device().features().contains(wgpu::Features::SUBGROUP));
    }

    /// The texel kernels read storage textures exactly where the device allows, on lavapipe for
    /// real (the test says so if Vulkan stops offering it there), the `sampled` policy keeps
    /// sampled reads on the same adapter, and both give the same forward bit for bit through
    /// the texel GEMM and the blocked core: f32, and an f16 layer (`rgba16float` texels read as
    /// storage) where the device has f16. dim 42 (the reductions' last texel padded), a padded
    /// and a whole sequence, values of scale 3.
    #[test]
    fn texel_reads_are_storage_where_the_device_allows_and_read_the_same_values() {
        use crate::{CompositionalAttention, Config, Weights};
        let ctx = context();
        let native = matches!(
            ctx.info().backend,
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12
        );
        let sampled_policy = LimitsPolicy::from_env().unwrap() == LimitsPolicy::WebGpuDefaults
            || TexelReadPolicy::from_env().unwrap() == TexelReadPolicy::Sampled;
        if sampled_policy || !native {
            for precision in Precision::ALL {
                assert_eq!(ctx.texel_read_for(precision), TexelRead::Sampled);
            }
        } else if ctx.info().backend == wgpu::Backend::Vulkan {
            assert_eq!(
                ctx.texel_read_for(Precision::F32),
                TexelRead::Storage(Precision::F32),
                "on {}",
                ctx.describe()
            );
        }
        let open = |texel_reads| {
            let choices = Choices {
                texel_reads,
                ..Choices::from_env(KernelFamilyRequest::Cpu).unwrap()
            };
            pollster::block_on(GpuContext::open(
                ctx.adapter().clone(),
                LimitsPolicy::Adapter,
                choices,
            ))
            .unwrap()
        };
        let (storage, sampled) = (
            open(TexelReadPolicy::WhereAvailable),
            open(TexelReadPolicy::Sampled),
        );
        assert_eq!(sampled.texel_read_for(Precision::F32), TexelRead::Sampled);
        if ctx.info().backend == wgpu::Backend::Vulkan {
            assert_eq!(
                storage.texel_read_for(Precision::F32),
                TexelRead::Storage(Precision::F32),
                "on {}",
                storage.describe()
            );
        }
        let (mut rng, what) = crate::gpu::test_device::rng("texel reads");
        let config = Config::new(42)
            .dim_head(12)
            .num_searches(3)
            .num_retrievals(2);
        let weights = Weights::random(config, rng.next_u64()).unwrap();
        let (batch, seq) = (2, 37);
        let x = crate::testing::normal(&mut rng, batch * seq * 42, 3.0);
        let mask: Vec<bool> = (0..batch * seq).map(|i| i < seq + 20).collect();
        for precision in Precision::ALL {
            if precision == Precision::F16 && !storage.supports_f16() {
                continue;
            }
            let forward = |ctx: &GpuContext| {
                CompositionalAttention::with_precision(ctx, &weights, precision)
                    .and_then(|mut layer| layer.forward_blocking(&x, batch, seq, Some(&mask)))
                    .unwrap_or_else(|e| panic!("{what}: {precision}: {e}"))
            };
            let (a, b) = (forward(&storage), forward(&sampled));
            assert!(
                a.iter().chain(&b).all(|v| v.is_finite()),
                "{what}: {precision}"
            );
            let differ = a
                .iter()
                .zip(&b)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{what}: {precision}: {differ} outputs differ");
        }
        // The forward ran the texel kernels, reading as each context says.
        for ctx in [&storage, &sampled] {
            if !ctx.texel_loads_work() {
                continue;
            }
            let read = match ctx.texel_read_for(Precision::F32) {
                TexelRead::Sampled => "sampled",
                TexelRead::Storage(_) => "storagef32",
            };
            let labels: Vec<String> = ctx.pipelines().built().iter().map(|v| v.label()).collect();
            for (kernel, operands) in [
                ("gemm_texture", &["LhsTexels", "RhsTexels"][..]),
                (
                    "blocked_attention",
                    &["ProjTexels", "KeyTexels", "ValueTexels"][..],
                ),
            ] {
                let reads_so = |l: &&String| {
                    l.starts_with(kernel)
                        && operands.iter().all(|o| l.contains(&format!("_{o}{read}")))
                };
                assert!(
                    labels.iter().any(|l| reads_so(&l)),
                    "{what}: no {kernel} reading every operand {read} among {labels:?}"
                );
            }
        }
    }

    #[test]
    fn shader_compile_errors_are_reported_not_cached() {
        use crate::gpu::pipelines::{Kernel, ShaderVariant};
        static BROKEN: Kernel = Kernel {
            name: "broken",
            source: "@compute @workgroup_size(1) fn main() { let x: u32 = UNDEFINED; }",
            includes: &[],
            bounds_checks: crate::gpu::pipelines::BoundsChecks::Checked,
        };
        let ctx = context();
        for _ in 0..2 {
            let result = pollster::block_on(ctx.pipeline(&ShaderVariant::new(&BROKEN)));
            assert!(
                matches!(result, Err(Error::GpuValidation { .. })),
                "{result:?}"
            );
        }
    }
}
