//! Specialised WGSL sources and the compute-pipeline cache.
//!
//! A kernel is specialised by prepending WGSL `const` declarations (tile sizes, vector width,
//! head width) to its source, rather than through pipeline-overridable constants: the text is
//! then complete WGSL that naga, Tint and every back end accept as is (override-sized arrays and
//! `@workgroup_size` overrides are where translators disagree), drivers see true constants and
//! unroll, and `compattn shaders` can write out exactly what the host submits. Pipelines are
//! built once per distinct text and cached for the life of the device.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::precision::Precision;

/// A WGSL kernel embedded at compile time (so the same binary works in a browser), from
/// `build.rs`'s copy of `shaders/` (without comments in a wasm32 build).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// File stem in `shaders/`, also the pipeline label.
    pub name: &'static str,
    /// The WGSL text, without its specialisation preamble.
    pub source: &'static str,
    /// Shared WGSL pieces (`shaders/common/`) placed before `source`; WGSL has no `#include`.
    pub includes: &'static [&'static str],
    /// Whether wgpu wraps the kernel's memory accesses in runtime bounds checks.
    pub bounds_checks: BoundsChecks,
}

/// Whether wgpu adds runtime bounds checks to a kernel's loads and stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BoundsChecks {
    /// wgpu's default (`create_shader_module`): every index is clamped at run time, so a wrong
    /// index reads a wrong element but never memory outside the binding.
    #[default]
    Checked,
    /// None (`create_shader_module_trusted` with `ShaderRuntimeChecks::unchecked()`: no index
    /// clamps, no forced loop bounds, no integer-division guards), on native back ends. Only
    /// for a kernel whose WGSL header proves every index in range of the buffers its host code
    /// checks, every divisor non-zero and every loop bounded, and only where that measured
    /// faster (BENCHMARKS.md, issue 18 target 5). `COMPATTN_BOUNDS_CHECKS=all` puts the checks back
    /// ([`GpuContext::bounds_checks`](crate::gpu::GpuContext::bounds_checks)).
    Proven,
}

/// A piece of WGSL placed before a kernel by one variant and not another (`shaders/io/`): the
/// declaration of an operand in one storage, with the functions that read or write it, or an
/// epilogue that transforms an output before storing it. Two pieces that stand for each other
/// declare the same functions, and the same bindings where both need a resource (the piece that
/// stores nothing binds nothing), so a kernel binds exactly the resources its variant uses and
/// nothing is bound for show.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Piece {
    /// File stem in `shaders/io/`, also part of the variant's label.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
    /// Shared WGSL (`shaders/common/`) the piece calls, placed once with the kernel's own
    /// includes: an epilogue that only one variant of a kernel runs brings its functions along.
    pub includes: &'static [&'static str],
}

/// Declares a [`Piece`] for `shaders/io/<name>.wgsl`, optionally with pieces of
/// `shaders/common/` it calls.
macro_rules! piece {
    ($name:literal $(, includes: [$($include:literal),*])?) => {
        $crate::gpu::pipelines::Piece {
            name: $name,
            source: include_str!(concat!(
                env!("OUT_DIR"),
                "/shaders/io/",
                $name,
                ".wgsl"
            )),
            includes: &[$($(include_str!(concat!(
                env!("OUT_DIR"), "/shaders/common/", $include, ".wgsl"
            ))),*)?],
        }
    };
}
pub(crate) use piece;

/// Declares a [`Kernel`] for `shaders/<name>.wgsl`, optionally with pieces of `shaders/common/`,
/// and `bounds_checks: Proven` for a kernel whose indexing is proven in range ([`BoundsChecks`]).
macro_rules! kernel {
    ($name:literal $(, includes: [$($include:literal),*])?) => {
        $crate::gpu::pipelines::kernel!(@ $name, [$($($include),*)?], Checked)
    };
    ($name:literal $(, includes: [$($include:literal),*])?, bounds_checks: $checks:ident) => {
        $crate::gpu::pipelines::kernel!(@ $name, [$($($include),*)?], $checks)
    };
    (@ $name:literal, [$($include:literal),*], $checks:ident) => {
        $crate::gpu::pipelines::Kernel {
            name: $name,
            source: include_str!(concat!(env!("OUT_DIR"), "/shaders/", $name, ".wgsl")),
            includes: &[$(include_str!(concat!(
                env!("OUT_DIR"), "/shaders/common/", $include, ".wgsl"
            ))),*],
            bounds_checks: $crate::gpu::pipelines::BoundsChecks::$checks,
        }
    };
}
pub(crate) use kernel;

