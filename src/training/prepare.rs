//! Compiles every pipeline of a training step ahead of the first step: what a browser page
//! calls behind a progress bar, and how `compattn shaders` and tests/shaders.rs collect the
//! training kernels' WGSL for offline translation.

use crate::error::Result;
use crate::gpu::memory;
use crate::layer::CompositionalAttention;

use super::AdamW;

impl CompositionalAttention {
    /// Compiles the pipelines of a training step at `batch × seq` (forward_train, backward and
    /// an AdamW step) by building the step's passes once, without running them. The buffers it
    /// allocates to bind them are freed when it returns.
    pub async fn prepare_training(&mut self, batch: usize, seq: usize) -> Result<()> {
        super::check_trainable(self.config(), self.precision())?;
        crate::shape::check_tokens(self.config(), batch, seq)?;
        let ctx = self.context().clone();
        let elements = [batch, seq, self.config().dim];
        let output = memory::storage(&ctx, "output", &elements, None)?;
        let grad_input = memory::storage(&ctx, "grad_input", &elements, None)?;
        let forward = self.build_forward_train(&output, batch, seq, 0).await?;
        let grads = self.gradients()?;
        self.build_backward(&forward.activations, &output, &grad_input, &grads)
            .await?;
        let opt = AdamW::new(self, 1e-3)?;
        opt.build_step(self, &grads).await?;
        Ok(())
    }

    /// Blocking [`CompositionalAttention::prepare_training`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_training_blocking(&mut self, batch: usize, seq: usize) -> Result<()> {
        pollster::block_on(self.prepare_training(batch, seq))
    }
}
