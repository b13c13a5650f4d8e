//! AdamW on the device, as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay,
//! bias-corrected moments, `amsgrad = False`), one kernel per parameter
//! (`src/ops/adamw.rs`, `shaders/adamw.wgsl`).

use crate::device_parameters::DeviceParameters;
use crate::error::{Error, Result};
use crate::gpu::dispatch::record_pass;
use crate::layer::CompositionalAttention;
use crate::ops::adamw::{self, AdamStep};

use super::Gradients;

/// The AdamW optimiser of one layer: its hyper-parameters, its step count and the two moment
/// buffers of every parameter, on the layer's device.
///
/// Defaults are PyTorch's: `betas (0.9, 0.999)`, `eps 1e-8`, `weight_decay 0.01`, applied to
/// every parameter (LayerNorm and biases included, as `AdamW(layer.parameters())` does).
/// The hyper-parameters are checked at each step ([`Error::InvalidConfig`]).
pub struct AdamW {
    layer: u64,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    steps: u64,
    first_moment: DeviceParameters,
    second_moment: DeviceParameters,
}

impl AdamW {
    /// AdamW for `layer`'s parameters at learning rate `lr`, its moments zeroed.
    pub fn new(layer: &CompositionalAttention, lr: f64) -> Result<AdamW> {
        super::check_trainable(layer.config(), layer.precision())?;
        let ctx = layer.context();
        ctx.check_alive("creating AdamW")?;
        let opt = AdamW {
            layer: layer.id(),
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            steps: 0,
            first_moment: DeviceParameters::zeros(ctx, layer.host_weights(), "AdamW m")?,
            second_moment: DeviceParameters::zeros(ctx, layer.host_weights(), "AdamW v")?,
        };
        opt.hyper(1).check()?;
        Ok(opt)
    }

    /// Sets `(β1, β2)`, each in `[0, 1)`.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    /// Sets `eps` (> 0).
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the decoupled weight decay `λ` (≥ 0).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Changes the learning rate (a schedule), from the next step on.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn hyper(&self, step: u64) -> AdamStep {
        AdamStep {
            lr: self.lr,
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step,
        }
    }

    /// Checks the layer and gradients, and builds one update per parameter.
    pub(super) async fn build_step(
        &self,
        layer: &mut CompositionalAttention,
        grads: &Gradients,
    ) -> Result<(AdamStep, Vec<crate::gpu::dispatch::Dispatch>)> {
        if self.layer != layer.id() {
            return Err(Error::TrainingMismatch(
                "this AdamW was made for another layer (AdamW::new)".into(),
            ));
        }
        grads.check_layer(layer)?;
        let hyper = self.hyper(self.steps + 1);
        hyper.check()?;
        let ctx = layer.context().clone();
        let parameters = layer.device_parameters()?;
        let mut dispatches = Vec::new();
        for (((parameter, gradient), m), v) in parameters
            .iter()
            .zip(grads.buffers.iter())
            .zip(self.first_moment.iter())
            .zip(self.second_moment.iter())
        {
            dispatches.push(
                adamw::dispatch(
                    &ctx,
                    parameter.len(),
                    hyper,
                    &parameter.buffer,
                    &gradient.buffer,
                    &m.buffer,
                    &v.buffer,
                )
                .await?,
            );
        }
        Ok((hyper, dispatches))
    }

    /// One AdamW step on the device: updates `layer`'s parameters from `grads` (the layer's
    /// next inference reads the new parameters back once; [`CompositionalAttention::weights`]
    /// reads them too).
    pub async fn step(
        &mut self,
        layer: &mut CompositionalAttention,
        grads: &Gradients,
    ) -> Result<()> {
        let ctx = layer.context().clone();
        let _serial = ctx.serial().await;
        let (hyper, dispatches) = self.build_step(layer, grads).await?;
        ctx.scoped("AdamW step", || {
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("AdamW"),
                    });
            record_pass(&mut encoder, "AdamW", &dispatches);
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        self.steps = hyper.step;
        layer.parameters_updated();
        Ok(())
    }

    /// Blocking [`AdamW::step`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        layer: &mut CompositionalAttention,
        grads: &Gradients,
    ) -> Result<()> {
        pollster::block_on(self.step(layer, grads))
    }

    /// Records one step into `encoder` (after the backward that filled `grads`); nothing runs
    /// until the caller submits. Native only: in a browser use [`step`](Self::step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        layer: &mut CompositionalAttention,
        grads: &Gradients,
    ) -> Result<()> {
        let ctx = layer.context().clone();
        ctx.check_alive("AdamW::encode_step")?;
        let _serial = pollster::block_on(ctx.serial());
        let (hyper, dispatches) = pollster::block_on(self.build_step(layer, grads))?;
        ctx.scoped_now("AdamW::encode_step", || {
            record_pass(encoder, "AdamW", &dispatches);
            Ok(())
        })?;
        self.steps = hyper.step;
        layer.parameters_updated();
        Ok(())
    }
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("lr", &self.lr)
            .field("betas", &self.betas)
            .field("eps", &self.eps)
            .field("weight_decay", &self.weight_decay)
            .field("steps", &self.steps)
            .finish()
    }
}
