//! Retrieval selection by an MLP score network (`shaders/retrieval_mlp.wgsl`), the unfused
//! strategy's selection for layers with `Config::selection_mlp` (fairseq's and xformers'
//! `nonlinear=True`, SPEC.md §9.1): the logits are not linear in the retrieved vectors, so they
//! are computed from the stored `Ret` as written, like `retrieval_select` does for the dot
//! product.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, check_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;

static RETRIEVAL_MLP: Kernel = kernel!("retrieval_mlp");

const WG: u32 = 64;

uniform! {
    struct Params {
        rows: u32,
        searches: u32,
        retrievals: u32,
        seq: u32,
        head: u32,
        row_stride: u32,
        u_offset: u32,
        hidden: u32,
    }
}

pub(crate) fn variant() -> ShaderVariant {
    ShaderVariant::new(&RETRIEVAL_MLP).u32("WG", WG)
}

/// The score network's weights on the device: `hidden [H, d]`, `score [H]`.
pub(crate) struct MlpWeights<'a> {
    pub units: usize,
    pub hidden: &'a wgpu::Buffer,
    pub score: &'a wgpu::Buffer,
}

/// Binds `concat [b, n, s·d]` from `retrieved [b, s, n, r·d]` and the hidden units' query
/// inputs in the RQ block of `proj`; `g_scratch [b, s, n, r]` holds the logits between passes.
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    retrieved: &wgpu::Buffer,
    proj: &wgpu::Buffer,
    mlp: MlpWeights<'_>,
    g_scratch: &wgpu::Buffer,
    concat: &wgpu::Buffer,
) -> Result<Dispatch> {
    let (d, r, h) = (
        layout.head as u64,
        layout.retrievals as u64,
        mlp.units as u64,
    );
    let loops = r * (1 + h * (1 + d)) + 2 * r + d * (1 + r);
    check_loop_budget(
        ctx,
        "MLP retrieval selection",
        loops,
        "fewer retrievals or a narrower score network",
    )?;
    let rows = layout.batch * layout.searches * layout.seq;
    let params = Params {
        rows: rows as u32,
        searches: layout.searches as u32,
        retrievals: layout.retrievals as u32,
        seq: layout.seq as u32,
        head: layout.head as u32,
        row_stride: layout.row_stride as u32,
        u_offset: layout.retrieval_queries as u32,
        hidden: mlp.units as u32,
    };
    Dispatch::new(
        ctx,
        &variant(),
        bytemuck::bytes_of(&params),
        &[
            retrieved.into(),
            proj.into(),
            mlp.hidden.into(),
            mlp.score.into(),
            g_scratch.into(),
            concat.into(),
        ],
        rows.div_ceil(WG as usize) as u64,
    )
    .await
}