/// One specialisation constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Constant {
    /// `const NAME: u32 = V;`
    U32(u32),
    /// `const NAME: bool = V;`
    Bool(bool),
    /// `alias NAME = TYPE;`
    Type(&'static str),
    /// The vector width of K-loops: `alias KVec`, `const VEC` and `fn kdot` (1 or 4 lanes).
    Vector(u32),
    /// The element type of a stored operand: `alias NAME = f32 | f16;`, and where the variant
    /// has a vector width, `alias NAMEVec` of that width.
    Stored(Precision),
    /// A written texel matrix of a stored precision: `alias NAME =
    /// texture_storage_2d_array<rgba32float | rgba16float, write>;` (WGSL spells the texel
    /// format in the type, so an f16 layer's texel rows need their own declaration), and
    /// `fn to_NAME(v: vec4<f32>) -> vec4<f32>`, which rounds to the stored precision.
    TexelStore(Precision),
    /// A read texel matrix ([`TexelRead`]) bound to the kernel's variable `var`:
    /// `alias NAME = texture_2d_array<f32>;` or
    /// `texture_storage_2d_array<rgba32float | rgba16float, read>;`, and
    /// `fn load_NAME(coords: vec2<u32>, layer: u32) -> vec4<f32>`, which fetches from `var` and
    /// through which the kernel makes every fetch (the two `textureLoad`s differ by the mip
    /// level a sampled texture takes), so the kernel text is the same for both. The function
    /// names the variable rather than taking the texture as an argument: naga's Metal back end
    /// cannot write a storage texture argument's access.
    TexelRead {
        /// How it is read.
        read: TexelRead,
        /// The kernel's `var` of type `NAME`.
        var: &'static str,
    },
    /// How the kernel reduces across its workgroup: places `shaders/common/workgroup_reduce.wgsl`
    /// or `subgroup_reduce.wgsl` (the same `Invocation`, `workgroup_sum` and `workgroup_max`)
    /// before the kernel's includes.
    Reduction(Reduction),
}

/// How a kernel reads a texel matrix (`src/gpu/texture.rs`): both give the same values, f16
/// texels widened exactly.
///
/// Chosen per device by
/// [`GpuContext::texel_read_for`](crate::gpu::GpuContext::texel_read_for), the one place that
/// decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TexelRead {
    /// A sampled texture, `textureLoad(t, coords, layer, 0)`: WebGPU's core, every device.
    Sampled,
    /// A read-only storage texture of the matrix's format (`rgba32float`, or `rgba16float` for
    /// f16), `textureLoad(t, coords, layer)`. Why: lavapipe fetches a sampled texel through a
    /// function that handles a mip level per lane (its size, row and image strides gathered
    /// lane by lane) and reads a storage texel without it; the texel GEMM took about a fifth
    /// less time this way, the blocked core 3–28 % less (BENCHMARKS.md, "Texels read as
    /// storage"). Needs WGSL's `readonly_and_readwrite_storage_textures`, which naga has and a
    /// browser may not.
    Storage(Precision),
}

impl TexelRead {
    /// The name in variant labels.
    fn name(self) -> &'static str {
        match self {
            TexelRead::Sampled => "sampled",
            TexelRead::Storage(Precision::F32) => "storagef32",
            TexelRead::Storage(Precision::F16) => "storagef16",
        }
    }
}

/// How row kernels reduce across a workgroup (softmax max and sum, LayerNorm's moments, means).
///
/// Chosen per device by [`GpuContext::reduction`](crate::gpu::GpuContext::reduction), the one
/// place that decides it; both give the same result to f32 rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// A tree through workgroup memory, `log2(WG) + 4` barriers as naga emits them: WebGPU's
    /// core, every device.
    Workgroup,
    /// `subgroupAdd` / `subgroupMax`, then one slot per subgroup: three barriers. Needs
    /// `wgpu::Features::SUBGROUP` and the `subgroup_id` builtin (native back ends).
    Subgroup,
}

