//! Portability of every WGSL source the host submits, proven offline with naga.
//!
//! The sources are collected exactly as `compattn shaders` writes them
//! (`compositional_attention::shader_variants::collect_variants`): for both kernel families (CPU-driver
//! and GPU variants, whatever the adapter) and both limits policies (the adapter's and WebGPU's
//! defaults), so the set does not depend on `COMPATTN_LIMITS` or `COMPATTN_KERNELS`. Each variant
//! must then
//!
//! * parse and validate with naga at WebGPU's capabilities (no optional feature: no subgroups,
//!   no 64-bit types; `f16` only in the f16-storage variants, which declare `enable f16;` and
//!   are validated with exactly that capability added; subgroup operations only in the
//!   variants of `Reduction::Subgroup`, validated with the subgroup capabilities added, and
//!   only from a device opened with the adapter's limits, never WebGPU's defaults);
//! * translate with every naga back end wgpu uses, with the options wgpu's back ends pass: MSL
//!   (Metal 2.0 and 1.2), HLSL (DX12, shader models 5.1 and 6.0), SPIR-V 1.0 (Vulkan), GLSL ES
//!   3.10 and GLSL 4.30 (OpenGL ES and desktop OpenGL). The f16 variants translate where wgpu
//!   offers `shader-f16`: MSL, HLSL shader model 6.2 (DX12 with DXC) and SPIR-V; wgpu's GL
//!   backend never offers it, so they are not written as GLSL. The subgroup variants translate
//!   where wgpu offers `SUBGROUP`: MSL 2.1, HLSL shader model 6.0 and SPIR-V 1.3;
//! * fit the limits of the device it was specialised for and, where that device was opened with
//!   `LimitsPolicy::WebGpuDefaults`, WebGPU's default limits themselves: workgroup size,
//!   workgroup memory, buffers and textures per stage, bind groups.
//!
//! Metal and DX12 cannot run here; this is how they are tested. The last test also opens a device
//! through a `STRICT_WEBGPU_COMPLIANCE` instance and runs the layer there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use compositional_attention::gpu::pipelines::ShaderVariant;
use compositional_attention::plan::OperandStorage;
use compositional_attention::shader_variants::{self, collect_variants};
use compositional_attention::{
    GpuContext, GpuOptions, KernelFamilyRequest, LimitsPolicy, TuneMode,
};
use naga::back::{glsl, hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

/// One distinct WGSL text and the limits of every device it was specialised for.
struct Collected {
    variant: ShaderVariant,
    /// `(kernel family, limits policy, the device's limits)` for each context that compiled it.
    origins: Vec<(KernelFamilyRequest, LimitsPolicy, wgpu::Limits)>,
}

/// Every variant, by label, for both kernel families under both limits policies.
fn variants() -> &'static BTreeMap<String, Collected> {
    static VARIANTS: OnceLock<BTreeMap<String, Collected>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        let problems = shader_variants::representative_problems();
        let mut all: BTreeMap<String, Collected> = BTreeMap::new();
        for limits in [LimitsPolicy::Adapter, LimitsPolicy::WebGpuDefaults] {
            for kernels in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
                let options = GpuOptions {
                    limits,
                    kernels,
                    tune: TuneMode::Off,
                    tune_cache: None,
                    ..GpuOptions::from_env().expect("GPU options from the environment")
                };
                let ctx = pollster::block_on(GpuContext::new(&options))
                    .unwrap_or_else(|e| panic!("these tests need a GPU adapter: {e}"));
                let found =
                    pollster::block_on(collect_variants(&ctx, &problems)).unwrap_or_else(|e| {
                        panic!("collecting variants ({kernels:?}, {limits:?}) failed: {e}")
                    });
                eprintln!(
                    "{kernels:?} kernels, {limits:?} limits on {}: {} variants",
                    ctx.describe(),
                    found.len()
                );
                for variant in found {
                    all.entry(variant.label())
                        .or_insert_with(|| Collected {
                            variant,
                            origins: Vec::new(),
                        })
                        .origins
                        .push((kernels, limits, ctx.limits().clone()));
                }
            }
        }
        all
    })
}

/// Parses and validates a variant with WebGPU's capabilities (plus subgroups for the variants of
/// `Reduction::Subgroup`).
fn parse_variant(
    label: &str,
    variant: &ShaderVariant,
) -> Result<(naga::Module, ModuleInfo), String> {
    parse_with(label, &variant.wgsl(), variant.uses_subgroups())
}

/// Parses and validates WGSL with WebGPU's capabilities.
fn parse(label: &str, wgsl: &str) -> Result<(naga::Module, ModuleInfo), String> {
    parse_with(label, wgsl, false)
}

