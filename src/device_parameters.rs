//! The layer's parameters as training reads and updates them: one f32 storage buffer per
//! parameter, in the order and layout of [`Weights::parameters`] (the checkpoint's own tensors,
//! unfolded). Gradients and the optimiser's moments have exactly this layout, so one index
//! names a parameter, its gradient and its moments.
//!
//! Inference reads [`DeviceWeights`](crate::device_weights::DeviceWeights) instead: packed,
//! folded and texel forms made on the host. After an optimiser step the buffers here are newer
//! than those; the layer reads them back once, before its next inference
//! (`CompositionalAttention::sync_parameters`), rather than keep both forms in step on the GPU.

use crate::config::Config;
use crate::error::Result;
use crate::gpu::{GpuContext, memory};
use crate::weights::{self, Biases, Weights};

/// One parameter on the device.
pub(crate) struct DeviceParameter {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub buffer: wgpu::Buffer,
}

impl DeviceParameter {
    pub(crate) fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every parameter of a layer on the device, in [`Weights::parameters`] order.
pub(crate) struct DeviceParameters {
    config: Config,
    parameters: Vec<DeviceParameter>,
}

impl DeviceParameters {
    /// Uploads every parameter of `weights`.
    pub(crate) fn upload(ctx: &GpuContext, weights: &Weights) -> Result<DeviceParameters> {
        let parameters = weights
            .parameters()
            .into_iter()
            .map(|p| {
                Ok(DeviceParameter {
                    name: p.name,
                    buffer: memory::storage_init(ctx, p.name, p.data)?,
                    shape: p.shape,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeviceParameters {
            config: *weights.config(),
            parameters,
        })
    }

    /// Zeroed buffers with the names and shapes of `weights`' parameters (gradients,
    /// moments), `what` naming them.
    pub(crate) fn zeros(
        ctx: &GpuContext,
        weights: &Weights,
        what: &str,
    ) -> Result<DeviceParameters> {
        let parameters = weights
            .parameters()
            .into_iter()
            .map(|p| {
                let buffer = memory::storage(ctx, &format!("{what} {}", p.name), &p.shape, None)?;
                Ok(DeviceParameter {
                    name: p.name,
                    shape: p.shape,
                    buffer,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let zeroed = DeviceParameters {
            config: *weights.config(),
            parameters,
        };
        zeroed.clear(ctx);
        Ok(zeroed)
    }

    /// Records a clear of every buffer and submits it (queued; nothing waits).
    pub(crate) fn clear(&self, ctx: &GpuContext) {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("clear"),
            });
        for p in &self.parameters {
            encoder.clear_buffer(&p.buffer, 0, None);
        }
        ctx.queue().submit([encoder.finish()]);
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, DeviceParameter> {
        self.parameters.iter()
    }

    /// The parameter `name`, which the configuration says the layer has.
    pub(crate) fn get(&self, name: &str) -> Result<&wgpu::Buffer> {
        self.find(name).ok_or_else(|| {
            crate::Error::ConfigMismatch(format!("the layer has no parameter {name}"))
        })
    }

    /// The parameter `name`, if the layer has it.
    pub(crate) fn find(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.parameters
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.buffer)
    }

    /// Bytes on the device.
    pub(crate) fn bytes(&self) -> u64 {
        self.parameters.iter().map(|p| p.buffer.size()).sum()
    }

    /// Reads every buffer back into [`Weights`] of the same configuration (one submit, one wait).
    pub(crate) async fn read(&self, ctx: &GpuContext) -> Result<Weights> {
        let table = self.read_all(ctx).await?;
        weights_from_table(self.config, table)
    }

    /// Reads every buffer back: `(name, values)` in [`Weights::parameters`] order.
    pub(crate) async fn read_all(&self, ctx: &GpuContext) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("parameter readback"),
            });
        let staging: Vec<(wgpu::Buffer, usize)> = self
            .parameters
            .iter()
            .map(|p| {
                let bytes = 4 * p.len().max(1) as u64;
                let staging = memory::staging(ctx, p.name, bytes);
                encoder.copy_buffer_to_buffer(&p.buffer, 0, &staging, 0, bytes);
                (staging, p.len())
            })
            .collect();
        ctx.scoped("reading parameters", || {
            ctx.queue().submit([encoder.finish()]);
            Ok(())
        })
        .await?;
        let reads: Vec<(&wgpu::Buffer, usize)> = staging.iter().map(|(b, n)| (b, *n)).collect();
        let values = memory::read_f32_all(ctx, &reads).await?;
        Ok(self.parameters.iter().map(|p| p.name).zip(values).collect())
    }
}

/// [`Weights`] of `config` from `(name, data)` in [`Weights::parameters`] order.
pub(crate) fn weights_from_table(
    config: Config,
    table: impl IntoIterator<Item = (&'static str, Vec<f32>)>,
) -> Result<Weights> {
    let mut named: std::collections::HashMap<&'static str, Vec<f32>> = table.into_iter().collect();
    let mut take = |name: &str| named.remove(name).unwrap_or_default();
    let norm = config
        .prenorm
        .then(|| (take(weights::NORM_WEIGHT), take(weights::NORM_BIAS)));
    let matrices = [
        take(weights::SEARCH_QUERIES),
        take(weights::SEARCH_KEYS),
        take(weights::RETRIEVAL_VALUES),
        take(weights::RETRIEVAL_QUERIES),
        take(weights::RETRIEVAL_KEYS),
        take(weights::OUT),
    ];
    let biases = config.bias.then(|| Biases {
        search_queries: take(weights::SEARCH_QUERIES_BIAS),
        search_keys: take(weights::SEARCH_KEYS_BIAS),
        retrieval_values: take(weights::RETRIEVAL_VALUES_BIAS),
        retrieval_queries: take(weights::RETRIEVAL_QUERIES_BIAS),
        out: take(weights::OUT_BIAS),
    });
    let bias_kv = config
        .extra_keys
        .bias_kv
        .then(|| (take(weights::BIAS_K), take(weights::BIAS_V)));
    let base = crate::config::ExtraKeys {
        bias_kv: false,
        ..config.extra_keys
    };
    let weights = Weights::from_parts(config.extra_keys(base), norm, matrices, biases, None)?;
    match bias_kv {
        Some((bias_k, bias_v)) => weights.with_bias_kv(bias_k, bias_v),
        None => Ok(weights),
    }
}
