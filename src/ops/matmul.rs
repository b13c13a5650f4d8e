// STUB (replaced by the matmul branch)
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
static MATMUL: Kernel = kernel!("matmul");
uniform! { struct Params { m: u32, n: u32, k_begin: u32, k_end: u32, a_offset: u32, a_stride: u32, b_offset: u32, b_stride: u32, c_offset: u32, c_stride: u32, accumulate: u32, _pad: u32 } }
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
    pub transposed: bool,
}
pub(crate) struct Target<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
}
#[allow(clippy::too_many_arguments)]
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    c: Target<'_>,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let variant = ShaderVariant::new(&MATMUL)
        .bool("TA", a.transposed)
        .bool("TB", b.transposed);
    let slices = split_for_loop_budget(ctx, "matmul", k, 2, 4, 1)?;
    let mut out = Vec::new();
    for (i, s) in slices.into_iter().enumerate() {
        let p = Params {
            m: m as u32,
            n: n as u32,
            k_begin: s.start as u32,
            k_end: s.end as u32,
            a_offset: a.offset as u32,
            a_stride: a.stride as u32,
            b_offset: b.offset as u32,
            b_stride: b.stride as u32,
            c_offset: c.offset as u32,
            c_stride: c.stride as u32,
            accumulate: (accumulate || i > 0) as u32,
            _pad: 0,
        };
        out.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&p),
                &[a.buffer.into(), b.buffer.into(), c.buffer.into()],
                ((m * n) as u64).div_ceil(64),
            )
            .await?,
        );
    }
    Ok(out)
}