fn parse_with(
    label: &str,
    wgsl: &str,
    subgroups: bool,
) -> Result<(naga::Module, ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(wgsl)
        .map_err(|e| format!("{label}: WGSL parse: {}", e.emit_to_string(wgsl)))?;
    // The default capabilities are WebGPU's core (multisampled shading and cube-map arrays):
    // anything optional (f16, subgroups, f64, 64-bit integers) fails validation. The f16
    // variants get `shader-f16`'s capability and nothing more.
    let mut capabilities = if wgsl.starts_with("enable f16;") {
        Capabilities::default() | Capabilities::SHADER_FLOAT16
    } else {
        Capabilities::default()
    };
    if subgroups {
        capabilities |= Capabilities::SUBGROUP;
    }
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| format!("{label}: naga validation: {}", e.emit_to_string(wgsl)))?;
    Ok((module, info))
}

/// The bounds checks wgpu's Metal, Vulkan and DX12 back ends ask for when the shader module is
/// checked (`create_shader_module`, as the host uses); like the host, no back end is asked to
/// zero-fill workgroup memory (`zero_initialize_workgroup_memory: false`).
fn bounds_checks() -> BoundsCheckPolicies {
    BoundsCheckPolicies {
        index: BoundsCheckPolicy::Restrict,
        buffer: BoundsCheckPolicy::Restrict,
        image_load: BoundsCheckPolicy::Restrict,
        binding_array: BoundsCheckPolicy::Unchecked,
    }
}

/// The single compute entry point every kernel has.
const ENTRY: &str = "main";

/// MSL at `lang_version`, then at 1.2 (macOS 10.12) as the floor where `floor`: wgpu writes the
/// newest version the OS has.
fn to_msl(
    module: &naga::Module,
    info: &ModuleInfo,
    lang_version: (u8, u8),
    floor: bool,
) -> Result<(), String> {
    let options = msl::Options {
        lang_version,
        bounds_check_policies: bounds_checks(),
        zero_initialize_workgroup_memory: false,
        ..msl::Options::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, ENTRY.into())),
        ..msl::PipelineOptions::default()
    };
    msl::write_string(module, info, &options, &pipeline)
        .map_err(|e| format!("{e}"))
        .and_then(|(text, _)| nonempty(&text))?;
    if !floor {
        return Ok(());
    }
    let floor = msl::Options {
        lang_version: (1, 2),
        ..options
    };
    msl::write_string(module, info, &floor, &pipeline)
        .map(|_| ())
        .map_err(|e| format!("MSL 1.2: {e}"))
}

fn to_hlsl(
    module: &naga::Module,
    info: &ModuleInfo,
    shader_model: hlsl::ShaderModel,
) -> Result<(), String> {
    let options = hlsl::Options {
        shader_model,
        zero_initialize_workgroup_memory: false,
        ..hlsl::Options::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, ENTRY.into())),
    };
    let mut text = String::new();
    hlsl::Writer::new(&mut text, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| format!("{e}"))?;
    nonempty(&text)
}

/// SPIR-V at `lang_version`: 1.0 is what wgpu emits without optional features, 1.3 with
/// subgroups.
fn to_spirv(
    module: &naga::Module,
    info: &ModuleInfo,
    lang_version: (u8, u8),
) -> Result<(), String> {
    let words = spirv(module, info, lang_version)?;
    if words.first() == Some(&0x0723_0203) {
        Ok(())
    } else {
        Err("no SPIR-V magic number in the output".into())
    }
}

/// GLSL as wgpu's GL backend writes it: buffer and index checks are left to GLSL (Unchecked), and
/// image loads are checked only on desktop GL 4.3+, since the level check needs
/// `textureQueryLevels`, which OpenGL ES lacks.
fn to_glsl(module: &naga::Module, info: &ModuleInfo, version: glsl::Version) -> Result<(), String> {
    let image_load = match version {
        glsl::Version::Desktop(v) if v >= 430 => BoundsCheckPolicy::ReadZeroSkipWrite,
        _ => BoundsCheckPolicy::Unchecked,
    };
    let policies = BoundsCheckPolicies {
        index: BoundsCheckPolicy::Unchecked,
        buffer: BoundsCheckPolicy::Unchecked,
        image_load,
        binding_array: BoundsCheckPolicy::Unchecked,
    };
    let options = glsl::Options {
        version,
        zero_initialize_workgroup_memory: false,
        ..glsl::Options::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: ENTRY.into(),
        multiview: None,
    };
    let mut text = String::new();
    glsl::Writer::new(&mut text, module, info, &options, &pipeline, policies)
        .and_then(|mut writer| writer.write().map(|_| ()))
        .map_err(|e| format!("{e}"))?;
    nonempty(&text)
}