impl Reduction {
    /// The WGSL that declares `Invocation`, `workgroup_sum` and `workgroup_max`.
    fn source(self) -> &'static str {
        match self {
            Reduction::Workgroup => include_str!(concat!(
                env!("OUT_DIR"),
                "/shaders/common/workgroup_reduce.wgsl"
            )),
            #[cfg(not(target_arch = "wasm32"))]
            Reduction::Subgroup => include_str!(concat!(
                env!("OUT_DIR"),
                "/shaders/common/subgroup_reduce.wgsl"
            )),
            // A browser never reduces through subgroups (GpuContext::reduction), so its module
            // does not carry that text (the package's size is budgeted).
            #[cfg(target_arch = "wasm32")]
            Reduction::Subgroup => Reduction::Workgroup.source(),
        }
    }

    /// The name in variant labels.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Workgroup => "workgroup",
            Reduction::Subgroup => "subgroup",
        }
    }
}

/// A kernel plus its constants: exactly one compute pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShaderVariant {
    kernel: &'static Kernel,
    constants: Vec<(&'static str, Constant)>,
    pieces: Vec<&'static Piece>,
}

impl ShaderVariant {
    /// The kernel with no constants yet.
    pub fn new(kernel: &'static Kernel) -> Self {
        ShaderVariant {
            kernel,
            constants: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Places an io piece (`shaders/io/`) before the kernel.
    pub fn piece(mut self, piece: &'static Piece) -> Self {
        self.pieces.push(piece);
        self
    }

    /// Adds a `u32` constant.
    pub fn u32(mut self, name: &'static str, value: u32) -> Self {
        self.constants.push((name, Constant::U32(value)));
        self
    }

    /// Adds a `bool` constant.
    pub fn bool(mut self, name: &'static str, value: bool) -> Self {
        self.constants.push((name, Constant::Bool(value)));
        self
    }

    /// Adds a type alias.
    pub fn alias(mut self, name: &'static str, ty: &'static str) -> Self {
        self.constants.push((name, Constant::Type(ty)));
        self
    }

    /// Sets the K-loop vector width (4 where rows are 16-byte aligned, else 1): declares
    /// `alias KVec` (`vec4<f32>` or `f32`), `const VEC`, `fn kdot(a: KVec, b: KVec) -> f32` and
    /// `fn kvec(texel: vec4<f32>) -> KVec` (a texel as a KVec, for kernels that may read texels).
    pub fn vector(mut self, width: u32) -> Self {
        debug_assert!(width == 1 || width == 4);
        self.constants.push(("VEC", Constant::Vector(width)));
        self
    }

    /// Declares the element type of a stored operand (`shaders/` call these `Proj`, `Cache`,
    /// `Lhs`...): `alias NAME = f32;` or, with `enable f16;` first, `alias NAME = f16;`, and
    /// `alias NAMEVec` (`vec4<NAME>` or `NAME`, by the variant's [`vector`](Self::vector)
    /// width). Kernels widen loads with `KVec(...)` or `f32(...)` and narrow stores with
    /// `NAMEVec(...)`, so the f32 variant is the same code with identity conversions.
    pub fn stored(mut self, name: &'static str, precision: Precision) -> Self {
        self.constants.push((name, Constant::Stored(precision)));
        self
    }

    /// Declares the type of a written texel matrix (`shaders/` call these `...Texels`) stored
    /// in `precision`: `rgba32float`, or `rgba16float` for f16, and `fn to_NAME`, through which
    /// the kernel passes every value it stores. For f16 that converts in the shader
    /// (`vec4<f16>(v)`, as a buffer store does; lavapipe rounds that to nearest): a store to an
    /// `rgba16float` image may round either way, and lavapipe's store doubled the f16 forward's
    /// error against the same layer on f16 buffers (tests/precision.rs). `textureLoad` widens
    /// back, so the kernel text is the same for both precisions.
    pub fn texel_store(mut self, name: &'static str, precision: Precision) -> Self {
        self.constants.push((name, Constant::TexelStore(precision)));
        self
    }

    /// Declares the type of a read texel matrix (`shaders/` call these `...Texels` too), which
    /// the kernel gives its variable `var`, and `fn load_NAME(coords, layer)`, through which the
    /// kernel fetches it ([`TexelRead`]).
    pub fn texel_read(mut self, name: &'static str, var: &'static str, read: TexelRead) -> Self {
        self.constants
            .push((name, Constant::TexelRead { read, var }));
        self
    }

    /// Declares the kernel's workgroup reduction (`Invocation`, `workgroup_sum`,
    /// `workgroup_max`) for kernels that reduce across a workgroup.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.constants
            .push(("REDUCTION", Constant::Reduction(reduction)));
        self
    }

    /// Whether the text uses subgroup operations (`wgpu::Features::SUBGROUP`).
    pub fn uses_subgroups(&self) -> bool {
        self.constants
            .iter()
            .any(|(_, value)| matches!(value, Constant::Reduction(Reduction::Subgroup)))
    }

    /// Whether the kernel's indexing is proven in range ([`BoundsChecks::Proven`]).
    pub fn bounds_checks(&self) -> BoundsChecks {
        self.kernel.bounds_checks
    }

    /// The kernel's file stem.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// The file stems of the io pieces (`shaders/io/`) placed before the kernel.
    pub fn piece_names(&self) -> Vec<&'static str> {
        self.pieces.iter().map(|piece| piece.name).collect()
    }

