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

use compositional_attention::{CompositionalAttention as Layer, Strategy};

use crate::api::{JsCompositionalAttention, JsKvCache, busy, call_signal, count, too_large};
use crate::errors::{ApiError, Code};
use crate::own_io::OwnIo;

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
}

/// `GPUBufferUsage.COPY_SRC` and `.COPY_DST`.
const COPY_SRC: u32 = 0x4;
const COPY_DST: u32 = 0x8;

/// Checks that `value` is a `GPUBuffer` of at least `bytes` with `usage`.
fn check_buffer(
    call: &str,
    name: &str,
    value: &JsValue,
    bytes: u64,
    usage: (u32, &str),
) -> Result<(), ApiError> {
    if !is_gpu_buffer(value) {
        return Err(ApiError::invalid(format!(
            "{call}: {name} must be a GPUBuffer"
        )));
    }
    let size = buffer_size(value) as u64;
    if size < bytes {
        return Err(ApiError::shape(format!(
            "{call}: {name} holds {size} bytes; it needs at least {bytes}"
        )));
    }
    if buffer_usage(value) as u32 & usage.0 == 0 {
        return Err(ApiError::invalid(format!(
            "{call}: {name} needs GPUBufferUsage.{} in its usage",
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

    /// `prefill` on the page's GPU buffers: appends `seq` positions per sequence (`input
    /// [batch, seq, dim]` f32, `COPY_SRC`; optional `mask [batch, seq]` u32 words of the new
    /// keys, `COPY_SRC`) to `cache` and writes their outputs to `output` (`COPY_DST`), without
    /// a readback. Resolves once the work is submitted and validated.
    #[wasm_bindgen(js_name = prefillGpu, unchecked_return_type = "Promise<void>")]
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_gpu(
        &self,
        cache: &JsKvCache,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] output: JsValue,
        seq: f64,
        #[wasm_bindgen(unchecked_optional_param_type = "GPUBuffer | null")] mask: Option<JsValue>,
        #[wasm_bindgen(unchecked_optional_param_type = "CallOptions | null")] options: Option<
            JsValue,
        >,
    ) -> Promise {
        let (this, cache) = (self.clone(), cache.clone());
        let options = options.unwrap_or(JsValue::UNDEFINED);
        future_to_promise(async move {
            this.prefill_gpu_async(&cache, input, output, seq, mask, options)
                .await
                .map(|()| JsValue::UNDEFINED)
                .map_err(Into::into)
        })
    }

    /// One new token per sequence on the page's GPU buffers: `prefillGpu` with `seq = 1`
    /// (`input`, `output` `[batch, 1, dim]`). A decode loop keeps every token on the GPU.
    #[wasm_bindgen(js_name = decodeGpu, unchecked_return_type = "Promise<void>")]
    pub fn decode_gpu(
        &self,
        cache: &JsKvCache,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GPUBuffer")] output: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "GPUBuffer | null")] mask: Option<JsValue>,
        #[wasm_bindgen(unchecked_optional_param_type = "CallOptions | null")] options: Option<
            JsValue,
        >,
    ) -> Promise {
        self.prefill_gpu(cache, input, output, 1.0, mask, options)
    }
}

/// The page's buffers of one call, checked: `input` and `output` of `tensor` bytes, the
/// optional `mask` of `keys` bytes.
struct PageIo {
    call: &'static str,
    input: JsValue,
    output: JsValue,
    mask: Option<JsValue>,
    tensor: u64,
    keys: u64,
}

impl PageIo {
    fn check(
        call: &'static str,
        (input, output, mask): (JsValue, JsValue, Option<JsValue>),
        tokens: usize,
        dim: usize,
    ) -> Result<PageIo, ApiError> {
        let (tensor, keys) = (4 * (tokens * dim) as u64, 4 * tokens as u64);
        check_buffer(call, "input", &input, tensor, (COPY_SRC, "COPY_SRC"))?;
        check_buffer(call, "output", &output, tensor, (COPY_DST, "COPY_DST"))?;
        let mask = mask.filter(|m| !m.is_undefined() && !m.is_null());
        if let Some(mask) = &mask {
            check_buffer(call, "mask", mask, keys, (COPY_SRC, "COPY_SRC"))?;
        }
        Ok(PageIo {
            call,
            input,
            output,
            mask,
            tensor,
            keys,
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
        let io = PageIo::check("forwardGpu", (input, output, mask), batch * seq, config.dim)?;
        self.in_turn_unless_aborted(signal.as_ref(), async |layer| {
            layer.prepare(batch, seq).await?;
            self.run_on_page_buffers(layer, &io, |layer, encoder, own| {
                layer.encode(
                    encoder,
                    &own.input,
                    own.mask.as_ref(),
                    &own.output,
                    batch,
                    seq,
                )
            })
            .await
        })
        .await
    }

    /// `prefillGpu` and `decodeGpu` (`prefillGpu` of one token; its errors say `decodeGpu`).
    // The cache's borrow spans the step, inside this call's turn (see `in_turn_unless_aborted`).
    #[allow(clippy::too_many_arguments, clippy::await_holding_refcell_ref)]
    async fn prefill_gpu_async(
        &self,
        cache: &JsKvCache,
        input: JsValue,
        output: JsValue,
        seq: f64,
        mask: Option<JsValue>,
        options: JsValue,
    ) -> Result<(), ApiError> {
        let seq = count("seq", seq)?;
        let call = if seq == 1 { "decodeGpu" } else { "prefillGpu" };
        let config = *self.layer_config();
        crate::check_elements(&config, cache.batch(), seq, Strategy::Fused).map_err(too_large)?;
        let signal = call_signal(&options)?;
        let io = PageIo::check(call, (input, output, mask), cache.batch() * seq, config.dim)?;
        let kv = cache.shared();
        self.in_turn_unless_aborted(signal.as_ref(), async |layer| {
            let result = {
                let mut kv = kv.try_borrow_mut().map_err(|_| busy())?;
                layer.prepare_cached(&mut kv, seq).await?;
                self.run_on_page_buffers(layer, &io, |layer, encoder, own| {
                    let (input, mask, output) = (&own.input, own.mask.as_ref(), &own.output);
                    layer.encode_decode(&mut kv, encoder, input, mask, output, seq)
                })
                .await
            };
            cache.sync_len();
            result
        })
        .await
    }

    /// Copies the page's input (and mask) into the layer's own buffers, records `record` on
    /// them, submits, and copies the layer's output into the page's, all on the layer's queue in
    /// order; WebGPU's validation of the copies is awaited and reported.
    async fn run_on_page_buffers(
        &self,
        layer: &mut Layer,
        io: &PageIo,
        record: impl FnOnce(
            &mut Layer,
            &mut wgpu::CommandEncoder,
            &OwnIo,
        ) -> compositional_attention::Result<()>,
    ) -> Result<(), ApiError> {
        let device = self.gpu_device();
        let ctx = layer.context().clone();
        let buffers = match self.page_io.take() {
            Some(kept) if kept.serves(io.tensor, io.mask.as_ref().map(|_| io.keys)) => kept,
            _ => OwnIo::new(&ctx, io.call, io.tensor, io.mask.as_ref().map(|_| io.keys)),
        };
        let handle = |b: &wgpu::Buffer| -> JsValue {
            b.as_webgpu().map_or(JsValue::NULL, |h| h.clone().into())
        };
        // One block, so that the buffers are kept whichever step returns early.
        let result = async {
            // The copies in are validated before anything of the layer's is recorded: a page
            // buffer of another device must leave a cache exactly as it was.
            push_validation(&device);
            copy_buffer(
                &device,
                &io.input,
                &handle(&buffers.input),
                io.tensor as f64,
            );
            if let (Some(page), Some(own)) = (&io.mask, &buffers.mask) {
                copy_buffer(&device, page, &handle(own), io.keys as f64);
            }
            refused(io.call, "the input and mask copies (nothing ran)", &device).await?;
            let mut encoder =
                ctx.device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some(io.call),
                    });
            record(layer, &mut encoder, &buffers)?;
            ctx.queue().submit([encoder.finish()]);
            push_validation(&device);
            copy_buffer(
                &device,
                &handle(&buffers.output),
                &io.output,
                io.tensor as f64,
            );
            refused(
                io.call,
                "the output copy (the layer's step itself ran: a KV cache advanced)",
                &device,
            )
            .await
        }
        .await;
        *self.page_io.borrow_mut() = Some(buffers);
        result
    }
}

/// Pops the validation scope pushed before `what` and turns a refusal into `INVALID_ARGUMENT`.
async fn refused(call: &str, what: &str, device: &JsValue) -> Result<(), ApiError> {
    let error = JsFuture::from(pop_validation(device))
        .await
        .map_err(|e| ApiError::new(Code::Internal, format!("{e:?}")))?;
    match error.as_string() {
        Some(message) => Err(ApiError::invalid(format!(
            "{call}: WebGPU refused {what}: {message}; the buffers must be GPUBuffers of \
             layer.device"
        ))),
        None => Ok(()),
    }
}
