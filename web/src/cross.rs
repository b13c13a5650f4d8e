//! The JavaScript cross-attention API: `layer.memory` (or `layer.memoryKv`, separate key and
//! value inputs) projects an encoder's output once into a GPU-resident `Memory`, and
//! `layer.forwardCross` attends it as often as asked, over the crate's `memory`, `memory_kv` and
//! `forward_cross` (`src/layer/cross.rs`). A decode step of an encoder-decoder model is a
//! `forwardCross` with `seq = 1` over the same memory: the memory is never projected again.
//! Each call runs in the layer's turn, as `forward` does; arguments are checked before the crate
//! sees them and every failure is a `CompattnError`.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use compositional_attention::{CompositionalAttention as Layer, Memory, Strategy};
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::api::{
    AbortSignal, CallOptions, JsCompositionalAttention, call_signal, check_options_object,
    check_x_mask, count, err, product, to_promise, too_large,
};
use crate::errors::ApiError;
use crate::js_error;

/// Keys and values projected once from a memory, on the GPU (`layer.memory` or
/// `layer.memoryKv`), for `layer.forwardCross` of the layer that made it. `free()` it when done
/// (or let the garbage collector).
#[wasm_bindgen(js_name = Memory)]
#[derive(Clone)]
pub struct JsMemory {
    memory: Rc<Memory>,
    /// The layer that projected it: only that layer may attend it. Weak, so a memory kept
    /// after its layer's `free()` holds no layer alive; the pointer still tells layers apart.
    layer: Weak<RefCell<Layer>>,
    /// After the last finished call (a `forwardCross` of a new query shape adds a workspace),
    /// read without waiting for one in flight.
    gpu_bytes: Rc<Cell<u64>>,
}

impl JsMemory {
    /// The crate's memory (the browser tests).
    pub fn inner(&self) -> &Memory {
        &self.memory
    }

    /// Whether `layer` projected this memory.
    fn is_of(&self, layer: &JsCompositionalAttention) -> bool {
        std::ptr::eq(self.layer.as_ptr(), Rc::as_ptr(layer.layer()))
    }
}

#[wasm_bindgen(js_class = Memory)]
impl JsMemory {
    /// Sequences in the batch (`forwardCross`'s `x` is `[batch, seq, dim]`).
    #[wasm_bindgen(getter)]
    pub fn batch(&self) -> usize {
        self.memory.batch()
    }

    /// Memory positions per sequence (`memorySeq`), the extra key rows not counted.
    // A JavaScript getter (`memory.len`); an `isEmpty` would add nothing in JS (never empty).
    #[allow(clippy::len_without_is_empty)]
    #[wasm_bindgen(getter)]
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// The layer's extra key rows in front of the memory's (fairseq's `add_bias_kv`,
    /// `add_zero_attn`): 0, 1 or 2.
    #[wasm_bindgen(getter, js_name = extraRows)]
    pub fn extra_rows(&self) -> usize {
        self.memory.extra_rows()
    }

    /// GPU bytes the memory holds: its keys, values and mask, and the workspaces of the query
    /// shapes that attended it (after the last finished call).
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> f64 {
        self.gpu_bytes.get() as f64
    }
}

/// A memory's host inputs as JavaScript passed them, unchecked.
struct MemoryArgs {
    keys: Vec<f32>,
    /// `None`: the keys' input gives the values too (`memory`).
    values: Option<Vec<f32>>,
    batch: f64,
    memory_seq: f64,
    mask: Option<Vec<u8>>,
}

#[wasm_bindgen(js_class = CompositionalAttention)]
impl JsCompositionalAttention {
    /// Projects an encoder's output `memory [batch, memorySeq, kdim]` (row-major) once into
    /// GPU-resident keys and values, and resolves to that `Memory` (fairseq's
    /// `encoder_decoder_attention`: keys and values from one input). `mask [batch, memorySeq]`:
    /// one byte per memory position, nonzero = may be attended. A layer whose keys and values
    /// have different widths (`kdim ≠ vdim`) takes them separately: `memoryKv`. Cross-attention
    /// layers only; `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(unchecked_return_type = "Promise<Memory>")]
    pub fn memory(
        &self,
        memory: Vec<f32>,
        batch: f64,
        #[wasm_bindgen(js_name = memorySeq)] memory_seq: f64,
        mask: Option<Vec<u8>>,
        options: Option<CallOptions>,
    ) -> Promise {
        let args = MemoryArgs {
            keys: memory,
            values: None,
            batch,
            memory_seq,
            mask,
        };
        self.memory_promise("memory", args, options)
    }

