// STUB (replaced by the matmul branch)
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    rows: usize,
    cols: usize,
    input: (&wgpu::Buffer, usize, usize),
    out: &wgpu::Buffer,
    out_offset: usize,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let ones = crate::gpu::memory::storage_init(ctx, "ones", &vec![1.0f32; rows])?;
    super::matmul::dispatches(
        ctx,
        1,
        cols,
        rows,
        super::matmul::Operand {
            buffer: &ones,
            offset: 0,
            stride: rows,
            transposed: false,
        },
        super::matmul::Operand {
            buffer: input.0,
            offset: input.1,
            stride: input.2,
            transposed: false,
        },
        super::matmul::Target {
            buffer: out,
            offset: out_offset,
            stride: cols,
        },
        accumulate,
    )
    .await
}
