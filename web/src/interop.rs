//! The layer beside the page's own WebGPU code: its `GPUDevice` (`layer.device`, to create
//! buffers on or to hand to other libraries) and `forwardGpu`, a forward whose input, mask and
//! output are the page's `GPUBuffer`s, recorded and submitted without a readback.
//!
//! wgpu 30 can read the JS handle behind its device and buffers (`Device::as_webgpu`,
//! `Buffer::as_webgpu`) but cannot wrap a device or a buffer made outside it (only textures):
//! so the layer keeps its own device, and `forwardGpu` copies the page's input into the layer's
//! own buffer, runs the layer's passes, and copies the result into the page's output, all on the
//! one queue, in submission order (`web/js/interop.js`). No data leaves the GPU.

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::api::{JsCompositionalAttention, call_signal, count, too_large};
use crate::errors::{ApiError, Code};

#[wasm_bindgen(module = "/js/interop.js")]
extern "C" {
    #[wasm_bindgen(js_name = isGpuBuffer)]
    fn is_gpu_buffer(value: &JsValue) -> bool;
    #[wasm_bindgen(js_name = bufferSize)]
    fn buffer_size(buffer: &JsValue) -> f64;
    #[wasm_bindgen(js_name = bufferUsage)]
    fn buffer_usage(buffer: &JsValue) -> f64;
    #[wasm_bindgen(js_name = copyBuffer)]
    fn copy_buffer(device: &JsValue, source: &JsValue, destination: &JsValue, bytes: f64);
    #[wasm_bindgen(js_name = pushValidation)]
    fn push_validation(device: &JsValue);
    #[wasm_bindgen(js_name = popValidation)]
    fn pop_validation(device: &JsValue) -> Promise;
    /// Calls `hook` with a `DEVICE_LOST` `CompattnError` once `device.lost` resolves.
    #[wasm_bindgen(js_name = onDeviceLost)]
    pub(crate) fn on_device_lost(device: &JsValue, hook: &js_sys::Function);
}

/// `GPUBufferUsage.COPY_SRC` and `.COPY_DST`.
const COPY_SRC: u32 = 0x4;
const COPY_DST: u32 = 0x8;

/// Checks that `value` is a `GPUBuffer` of at least `bytes` with `usage`.
fn check_buffer(
    name: &str,
    value: &JsValue,
    bytes: u64,
    usage: (u32, &str),
) -> Result<(), ApiError> {
    if !is_gpu_buffer(value) {
        return Err(ApiError::invalid(format!(
            "forwardGpu: {name} must be a GPUBuffer"
        )));
    }
    let size = buffer_size(value) as u64;
    if size < bytes {
        return Err(ApiError::shape(format!(
            "forwardGpu: {name} holds {size} bytes; it needs at least {bytes}"
        )));
    }
    if buffer_usage(value) as u32 & usage.0 == 0 {
        return Err(ApiError::invalid(format!(
            "forwardGpu: {name} needs GPUBufferUsage.{} in its usage",
            usage.1
        )));
    }
    Ok(())
}

#[wasm_bindgen(js_class = CompositionalAttention)]
impl JsCompositionalAttention {
    /// The layer's `GPUDevice`: create the buffers of `forwardGpu` on it, or hand it to other
    /// WebGPU code (onnxruntime-web takes one through `env.webgpu.device`). Layers of one
    /// `limits` policy share it.
    #[wasm_bindgen(getter, unchecked_return_type = "GPUDevice")]
    pub fn device(&self) -> JsValue {
        self.gpu_device()
    }

    /// A forward on the page's GPU buffers, without a readback: `input [batch, seq, dim]` f32
    /// (`COPY_SRC` usage), an optional `mask [batch, seq]` of u32 words (nonzero = the key may
    /// be attended; `COPY_SRC`) and `output` (`COPY_DST`), all `GPUBuffer`s of `layer.device`.
    /// Resolves once the work is submitted and validated; the page's own later submissions
    /// read the output in order.
    #[wasm_bindgen(js_name = forwardGpu, unchecked_return_type = "Promise<void>")]
    pub fn forward_gpu(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] output: JsValue,
        batch: f64,
        seq: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "GPUBuffer | null")] mask: Option<JsValue>,
        #[wasm_bindgen(unchecked_optional_param_type = "CallOptions | null")] options: Option<
            JsValue,
        >,
    ) -> Promise {
        let this = self.clone();
        let options = options.unwrap_or(JsValue::UNDEFINED);
        future_to_promise(async move {
            this.forward_gpu_async(input, output, batch, seq, mask, options)
                .await
                .map(|()| JsValue::UNDEFINED)
                .map_err(Into::into)
        })
    }
}

impl JsCompositionalAttention {
    async fn forward_gpu_async(
        &self,
        input: JsValue,
        output: JsValue,
        batch: f64,
        seq: f64,
        mask: Option<JsValue>,
        options: JsValue,
    ) -> Result<(), ApiError> {
        let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
        let config = *self.layer_config();
        crate::check_elements(&config, batch, seq, self.strategy_now()).map_err(too_large)?;
        let signal = call_signal(&options)?;
        let tensor = 4 * (batch * seq * config.dim) as u64;
        let keys = 4 * (batch * seq) as u64;
        check_buffer("input", &input, tensor, (COPY_SRC, "COPY_SRC"))?;
        check_buffer("output", &output, tensor, (COPY_DST, "COPY_DST"))?;
        let mask = mask.filter(|m| !m.is_undefined() && !m.is_null());
        if let Some(mask) = &mask {
            check_buffer("mask", mask, keys, (COPY_SRC, "COPY_SRC"))?;
        }
        let device = self.gpu_device();
        self.in_turn_unless_aborted(signal.as_ref(), async |layer| {
            layer.prepare(batch, seq).await?;
            let ctx = layer.context().clone();
            let own = |label: &str, bytes: u64| {
                ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            };
            let (own_input, own_output) = (
                own("forwardGpu input", tensor),
                own("forwardGpu output", tensor),
            );
            let own_mask = mask.as_ref().map(|_| own("forwardGpu mask", keys));
            let handle = |b: &wgpu::Buffer| -> JsValue {
                b.as_webgpu().map_or(JsValue::NULL, |h| h.clone().into())
            };
            push_validation(&device);
            copy_buffer(&device, &input, &handle(&own_input), tensor as f64);
            if let (Some(page), Some(own)) = (&mask, &own_mask) {
                copy_buffer(&device, page, &handle(own), keys as f64);
            }
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("forwardGpu"),
                    });
            let recorded = layer.encode(
                &mut encoder,
                &own_input,
                own_mask.as_ref(),
                &own_output,
                batch,
                seq,
            );
            if recorded.is_ok() {
                ctx.queue().submit([encoder.finish()]);
                copy_buffer(&device, &handle(&own_output), &output, tensor as f64);
            }
            let error = JsFuture::from(pop_validation(&device))
                .await
                .map_err(|e| ApiError::new(Code::Internal, format!("{e:?}")))?;
            recorded?;
            match error.as_string() {
                Some(message) => Err(ApiError::invalid(format!(
                    "forwardGpu: WebGPU refused the copies ({message}); the buffers must be \
                     GPUBuffers of layer.device"
                ))),
                None => Ok(()),
            }
        })
        .await
    }
}