    /// A file-name-safe label that identifies the variant: `gemm_TILE_M4_TILE_N4_...`.
    pub fn label(&self) -> String {
        let mut label = self.kernel.name.to_string();
        for piece in &self.pieces {
            let _ = write!(label, "_{}", piece.name);
        }
        for (name, value) in &self.constants {
            let value = match value {
                Constant::U32(v) => v.to_string(),
                Constant::Bool(v) => v.to_string(),
                Constant::Type(t) => t.replace(['<', '>'], ""),
                Constant::Vector(width) => width.to_string(),
                Constant::Stored(precision) | Constant::TexelStore(precision) => {
                    precision.name().to_string()
                }
                Constant::Reduction(reduction) => reduction.name().to_string(),
                Constant::TexelRead { read, .. } => read.name().to_string(),
            };
            let _ = write!(label, "_{name}{value}");
        }
        label
    }

    /// The complete WGSL text the host submits: the preamble, then the kernel file.
    pub fn wgsl(&self) -> String {
        // Directives come before every declaration.
        let needs_f16 = self.constants.iter().any(|(_, value)| {
            matches!(
                value,
                Constant::Stored(Precision::F16) | Constant::TexelStore(Precision::F16)
            )
        });
        let mut text = format!(
            "{}// {}.wgsl, specialised by the host (src/gpu/pipelines.rs)\n{}",
            if needs_f16 { "enable f16;\n" } else { "" },
            self.kernel.name,
            if self.uses_subgroups() {
                "// Needs wgpu::Features::SUBGROUP: naga takes subgroup operations without a \
                 directive; Tint needs `enable subgroups;`.\n"
            } else {
                ""
            }
        );
        let width = self.constants.iter().find_map(|(_, value)| match value {
            Constant::Vector(width) => Some(*width),
            _ => None,
        });
        for (name, value) in &self.constants {
            let _ = match value {
                Constant::U32(v) => writeln!(text, "const {name}: u32 = {v}u;"),
                Constant::Bool(v) => writeln!(text, "const {name}: bool = {v};"),
                Constant::Type(t) => writeln!(text, "alias {name} = {t};"),
                Constant::Vector(4) => writeln!(
                    text,
                    "alias KVec = vec4<f32>;\nconst {name}: u32 = 4u;\n\
                     fn kdot(a: KVec, b: KVec) -> f32 {{ return dot(a, b); }}\n\
                     fn kvec(texel: vec4<f32>) -> KVec {{ return texel; }}"
                ),
                Constant::Vector(_) => writeln!(
                    text,
                    "alias KVec = f32;\nconst {name}: u32 = 1u;\n\
                     fn kdot(a: KVec, b: KVec) -> f32 {{ return a * b; }}\n\
                     fn kvec(texel: vec4<f32>) -> KVec {{ return texel.x; }}"
                ),
                Constant::TexelStore(precision) => {
                    let format = precision.texel_format_wgsl();
                    let rounded = match precision {
                        Precision::F32 => "v",
                        Precision::F16 => "vec4<f32>(vec4<f16>(v))",
                    };
                    writeln!(
                        text,
                        "alias {name} = texture_storage_2d_array<{format}, write>;\n\
                         fn to_{name}(v: vec4<f32>) -> vec4<f32> {{ return {rounded}; }}"
                    )
                }
                Constant::Stored(precision) => {
                    let scalar = precision.wgsl();
                    match width {
                        Some(4) => writeln!(
                            text,
                            "alias {name} = {scalar};\nalias {name}Vec = vec4<{scalar}>;"
                        ),
                        Some(_) => {
                            writeln!(
                                text,
                                "alias {name} = {scalar};\nalias {name}Vec = {scalar};"
                            )
                        }
                        None => writeln!(text, "alias {name} = {scalar};"),
                    }
                }
                Constant::TexelRead { read, var } => {
                    let (ty, level) = match read {
                        TexelRead::Sampled => ("texture_2d_array<f32>".to_string(), ", 0"),
                        TexelRead::Storage(precision) => (
                            format!(
                                "texture_storage_2d_array<{}, read>",
                                precision.texel_format_wgsl()
                            ),
                            "",
                        ),
                    };
                    writeln!(
                        text,
                        "alias {name} = {ty};\n\
                         fn load_{name}(coords: vec2<u32>, layer: u32) -> vec4<f32> \
                         {{ return textureLoad({var}, coords, layer{level}); }}"
                    )
                }
                // Placed with the includes, after every constant it may use.
                Constant::Reduction(_) => Ok(()),
            };
        }
        text.push('\n');
        for piece in &self.pieces {
            text.push_str(piece.source);
            text.push('\n');
        }
        for (_, value) in &self.constants {
            if let Constant::Reduction(reduction) = value {
                text.push_str(reduction.source());
                text.push('\n');
            }
        }
        // The kernel's includes, then those of its pieces, each once (WGSL declares nothing twice).
        let mut included: Vec<&str> = Vec::new();
        let piece_includes = self.pieces.iter().flat_map(|piece| piece.includes);
        for include in self.kernel.includes.iter().chain(piece_includes) {
            if !included.contains(include) {
                included.push(include);
                text.push_str(include);
                text.push('\n');
            }
        }
        text.push_str(self.kernel.source);
        text
    }
}

