//! Compiles every pipeline of a training step ahead of the first step: what a browser page
//! calls behind a progress bar, and how `compattn shaders` and tests/shaders.rs collect the
//! training kernels' WGSL for offline translation.

use crate::error::Result;
use crate::gpu::memory;
use crate::layer::CompositionalAttention;
use crate::ops::kernel_params::OperandStorage;
use crate::ops::texture_copy;
use crate::precision::Precision;

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
        // A caller's buffer that cannot be a copy source (`encode_backward`'s grad_output
        // without COPY_SRC) reaches texel rows through texture_copy.wgsl instead of the copy
        // engine (`TexelRows::upload`), which the step built here may not have needed.
        if OperandStorage::of_operands(&ctx) == OperandStorage::Texels {
            ctx.pipeline(&texture_copy::variant(&ctx, Precision::F32, Precision::F32))
                .await?;
        }
        Ok(())
    }

    /// Blocking [`CompositionalAttention::prepare_training`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_training_blocking(&mut self, batch: usize, seq: usize) -> Result<()> {
        pollster::block_on(self.prepare_training(batch, seq))
    }
}