fn nonempty(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        Err("empty output".into())
    } else {
        Ok(())
    }
}

/// Runs `check` on every variant and fails with every failure listed (label and back end).
fn for_every_variant(what: &str, check: impl Fn(&str, &naga::Module, &ModuleInfo) -> Vec<String>) {
    let variants = variants();
    assert!(!variants.is_empty(), "no variants were collected");
    let mut failures = Vec::new();
    for (label, collected) in variants {
        match parse_variant(label, &collected.variant) {
            Ok((module, info)) => failures.extend(check(label, &module, &info)),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants failed {what}:\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n")
    );
}

#[test]
fn every_variant_parses_and_validates_with_webgpu_capabilities() {
    for_every_variant("WGSL validation", |_, module, _| {
        let mut failures = Vec::new();
        if module.entry_points.len() != 1
            || module.entry_points[0].name != ENTRY
            || module.entry_points[0].stage != naga::ShaderStage::Compute
        {
            failures.push(format!(
                "expected exactly one compute entry point `{ENTRY}`, found {:?}",
                module
                    .entry_points
                    .iter()
                    .map(|e| (&e.name, e.stage))
                    .collect::<Vec<_>>()
            ));
        }
        failures
    });
}

/// The SPIR-V words of a validated module as wgpu's Vulkan back end asks for them, without
/// debug information (so the same module from two texts gives the same words).
fn spirv(
    module: &naga::Module,
    info: &ModuleInfo,
    lang_version: (u8, u8),
) -> Result<Vec<u32>, String> {
    let options = spv::Options {
        lang_version,
        bounds_check_policies: bounds_checks(),
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: ENTRY.into(),
    };
    spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("{e}"))
}

/// [`spirv`] of WGSL text: 1.0, or 1.3 with subgroups.
fn spirv_words(label: &str, wgsl: &str, subgroups: bool) -> Result<Vec<u32>, String> {
    let (module, info) = parse_with(label, wgsl, subgroups)?;
    let lang_version = if subgroups { (1, 3) } else { (1, 0) };
    spirv(&module, &info, lang_version).map_err(|e| format!("{label}: {e}"))
}