    /// `memory` with separate key and value inputs (fairseq's general attention with
    /// `kdim`/`vdim`): `keys [batch, memorySeq, kdim]`, `values [batch, memorySeq, vdim]`. An
    /// encoder-decoder layer (`config.encoderDecoder`) takes one input: `memory`.
    #[wasm_bindgen(js_name = memoryKv, unchecked_return_type = "Promise<Memory>")]
    pub fn memory_kv(
        &self,
        keys: Vec<f32>,
        values: Vec<f32>,
        batch: f64,
        #[wasm_bindgen(js_name = memorySeq)] memory_seq: f64,
        mask: Option<Vec<u8>>,
        options: Option<CallOptions>,
    ) -> Promise {
        let args = MemoryArgs {
            keys,
            values: Some(values),
            batch,
            memory_seq,
            mask,
        };
        self.memory_promise("memoryKv", args, options)
    }

    /// `x [memory.batch, seq, dim]` → `[memory.batch, seq, dim]`: every query row attends every
    /// memory position its mask allows and the extra key rows (`causal` does not apply). Only
    /// the queries are projected, so a decode step is `seq = 1` over the same memory.
    /// `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(js_name = forwardCross, unchecked_return_type = "Promise<Float32Array>")]
    pub fn forward_cross(
        &self,
        x: Vec<f32>,
        memory: &JsMemory,
        seq: f64,
        options: Option<CallOptions>,
    ) -> Promise {
        let (this, memory) = (self.clone(), memory.clone());
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        to_promise(async move {
            check_options_object(&options, "forwardCross")?;
            let signal = call_signal(&options)?;
            this.forward_cross_vec_unless_aborted(x, &memory, seq, signal)
                .await
        })
    }
}

impl JsCompositionalAttention {
    /// [`Self::memory`] for Rust callers (the browser tests).
    pub async fn memory_vec(
        &self,
        memory: Vec<f32>,
        batch: f64,
        memory_seq: f64,
        mask: Option<Vec<u8>>,
    ) -> Result<JsMemory, ApiError> {
        let args = MemoryArgs {
            keys: memory,
            values: None,
            batch,
            memory_seq,
            mask,
        };
        self.make_memory("memory", args, None).await
    }

    /// [`Self::memory_kv`] for Rust callers (the browser tests).
    pub async fn memory_kv_vec(
        &self,
        keys: Vec<f32>,
        values: Vec<f32>,
        batch: f64,
        memory_seq: f64,
        mask: Option<Vec<u8>>,
    ) -> Result<JsMemory, ApiError> {
        let args = MemoryArgs {
            keys,
            values: Some(values),
            batch,
            memory_seq,
            mask,
        };
        self.make_memory("memoryKv", args, None).await
    }

    /// [`Self::forward_cross`] for Rust callers (the browser tests).
    pub async fn forward_cross_vec(
        &self,
        x: Vec<f32>,
        memory: &JsMemory,
        seq: f64,
    ) -> Result<Vec<f32>, ApiError> {
        self.forward_cross_vec_unless_aborted(x, memory, seq, None)
            .await
    }

    /// [`Self::forward_cross_vec`] that `signal` may abort before its turn.
    pub async fn forward_cross_vec_unless_aborted(
        &self,
        x: Vec<f32>,
        memory: &JsMemory,
        seq: f64,
        signal: Option<AbortSignal>,
    ) -> Result<Vec<f32>, ApiError> {
        self.check_cross_layer("forwardCross")?;
        let seq = count("seq", seq)?;
        // The crate refuses another layer's memory too, naming its Rust method.
        if !memory.is_of(self) {
            return Err(err(
                "forwardCross: the memory was made by another layer; make one with this layer's \
                 memory (or memoryKv)",
            ));
        }
        let config = self.layer_config();
        let batch = memory.memory.batch();
        crate::check_elements(config, batch, seq, Strategy::Fused).map_err(too_large)?;
        check_x_mask(config, &x, batch, seq, None)?;
        let memory = memory.clone();
        self.in_turn_unless_aborted(signal.as_ref(), async |layer: &mut Layer| {
            let result = layer.forward_cross(&x, &memory.memory, seq).await;
            memory.gpu_bytes.set(memory.memory.gpu_bytes());
            result.map_err(js_error)
        })
        .await
    }

