//! The storage precision of a layer: what its weights, KV cache and large intermediates are
//! stored in. Arithmetic is f32 in both: f16 values are widened as they are loaded, and the
//! softmax, its running max and sum, the accumulators and the retrieval selection never leave
//! f32 (SPEC §7).

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// How a layer stores its weights, KV cache and large intermediates.
///
/// | | `F32` | `F16` |
/// |---|---|---|
/// | projection and output weights | f32 | f16 |
/// | projections `[SQ \| SK \| Q̃ \| RV]`, searches concatenated | f32 | f16 (fused and cached cores) |
/// | KV cache keys and values | f32 | f16 |
/// | input, mask, output, LayerNorm, softmax state, accumulators, selection | f32 | f32 |
///
/// `F16` needs the device feature `shader-f16` (WGSL `enable f16;`); GL and SwiftShader do not
/// have it. It halves the bytes a decode step reads from the cache, at an error set by f16
/// rounding of the stored tensors (see [`CompositionalAttention::with_precision`]).
///
/// [`CompositionalAttention::with_precision`]: crate::CompositionalAttention::with_precision
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats everywhere (the default).
    #[default]
    F32,
    /// 16-bit storage, 32-bit arithmetic.
    F16,
}

impl Precision {
    /// Both precisions.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    /// Bytes per stored element.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// The WGSL scalar type of a stored element.
    pub fn wgsl(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// The texture format of texel rows stored in this precision (`src/gpu/texture.rs`):
    /// `rgba32float`, or `rgba16float` for f16.
    pub(crate) fn texel_format(self) -> wgpu::TextureFormat {
        match self {
            Precision::F32 => wgpu::TextureFormat::Rgba32Float,
            Precision::F16 => wgpu::TextureFormat::Rgba16Float,
        }
    }

    /// [`Precision::texel_format`] as WGSL names it in `texture_storage_2d_array<FORMAT, ..>`.
    pub(crate) fn texel_format_wgsl(self) -> &'static str {
        match self {
            Precision::F32 => "rgba32float",
            Precision::F16 => "rgba16float",
        }
    }

    /// `f32` or `f16`, for reports and the command line.
    pub fn name(self) -> &'static str {
        self.wgsl()
    }

    /// Parses `f32` or `f16`.
    pub fn parse(value: &str) -> Result<Precision> {
        match value.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(Error::InvalidConfig {
                field: "precision",
                value: value.to_string(),
                reason: "must be f32 or f16",
            }),
        }
    }

    /// Fails with [`Error::MissingFeature`] where `ctx`'s device cannot store in this precision.
    pub fn check_supported(self, ctx: &GpuContext) -> Result<()> {
        if self == Precision::F16 && !ctx.supports_f16() {
            return Err(Error::MissingFeature {
                adapter: ctx.describe(),
                feature: "shader-f16",
                needed_for: "Precision::F16 storage (WGSL `enable f16;`)",
                hint: "use Precision::F32; GL drivers and SwiftShader have no shader-f16, \
                       Vulkan, Metal, DX12 and most browsers' WebGPU on a GPU do",
            });
        }
        Ok(())
    }

    /// `values` as this precision's little-endian bytes.
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Precision::F32 => bytemuck::cast_slice(values).to_vec(),
            Precision::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        }
    }

    /// `value` rounded to this precision (round to nearest even, as the GPU stores it).
    pub fn round(self, value: f64) -> f64 {
        match self {
            Precision::F32 => value as f32 as f64,
            Precision::F16 => half::f16::from_f64(value).to_f64(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