/// What a wasm32 build embeds (`shader_variants::stripped_wgsl`, applied by `build.rs`: no
/// comments, indentation or blank lines, for the npm package's size budget) is the same program:
/// every variant, stripped, validates and translates to the same SPIR-V words as written.
#[test]
fn every_variant_stripped_as_a_wasm_build_embeds_it_is_the_same_program() {
    let variants = variants();
    let mut failures = Vec::new();
    let (mut written, mut embedded) = (0, 0);
    for (label, collected) in variants {
        let wgsl = collected.variant.wgsl();
        let stripped = shader_variants::stripped_wgsl(&wgsl);
        written += wgsl.len();
        embedded += stripped.len();
        let subgroups = collected.variant.uses_subgroups();
        match (
            spirv_words(label, &wgsl, subgroups),
            spirv_words(label, &stripped, subgroups),
        ) {
            (Ok(a), Ok(b)) if a == b => {}
            (Ok(_), Ok(_)) => failures.push(format!("{label}: stripping changed the SPIR-V")),
            (Err(e), _) | (_, Err(e)) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The stripping does what it is for.
    assert!(
        2 * embedded < written + written / 4,
        "stripped {embedded} of {written} bytes"
    );
}

/// Whether the module stores f16 (a variant of `Precision::F16`): an f16 type, or a conversion
/// to f16 (a store to `rgba16float` texel rows rounds through `vec4<f16>`, a conversion that
/// names no type).
fn uses_f16(module: &naga::Module) -> bool {
    let f16_type = module.types.iter().any(|(_, ty)| {
        matches!(
            ty.inner,
            naga::TypeInner::Scalar(naga::Scalar::F16)
                | naga::TypeInner::Vector {
                    scalar: naga::Scalar::F16,
                    ..
                }
        )
    });
    let to_f16 = |function: &naga::Function| {
        function.expressions.iter().any(|(_, expression)| {
            matches!(
                expression,
                naga::Expression::As {
                    kind: naga::ScalarKind::Float,
                    convert: Some(2),
                    ..
                }
            )
        })
    };
    f16_type
        || module
            .functions
            .iter()
            .any(|(_, function)| to_f16(function))
        || module
            .entry_points
            .iter()
            .any(|entry| to_f16(&entry.function))
}

#[test]
fn every_variant_translates_to_msl_hlsl_spirv_and_glsl() {
    for_every_variant("translation", |label, module, info| {
        let failed = |results: Vec<(&str, Result<(), String>)>| -> Vec<String> {
            results
                .into_iter()
                .filter_map(|(back_end, result)| {
                    result.err().map(|e| format!("{label}: {back_end}: {e}"))
                })
                .collect()
        };
        if variants()[label].variant.uses_subgroups() {
            // Where wgpu offers subgroups: Metal 2.1 (simdgroup functions), DX12 shader model
            // 6.0 (wave intrinsics; 6.2 with f16), Vulkan 1.1 (SPIR-V 1.3's group operations).
            let model = if uses_f16(module) {
                hlsl::ShaderModel::V6_2
            } else {
                hlsl::ShaderModel::V6_0
            };
            return failed(vec![
                ("MSL 2.1", to_msl(module, info, (2, 1), false)),
                ("HLSL SM 6.0/6.2", to_hlsl(module, info, model)),
                ("SPIR-V 1.3", to_spirv(module, info, (1, 3))),
            ]);
        }
        if uses_f16(module) {
            // Where wgpu offers shader-f16: Metal, DX12 with DXC (shader model 6.2), Vulkan.
            let results = [
                ("MSL", to_msl(module, info, (2, 0), true)),
                (
                    "HLSL SM 6.2",
                    to_hlsl(module, info, hlsl::ShaderModel::V6_2),
                ),
                ("SPIR-V", to_spirv(module, info, (1, 0))),
            ];
            return results
                .into_iter()
                .filter_map(|(back_end, result)| {
                    result.err().map(|e| format!("{label}: {back_end}: {e}"))
                })
                .collect();
        }
        let results = [
            // Metal 2.0 (macOS 10.13, iOS 11) and the 1.2 floor.
            ("MSL", to_msl(module, info, (2, 0), true)),
            (
                "HLSL SM 5.1",
                to_hlsl(module, info, hlsl::ShaderModel::V5_1),
            ),
            (
                "HLSL SM 6.0",
                to_hlsl(module, info, hlsl::ShaderModel::V6_0),
            ),
            ("SPIR-V", to_spirv(module, info, (1, 0))),
            // OpenGL ES 3.1 (the first with compute shaders; Android, ANGLE) and desktop
            // OpenGL 4.3 (Mesa's llvmpipe, with image bounds checks).
            (
                "GLSL ES 3.10",
                to_glsl(module, info, glsl::Version::new_gles(310)),
            ),
            (
                "GLSL 4.30",
                to_glsl(module, info, glsl::Version::Desktop(430)),
            ),
        ];
        results
            .into_iter()
            .filter_map(|(back_end, result)| {
                result.err().map(|e| format!("{label}: {back_end}: {e}"))
            })
            .collect()
    });
}

/// What one variant needs of the device's limits, from its naga module.
#[derive(Debug, Default)]
struct Needs {
    workgroup_size: [u32; 3],
    /// Bytes, each variable rounded up to 16 as WebGPU counts them.
    workgroup_storage: u32,
    storage_buffers: u32,
    uniform_buffers: u32,
    sampled_textures: u32,
    storage_textures: u32,
    samplers: u32,
    max_group: u32,
    max_binding: u32,
}

fn needs(module: &naga::Module, info: &ModuleInfo) -> Result<Needs, String> {
    let entry = &module.entry_points[0];
    let uses = info.get_entry_point(0);
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| format!("layout: {e}"))?;
    let mut needs = Needs {
        workgroup_size: entry.workgroup_size,
        ..Needs::default()
    };
    for (handle, global) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue; // wgpu's derived layout leaves out what the entry point does not use
        }
        match global.space {
            naga::AddressSpace::WorkGroup => {
                needs.workgroup_storage += layouter[global.ty].size.next_multiple_of(16);
            }
            naga::AddressSpace::Storage { .. } => needs.storage_buffers += 1,
            naga::AddressSpace::Uniform => needs.uniform_buffers += 1,
            naga::AddressSpace::Handle => match module.types[global.ty].inner {
                naga::TypeInner::Image {
                    class: naga::ImageClass::Storage { .. },
                    ..
                } => needs.storage_textures += 1,
                naga::TypeInner::Image { .. } => needs.sampled_textures += 1,
                naga::TypeInner::Sampler { .. } => needs.samplers += 1,
                ref other => return Err(format!("unexpected handle type {other:?}")),
            },
            _ => {}
        }
        if let Some(binding) = &global.binding {
            needs.max_group = needs.max_group.max(binding.group);
            needs.max_binding = needs.max_binding.max(binding.binding);
        }
    }
    Ok(needs)
}

