//! The parameter types of the kernels in `ops`: the tilings of their pipelines, the storage of
//! their operands and the per-shape parameters of the attention cores. They are defined with the
//! kernels that read them; `src/plan/mod.rs` decides which values they take for a device and a shape
//! (their `resolve`/`choose` constructors live there), and re-exports them.

use std::ops::Range;

use crate::error::{Error, Result};

/// Where a matrix operand lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperandStorage {
    /// A storage buffer, row-major f32.
    Buffers,
    /// `rgba32float` texel rows (`src/gpu/texture.rs`): the CPU family's fast format. A GEMM
    /// that reads its operands as texels ran 7× faster on lavapipe than from buffers.
    Texels,
}

/// Which texel GEMM kernel computes `m` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TexelGemmKernel {
    /// `gemm_texture.wgsl`: 128 rows × 16 columns per workgroup in 4 × 4 blocks.
    Blocked,
    /// `gemv_texture.wgsl`: one output per lane, for a few rows (decode steps): the blocked
    /// kernel would fetch every weight texel for one useful row in eight.
    Vector,
}

/// Kernel and tile sizes of a buffer GEMM: the specialisation of its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmTiling {
    /// `gemm.wgsl`: `wg` lanes × `tile_m` rows each, `tile_n` shared columns.
    Register {
        /// Lanes per workgroup.
        wg: u32,
        /// Rows per lane.
        tile_m: u32,
        /// Columns per workgroup.
        tile_n: u32,
    },
    /// `gemm_tiled.wgsl`: `wg_side²` invocations, `tile²` outputs each, `bk`-deep slices.
    Tiled {
        /// Invocations per side of the workgroup.
        wg_side: u32,
        /// Outputs per side of an invocation.
        tile: u32,
        /// Depth of a staged slice.
        bk: u32,
    },
}

impl GemmTiling {
    /// 8 lanes × 4 rows × 16 columns: 64 accumulators per lane, 20 loads per 256 FMAs (vec4).
    pub const REGISTER: GemmTiling = GemmTiling::Register {
        wg: 8,
        tile_m: 4,
        tile_n: 16,
    };
    /// 16 × 16 invocations of 4 × 4 outputs: a 64 × 64 tile, 8 KiB of workgroup memory at
    /// `bk = 16`, within WebGPU's defaults.
    pub const TILED: GemmTiling = GemmTiling::Tiled {
        wg_side: 16,
        tile: 4,
        bk: 16,
    };
}

/// Tile sizes of the fused kernel: the specialisation key of its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FusedTiling {
    /// Invocations per workgroup.
    pub wg: u32,
    /// Queries per invocation.
    pub qpi: u32,
    /// Keys per tile.
    pub bk: u32,
    /// Stage key tiles in workgroup memory.
    pub stage: bool,
}

impl FusedTiling {
    /// Queries per workgroup.
    pub fn rows(&self) -> usize {
        (self.wg * self.qpi) as usize
    }

    /// Parses `wg,qpi,bk,stage` (for example `8,4,16,0`).
    pub fn parse(value: &str) -> Result<Self> {
        let parts: Vec<u32> = value
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .ok()
            .filter(|p: &Vec<u32>| p.len() == 4 && p[..3].iter().all(|&v| v > 0) && p[3] <= 1)
            .ok_or(Error::InvalidConfig {
                field: "COMPATTN_FUSED_TILING",
                value: value.to_string(),
                reason: "must be `wg,qpi,bk,stage` with positive sizes and stage 0 or 1",
            })?;
        Ok(FusedTiling {
            wg: parts[0],
            qpi: parts[1],
            bk: parts[2],
            stage: parts[3] != 0,
        })
    }
}

/// The general fused kernel (`fused_attention.wgsl`) at one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusedPlan {
    /// Tile sizes.
    pub tiling: FusedTiling,
    /// Storage of the projections it reads and the concatenation it writes: texels only where
    /// the GEMMs use texels and heads start on texel boundaries (`d % 4 == 0`).
    pub storage: OperandStorage,
    /// The key range of each dispatch: one range, or several where the driver caps loop
    /// iterations per invocation, carrying the online-softmax state between them.
    pub key_chunks: Vec<Range<usize>>,
    /// An MLP score network selects after the kernel (`retrieval_select`): the kernel stores
    /// the normalised retrieved vectors `[b, s, n, r·d]` instead of selecting by `Q̃·Ret`.
    pub stores_retrieved: bool,
}

impl FusedPlan {
    /// Whether the key range is split (and the running state carried between dispatches).
    pub fn splits_keys(&self) -> bool {
        self.key_chunks.len() > 1
    }
}

/// The K-loop vector width of kernels reading heads: 4 where `d % 4 == 0` (every offset is then
/// a multiple of 4), else 1.
pub(crate) fn vector_width(head: usize) -> usize {
    if head.is_multiple_of(4) { 4 } else { 1 }
}

/// The blocked CPU core (`blocked_attention.wgsl` + `retrieval_mix.wgsl`) at one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockedPlan {
    /// Value texels per block (4 value columns each): the accumulators one lane holds.
    pub block_texels: usize,
    /// Blocks of value columns per workgroup, one group of lanes each, sharing every key tile's
    /// scores through workgroup memory (ARCHITECTURE decision 18); scores are recomputed once
    /// per group of `slices` blocks.
    pub slices: usize,
}

/// The split-KV core over a KV cache (`src/ops/decode.rs`): prefill chunks and decode steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPlan {
    /// Positions the cache holds.
    pub capacity: usize,
    /// Keys per split (the last split may hold fewer).
    pub keys_per_split: usize,
    /// Splits covering the capacity; splits past a query's position do no work.
    pub splits: usize,
}