/// Compute pipelines by variant, built on first use.
#[derive(Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<ShaderVariant, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    /// Variants built so far, by label (what `compattn shaders` must reproduce).
    pub(crate) fn built(&self) -> Vec<ShaderVariant> {
        let map = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        let mut variants: Vec<_> = map.keys().cloned().collect();
        variants.sort_by_key(ShaderVariant::label);
        variants
    }
}

impl GpuContext {
    /// The pipeline for `variant`, compiled on first use. A compile error is returned (and not
    /// cached), so a failed variant cannot poison later calls.
    pub(crate) async fn pipeline(
        &self,
        variant: &ShaderVariant,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(pipeline) = self.cached_pipeline(variant) {
            return Ok(pipeline);
        }
        let cache = &self.pipelines().pipelines;
        let label = variant.label();
        let start = crate::time::Instant::now();
        let pipeline = self
            .scoped(&format!("compiling {label}"), || {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(variant.wgsl().into()),
                };
                let module = match self.bounds_checks(variant) {
                    BoundsChecks::Checked => self.device().create_shader_module(desc),
                    // SAFETY: `unchecked()` drops the index clamps, the loop bounding and the
                    // integer-division guards. A `Proven` kernel's header proves every index in
                    // range of the buffers its host code checks against the same plan, every
                    // divisor non-zero and every loop bounded (BoundsChecks::Proven); naga still
                    // parses and validates the module.
                    BoundsChecks::Proven => unsafe {
                        self.device().create_shader_module_trusted(
                            desc,
                            wgpu::ShaderRuntimeChecks::unchecked(),
                        )
                    },
                };
                Ok(self
                    .device()
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&label),
                        layout: None,
                        module: &module,
                        entry_point: Some("main"),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &[],
                            // Every kernel writes its workgroup memory before reading it, so
                            // the zero fill wgpu adds by default is pure overhead.
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    }))
            })
            .await?;
        log::info!(
            "compiled {label} in {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        let pipeline = Arc::new(pipeline);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(variant.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// The pipeline for `variant` if it is compiled already.
    pub(crate) fn cached_pipeline(
        &self,
        variant: &ShaderVariant,
    ) -> Option<Arc<wgpu::ComputePipeline>> {
        let cache = self.pipelines().pipelines.lock();
        cache
            .unwrap_or_else(|e| e.into_inner())
            .get(variant)
            .cloned()
    }

    /// Every variant compiled on this device so far.
    pub fn compiled_variants(&self) -> Vec<ShaderVariant> {
        self.pipelines().built()
    }
}