/// Every way `needs` exceeds `limits`.
fn exceeded(needs: &Needs, limits: &wgpu::Limits) -> Vec<String> {
    let [x, y, z] = needs.workgroup_size;
    let checks = [
        (
            "max_compute_invocations_per_workgroup",
            x * y * z,
            limits.max_compute_invocations_per_workgroup,
        ),
        (
            "max_compute_workgroup_size_x",
            x,
            limits.max_compute_workgroup_size_x,
        ),
        (
            "max_compute_workgroup_size_y",
            y,
            limits.max_compute_workgroup_size_y,
        ),
        (
            "max_compute_workgroup_size_z",
            z,
            limits.max_compute_workgroup_size_z,
        ),
        (
            "max_compute_workgroup_storage_size",
            needs.workgroup_storage,
            limits.max_compute_workgroup_storage_size,
        ),
        (
            "max_storage_buffers_per_shader_stage",
            needs.storage_buffers,
            limits.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_uniform_buffers_per_shader_stage",
            needs.uniform_buffers,
            limits.max_uniform_buffers_per_shader_stage,
        ),
        (
            "max_sampled_textures_per_shader_stage",
            needs.sampled_textures,
            limits.max_sampled_textures_per_shader_stage,
        ),
        (
            "max_storage_textures_per_shader_stage",
            needs.storage_textures,
            limits.max_storage_textures_per_shader_stage,
        ),
        (
            "max_samplers_per_shader_stage",
            needs.samplers,
            limits.max_samplers_per_shader_stage,
        ),
        (
            "max_bind_groups",
            needs.max_group + 1,
            limits.max_bind_groups,
        ),
        (
            "max_bindings_per_bind_group",
            needs.max_binding + 1,
            limits.max_bindings_per_bind_group,
        ),
    ];
    checks
        .into_iter()
        .filter(|&(_, need, limit)| need > limit)
        .map(|(name, need, limit)| format!("{name}: needs {need}, limit {limit}"))
        .collect()
}

#[test]
fn every_variant_fits_its_device_and_webgpu_variants_fit_webgpu_defaults() {
    let webgpu = wgpu::Limits::default();
    for_every_variant("the limits check", |label, module, info| {
        let needs = match needs(module, info) {
            Ok(needs) => needs,
            Err(e) => return vec![format!("{label}: {e}")],
        };
        let collected = &variants()[label];
        let mut failures = Vec::new();
        for (kernels, policy, limits) in &collected.origins {
            for e in exceeded(&needs, limits) {
                failures.push(format!(
                    "{label} ({kernels:?}, {policy:?}): the device's {e}"
                ));
            }
            if *policy == LimitsPolicy::WebGpuDefaults {
                if collected.variant.uses_subgroups() {
                    failures.push(format!(
                        "{label} ({kernels:?}, {policy:?}): subgroups under WebGPU's defaults"
                    ));
                }
                for e in exceeded(&needs, &webgpu) {
                    failures.push(format!(
                        "{label} ({kernels:?}, {policy:?}): WebGPU's default {e}"
                    ));
                }
            }
        }
        failures
    });
}

/// Kernels in `shaders/` that the layer never compiles on this backend, so no problem can reach
/// them: the CPU family reads its operands as texels (`gemm_texture`, `texture_copy`,
/// `blocked_attention`, `retrieval_mix`) wherever it can and falls back to buffers (`gemm`, the
/// fused kernel) where it cannot (`plan::OperandStorage::of_operands`: the GL backend); the GPU family
/// uses `gemm_tiled`; training's chunked core likewise has texel kernels and buffer kernels
/// (`ops::attention_chunk_texels`, `ops::attention_chunks`). `dropout_mask` is the dropout
/// generator's test kernel (`ops::dropout_mask`): training draws its masks inline.
fn not_used_by_the_layer() -> &'static [&'static str] {
    let options = GpuOptions {
        kernels: KernelFamilyRequest::Cpu,
        tune: TuneMode::Off,
        tune_cache: None,
        ..GpuOptions::from_env().expect("GPU options from the environment")
    };
    let ctx = pollster::block_on(GpuContext::new(&options)).expect("a GPU adapter");
    if OperandStorage::of_operands(&ctx) == OperandStorage::Texels {
        // Training's chunked core reads texels here; its buffer kernels run where texel loads
        // do not work (GL).
        &[
            "gemm",
            "dropout_mask",
            "search_chunk_softmax",
            "search_chunk_backward",
        ]
    } else {
        &[
            "dropout_mask",
            "search_chunk_softmax_texels",
            "gemm_texture",
            "gemv_texture",
            "texture_copy",
            "blocked_attention",
            "retrieval_mix",
        ]
    }
}

