//! The gradients of a layer's parameters on its device: one buffer per parameter, in the
//! layout of [`Weights::parameters`], that every backward adds to.

use crate::device_parameters::{DeviceParameters, weights_from_table};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::layer::CompositionalAttention;
use crate::weights::Weights;

/// `dL/dθ` for every parameter of one layer, GPU-resident, accumulated by
/// [`CompositionalAttention::backward`] (`grads += dL/dθ`) until [`zero`](Self::zero).
pub struct Gradients {
    pub(crate) layer: u64,
    pub(crate) ctx: GpuContext,
    pub(crate) buffers: DeviceParameters,
}

impl CompositionalAttention {
    /// Zeroed gradients for this layer's parameters, one GPU buffer per parameter.
    pub fn gradients(&self) -> Result<Gradients> {
        super::check_trainable(self.config(), self.precision())?;
        self.context().check_alive("creating gradients")?;
        Ok(Gradients {
            layer: self.id(),
            ctx: self.context().clone(),
            buffers: DeviceParameters::zeros(self.context(), self.host_weights(), "gradient")?,
        })
    }
}

impl Gradients {
    /// Sets every gradient to zero (queued on the device; the next backward adds to zero).
    pub fn zero(&mut self) {
        self.buffers.clear(&self.ctx);
    }

    /// Reads the gradients back as [`Weights`]: the same names, shapes and configuration as
    /// the layer's parameters (so `.save()` writes them as a checkpoint would).
    pub async fn to_weights(&self) -> Result<Weights> {
        let values = self.buffers.read_all(&self.ctx).await?;
        weights_from_table(*self.buffers.config(), values)
    }

    /// Blocking [`Gradients::to_weights`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_weights_blocking(&self) -> Result<Weights> {
        pollster::block_on(self.to_weights())
    }

    /// The gradient buffer of the parameter `name` (a `state_dict` name of
    /// [`Weights::parameters`]), f32 in the parameter's layout, for programs that read it on
    /// the device.
    pub fn buffer(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.buffers.find(name)
    }

    /// Bytes of GPU memory the gradients hold.
    pub fn gpu_bytes(&self) -> u64 {
        self.buffers.bytes()
    }

    /// Fails unless these gradients belong to `layer`.
    pub(crate) fn check_layer(&self, layer: &CompositionalAttention) -> Result<()> {
        if self.layer != layer.id() {
            return Err(crate::Error::TrainingMismatch(
                "these gradients belong to another layer (CompositionalAttention::gradients)"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients")
            .field("config", self.buffers.config())
            .field("gpu_bytes", &self.gpu_bytes())
            .finish()
    }
}