    /// `memory` and `memoryKv`: the memory made in the layer's turn, as a promise of it.
    fn memory_promise(
        &self,
        what: &'static str,
        args: MemoryArgs,
        options: Option<CallOptions>,
    ) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, what)?;
            let signal = call_signal(&options)?;
            let memory = this.make_memory(what, args, signal.as_ref()).await?;
            Ok(memory.into())
        })
    }

    /// Checks a memory's inputs (`what` names the call in messages) and projects it in the
    /// layer's turn, unless `signal` aborts first.
    async fn make_memory(
        &self,
        what: &str,
        args: MemoryArgs,
        signal: Option<&AbortSignal>,
    ) -> Result<JsMemory, ApiError> {
        self.check_cross_layer(what)?;
        let MemoryArgs {
            keys,
            values,
            batch,
            memory_seq,
            mask,
        } = args;
        let (batch, memory_seq) = (count("batch", batch)?, count("memorySeq", memory_seq)?);
        let config = self.layer_config();
        let (kdim, vdim) = config.key_value_dims();
        // The crate's message names its Rust method (`memory_kv`).
        if values.is_none() && kdim != vdim {
            return Err(err(format!(
                "memory: this layer's keys ({kdim} wide) and values ({vdim} wide) come from \
                 separate inputs: call memoryKv(keys, values, batch, memorySeq, mask)"
            )));
        }
        let widest = kdim.max(vdim).max(config.projection_width());
        product("batch·memorySeq·width", &[batch, memory_seq, widest])?;
        let (keys_name, values_name) = match values {
            Some(_) => ("keys", "values"),
            None => ("memory", "values"),
        };
        check_memory_input(keys_name, &keys, [batch, memory_seq, kdim], "kdim")?;
        if let Some(values) = &values {
            check_memory_input(values_name, values, [batch, memory_seq, vdim], "vdim")?;
        }
        let mask = match mask {
            Some(mask) if mask.len() != batch * memory_seq => {
                return Err(ApiError::shape(format!(
                    "mask: expected batch·memorySeq = {batch}·{memory_seq} = {} bytes (one per \
                     memory position), found {}",
                    batch * memory_seq,
                    mask.len()
                )));
            }
            Some(mask) => Some(mask.into_iter().map(|m| m != 0).collect::<Vec<bool>>()),
            None => None,
        };
        let memory = self
            .in_turn_unless_aborted(signal, async |layer: &mut Layer| {
                match &values {
                    Some(values) => {
                        layer
                            .memory_kv(&keys, values, batch, memory_seq, mask.as_deref())
                            .await
                    }
                    None => {
                        layer
                            .memory(&keys, batch, memory_seq, mask.as_deref())
                            .await
                    }
                }
                .map_err(js_error)
            })
            .await?;
        Ok(JsMemory {
            gpu_bytes: Rc::new(Cell::new(memory.gpu_bytes())),
            memory: Rc::new(memory),
            layer: Rc::downgrade(self.layer()),
        })
    }

    /// Fails unless the layer attends a memory (a cross-attention layer), for `what`.
    fn check_cross_layer(&self, what: &str) -> Result<(), ApiError> {
        match self.layer_config().memory {
            Some(_) => Ok(()),
            None => Err(err(format!(
                "{what}: a self-attention layer has no memory to attend; a cross-attention layer \
                 comes from a checkpoint of one (fairseq's encoder_decoder_attention, or kdim and \
                 vdim in its config)"
            ))),
        }
    }
}

/// Checks that `data` holds the `[batch, memorySeq, width]` numbers of the input `name`
/// (`width_name` is `kdim` or `vdim`), before the crate sees it.
fn check_memory_input(
    name: &str,
    data: &[f32],
    [batch, memory_seq, width]: [usize; 3],
    width_name: &str,
) -> Result<(), ApiError> {
    // Checked against 2³² by the caller (`product`), so this cannot wrap.
    let want = batch * memory_seq * width;
    if data.len() == want {
        return Ok(());
    }
    Err(ApiError::shape(format!(
        "{name}: expected batch·memorySeq·{width_name} = {batch}·{memory_seq}·{width} = {want} \
         numbers ([batch, memorySeq, {width_name}] row-major), found {}",
        data.len()
    )))
}