/// Every io piece in `shaders/io/` (an operand's declaration in one storage) is placed before
/// some kernel by some representative problem, except the texel pieces, the texel GEMM's and
/// the blocked core's output pieces where the CPU family reads buffers (GL), and the carry and fused-texel pieces where no
/// driver loop cap splits keys or limits the blocked core.
#[test]
fn the_representative_problems_reach_every_io_piece() {
    let options = GpuOptions {
        kernels: KernelFamilyRequest::Cpu,
        tune: TuneMode::Off,
        tune_cache: None,
        ..GpuOptions::from_env().expect("GPU options from the environment")
    };
    let ctx = pollster::block_on(GpuContext::new(&options)).expect("a GPU adapter");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shaders")
        .join("io");
    let pieces: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            (path.extension()? == "wgsl").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    let reached: BTreeSet<&str> = variants()
        .values()
        .flat_map(|c| c.variant.piece_names())
        .collect();
    let excused = |piece: &str| {
        // gemm_out_* are pieces of gemm_texture, blocked_out_* of the blocked core, which only
        // texel operands use.
        ((piece.contains("texels")
            || piece.starts_with("gemm_out")
            || piece.starts_with("blocked_out"))
            && OperandStorage::of_operands(&ctx) != OperandStorage::Texels)
            // Without a loop cap the blocked core covers every texel problem, and no key split
            // needs a carry.
            || (matches!(piece, "fused_carry" | "fused_texels") && ctx.loop_budget().is_none())
    };
    let missed: Vec<&String> = pieces
        .iter()
        .filter(|p| !reached.contains(p.as_str()) && !excused(p))
        .collect();
    assert!(
        missed.is_empty(),
        "no representative problem places {missed:?} (reached: {reached:?}); extend \
         shader_variants::representative_problems"
    );
}

#[test]
fn the_representative_problems_reach_every_kernel_in_both_families() {
    let not_used = not_used_by_the_layer();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let kernels: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            (path.extension()? == "wgsl").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    assert!(!kernels.is_empty(), "no kernels in {}", dir.display());
    let reached = |profile: KernelFamilyRequest| -> BTreeSet<&'static str> {
        variants()
            .values()
            .filter(|c| c.origins.iter().any(|(k, _, _)| *k == profile))
            .map(|c| c.variant.kernel_name())
            .collect()
    };
    let (cpu, gpu) = (
        reached(KernelFamilyRequest::Cpu),
        reached(KernelFamilyRequest::Gpu),
    );
    let missed: Vec<&String> = kernels
        .iter()
        .filter(|k| {
            !cpu.contains(k.as_str())
                && !gpu.contains(k.as_str())
                && !not_used.contains(&k.as_str())
        })
        .collect();
    assert!(
        missed.is_empty(),
        "no representative problem compiles {missed:?} (the cpu family reached {cpu:?}, the gpu \
         family {gpu:?}): extend shader_variants::representative_problems, or list a kernel the layer \
         never uses in not_used_by_the_layer"
    );
    // The two families really differ (the forced profile took effect).
    for profile in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
        assert!(
            variants()
                .values()
                .any(|c| c.origins.iter().all(|(k, _, _)| *k == profile)),
            "no variant is specific to the {profile:?} family"
        );
    }
}

#[test]
fn labels_are_file_names_and_identify_the_text() {
    let mut by_text: BTreeMap<String, &str> = BTreeMap::new();
    for (label, collected) in variants() {
        assert!(
            label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label {label:?} is not a plain file name"
        );
        if let Some(other) = by_text.insert(collected.variant.wgsl(), label) {
            panic!("{label} and {other} have the same WGSL text");
        }
    }
}

