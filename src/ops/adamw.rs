// STUB (replaced by the adamw branch)
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::Dispatch;
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::uniform::uniform;
static ADAMW: Kernel = kernel!("adamw");
uniform! { struct Params { len: u32, _p0: u32, _p1: u32, _p2: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, decay: f32, step_size: f32, bc2_sqrt: f32, _p3: u32 } }
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}
impl AdamStep {
    pub(crate) fn check(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(crate::Error::InvalidConfig {
                field: "beta1",
                value: self.beta1.to_string(),
                reason: "x",
            });
        }
        Ok(())
    }
}
pub(crate) async fn dispatch(
    ctx: &GpuContext,
    len: usize,
    s: AdamStep,
    parameter: &wgpu::Buffer,
    gradient: &wgpu::Buffer,
    first_moment: &wgpu::Buffer,
    second_moment: &wgpu::Buffer,
) -> Result<Dispatch> {
    let bc1 = 1.0 - s.beta1.powi(s.step as i32);
    let bc2 = 1.0 - s.beta2.powi(s.step as i32);
    let p = Params {
        len: len as u32,
        _p0: 0,
        _p1: 0,
        _p2: 0,
        lr: s.lr as f32,
        beta1: s.beta1 as f32,
        beta2: s.beta2 as f32,
        eps: s.eps as f32,
        decay: s.weight_decay as f32,
        step_size: (s.lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        _p3: 0,
    };
    Dispatch::new(
        ctx,
        &ShaderVariant::new(&ADAMW),
        bytemuck::bytes_of(&p),
        &[
            parameter.into(),
            gradient.into(),
            first_moment.into(),
            second_moment.into(),
        ],
        (len as u64).div_ceil(64),
    )
    .await
}