#[test]
fn the_checks_reject_what_webgpu_forbids() {
    // An optional feature fails validation at WebGPU's core capabilities: subgroups, and f16
    // without its `enable f16;` (only a variant that declares it gets the capability).
    let subgroups = "@compute @workgroup_size(1) fn main() { let x = subgroupAdd(1.0); }";
    assert!(
        parse("subgroups", subgroups).is_err(),
        "subgroups passed validation"
    );
    let f16 = "@compute @workgroup_size(1) fn main() { var x: f16 = 1.0h; x += 1.0h; }";
    assert!(
        parse("f16", f16).is_err(),
        "undeclared f16 passed validation"
    );
    let declared = format!("enable f16;\n{f16}");
    assert!(
        parse("f16", &declared).is_ok(),
        "declared f16 failed validation"
    );
    // Oversized workgroups and workgroup memory exceed WebGPU's defaults.
    let big = "var<workgroup> tile: array<f32, 4097>;\n\
               @compute @workgroup_size(16, 32) fn main(@builtin(local_invocation_index) i: u32) \
               { tile[i] = 1.0; }";
    let (module, info) = parse("big", big).unwrap();
    let needs = needs(&module, &info).unwrap();
    assert_eq!(needs.workgroup_storage, 16400);
    let failures = exceeded(&needs, &wgpu::Limits::default());
    assert!(
        failures.len() == 2
            && failures[0].starts_with("max_compute_invocations_per_workgroup")
            && failures[1].starts_with("max_compute_workgroup_storage_size"),
        "{failures:?}"
    );
    // Nine storage buffers are one too many.
    let buffers: String = (0..9)
        .map(|i| format!("@group(0) @binding({i}) var<storage, read_write> b{i}: array<f32>;\n"))
        .collect();
    let uses: String = (0..9).map(|i| format!("b{i}[0] = 1.0; ")).collect();
    let nine = format!("{buffers}@compute @workgroup_size(64) fn main() {{ {uses} }}");
    let (module, info) = parse("nine", &nine).unwrap();
    let failures = exceeded(&needs_of(&module, &info), &wgpu::Limits::default());
    assert_eq!(
        failures,
        ["max_storage_buffers_per_shader_stage: needs 9, limit 8"]
    );
}

fn needs_of(module: &naga::Module, info: &ModuleInfo) -> Needs {
    needs(module, info).unwrap()
}

/// wgpu 30 can also filter adapters and features to what the WebGPU specification defines
/// (`InstanceFlags::STRICT_WEBGPU_COMPLIANCE`: no native-only features, no native-only limits,
/// adapters without WebGPU's downlevel capabilities hidden). A device opened that way, with
/// WebGPU's default limits, compiles every variant and computes the layer correctly.
///
/// wgpu never counts its GL backend as WebGPU-compliant (llvmpipe lacks several downlevel
/// flags), so GL is left out; with `WGPU_BACKEND=gl` alone, or where no adapter passes the
/// check, the test says so and returns.
#[test]
fn a_strict_webgpu_instance_compiles_and_runs_every_variant() {
    use compositional_attention::testing::{self, ErrorStats};
    use compositional_attention::{CompositionalAttention, Config, reference};

    let options = GpuOptions::from_env().unwrap();
    let backends = options.backends.unwrap_or(wgpu::Backends::PRIMARY) - wgpu::Backends::GL;
    if backends.is_empty() {
        eprintln!("skipped: wgpu's GL backend is never WebGPU-compliant");
        return;
    }
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    descriptor.flags |= wgpu::InstanceFlags::STRICT_WEBGPU_COMPLIANCE;
    let instance = wgpu::Instance::new(descriptor);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let wanted = options.adapter_name.as_deref().map(str::to_lowercase);
    let Some(adapter) = adapters.into_iter().find(|a| {
        wanted
            .as_ref()
            .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
    }) else {
        eprintln!("skipped: no adapter on {backends:?} passes wgpu's WebGPU compliance check");
        return;
    };
    let problems = shader_variants::representative_problems();
    for kernels in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
        let ctx = pollster::block_on(GpuContext::from_adapter(
            adapter.clone(),
            LimitsPolicy::WebGpuDefaults,
            kernels,
        ))
        .unwrap_or_else(|e| panic!("opening a strict WebGPU device failed: {e}"));
        ctx.set_tune_mode(TuneMode::Off);
        let found = pollster::block_on(collect_variants(&ctx, &problems))
            .unwrap_or_else(|e| panic!("{kernels:?} kernels on a strict WebGPU device: {e}"));
        eprintln!(
            "strict WebGPU instance, {kernels:?} kernels on {}: {} variants",
            ctx.describe(),
            found.len()
        );
        for variant in &found {
            assert!(
                variants().contains_key(&variant.label()),
                "{} compiled on the strict device but not in the collected set",
                variant.label()
            );
        }

        let seed = testing::test_seed();
        let config = Config::new(40)
            .dim_head(10)
            .num_searches(3)
            .num_retrievals(2)
            .causal(true);
        let (weights, input) =
            testing::random_problem(config, 2, 37, Some(&[37, 5]), 1.0, seed).unwrap();
        let expected =
            reference::forward(&weights, &input.x, 2, 37, input.mask.as_deref()).unwrap();
        let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
        let y = pollster::block_on(layer.forward_input(&input)).unwrap();
        let stats = ErrorStats::compare(&y, &expected);
        assert!(
            stats.within(1e-4),
            "{kernels:?} kernels on a strict WebGPU device: {stats} (reproduce with \
             COMPATTN_SEED={seed})"
        );
    }
}

/// The binary operators of WGSL's expression grammar, longest first.
const BINARY_OPERATORS: [&str; 18] = [
    "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+", "-", "*", "/", "%", "<", ">", "&", "|",
    "^",
];

/// The places in `wgsl` where a bitwise `&`, `|` or `^` stands beside another binary operator
/// with no parentheses between them, as `a | b <= c`: WGSL's grammar makes a bitwise
/// expression's operands unary expressions, so Tint (Chrome) and WebKit reject the module,
/// where naga parses it with C's precedence and every native test passes.
fn unparenthesised_bitwise(wgsl: &str) -> Vec<String> {
    let code: String = wgsl
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    // Template lists (`vec4<u32>`, `array<f32, 4>`) are not comparisons: drop them first.
    let mut text = code;
    loop {
        let mut out = String::with_capacity(text.len());
        let mut changed = false;
        let mut rest = text.as_str();
        while let Some(open) = rest.find('<') {
            let word_start = rest[..open]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let word = &rest[word_start..open];
            let typed = [
                "vec", "mat", "array", "ptr", "texture_", "atomic", "bitcast",
            ]
            .iter()
            .any(|p| word.starts_with(p));
            let close = rest[open + 1..]
                .find(|c: char| "<>();".contains(c))
                .map(|i| open + 1 + i);
            match close {
                Some(close) if typed && rest.as_bytes()[close] == b'>' => {
                    out.push_str(&rest[..open]);
                    rest = &rest[close + 1..];
                    changed = true;
                }
                _ => {
                    out.push_str(&rest[..open + 1]);
                    rest = &rest[open + 1..];
                }
            }
        }
        out.push_str(rest);
        text = out;
        if !changed {
            break;
        }
    }
    let mut failures = Vec::new();
    let mut levels: Vec<BTreeSet<&str>> = vec![BTreeSet::new()];
    let check = |ops: &BTreeSet<&str>, failures: &mut Vec<String>, at: usize| {
        if ops.iter().any(|op| matches!(*op, "&" | "|" | "^")) && ops.len() > 1 {
            let line = text[..at].matches('\n').count() + 1;
            failures.push(format!("line {line}: {ops:?} without parentheses"));
        }
    };
    // Whether the previous token ends an operand (so an operator after it is binary).
    let mut after_operand = false;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || bytes[i] == b'.')
            {
                i += 1;
            }
            after_operand = &text[start..i] != "return";
            continue;
        }
        if "([{".contains(c) {
            levels.push(BTreeSet::new());
            after_operand = false;
        } else if ")]}".contains(c) {
            if levels.len() > 1 {
                let ops = levels.pop().unwrap_or_default();
                check(&ops, &mut failures, i);
            }
            after_operand = c != '}';
        } else if ";,=:".contains(c) && !text[i..].starts_with("==") {
            let ops = std::mem::take(levels.last_mut().expect("a level"));
            check(&ops, &mut failures, i);
            after_operand = false;
        } else if let Some(op) = BINARY_OPERATORS
            .iter()
            .find(|op| text[i..].starts_with(**op))
        {
            if after_operand && !text[i..].starts_with("->") {
                levels.last_mut().expect("a level").insert(op);
            }
            after_operand = false;
            i += op.len();
            continue;
        } else if !c.is_whitespace() {
            after_operand = false;
        }
        i += 1;
    }
    failures
}

#[test]
fn every_kernel_parenthesises_its_bitwise_operators_as_wgsl_requires() {
    // The checker itself: what Tint rejects, and what it accepts.
    for bad in [
        "let a = b | c <= d;",
        "let a = x & 3u + 1u;",
        "return u & (v | k <= w);",
    ] {
        assert!(!unparenthesised_bitwise(bad).is_empty(), "missed {bad}");
    }
    for good in [
        "let a = b | (c <= d);",
        "let a = (x & 3u) + 1u;",
        "let m = vec4<bool>(x == 0u) | (k <= vec4<u32>(i));",
        "atomicAdd(&counts[i], 1u); let p = a & b & c; let q = a < b && c >= d;",
        "fn f(a: ptr<function, array<f32, 4>>) -> vec4<f32> { return -a[0] * 2.0; }",
    ] {
        let found = unparenthesised_bitwise(good);
        assert!(found.is_empty(), "{good}: {found:?}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut failures = Vec::new();
    for dir in [root.clone(), root.join("common"), root.join("io")] {
        for entry in std::fs::read_dir(&dir).expect("shaders/") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                let text = std::fs::read_to_string(&path).expect("a kernel");
                for failure in unparenthesised_bitwise(&text) {
                    failures.push(format!("{}: {failure}", path.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
