//! The JavaScript training API: `layer.forwardTrain`, `layer.backward`, `layer.gradients()`,
//! `new AdamW(layer, lr, options)`, `layer.weights()` and `layer.prepareTraining`, over the
//! crate's `forward_train`, `backward`, `Gradients` and `AdamW` (`src/training/`). Each call
//! runs in the layer's turn, as `forward` does; arguments are checked before the crate sees
//! them and every failure is an `Error` with the crate's message.

use std::cell::RefCell;
use std::rc::Rc;

use compositional_attention::{Activations, AdamW, Gradients, Weights};
use js_sys::{Float32Array, Object, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::api::{
    AbortSignal, CallOptions, JsCompositionalAttention, busy, call_signal, check_options_object,
    check_x_mask, count, err, set,
};
use crate::errors::ApiError;
use crate::js_error;

#[wasm_bindgen(typescript_custom_section)]
const TS_TRAINING: &'static str = r#"
/** Every parameter of a layer (or its gradient) by its `state_dict` name, row-major. */
export type ParameterTensors = Record<string, Float32Array>;
/** What `forwardTrain` resolves to. */
export interface TrainResult {
  /** `[batch, seq, dim]`. */
  output: Float32Array;
  /** What the backward needs; pass it to `backward`. */
  activations: Activations;
}
/** Options of `new AdamW(layer, lr, options)`: PyTorch's defaults where absent. */
export interface AdamWOptions {
  /** Default `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Default `1e-8`. */
  eps?: number;
  /** Default `0.01` (decoupled, on every parameter). */
  weightDecay?: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `AdamWOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "AdamWOptions")]
    pub type JsAdamWOptions;
}

/// A dropout seed from JavaScript: a whole number in `0..=2^53` or a BigInt in `0..2^64`.
fn dropout_seed(value: &JsValue) -> Result<u64, ApiError> {
    if value.is_undefined() || value.is_null() {
        return Ok(0);
    }
    if value.is_bigint() {
        let text = js_sys::BigInt::from(value.clone())
            .to_string(10)
            .map(String::from)
            .unwrap_or_default();
        return text.parse::<u64>().map_err(|_| {
            err(format!(
                "dropoutSeed must be a BigInt in 0..2^64, not {text}n"
            ))
        });
    }
    match value.as_f64() {
        Some(v) => Ok(
            crate::whole_number("dropoutSeed", v, 0.0..=9007199254740992.0, "in 0..=2^53")
                .map_err(err)? as u64,
        ),
        None => Err(err("dropoutSeed must be a number or a BigInt")),
    }
}

fn tensors(weights: &Weights) -> Object {
    let o = Object::new();
    for p in weights.parameters() {
        set(&o, p.name, Float32Array::from(p.data));
    }
    o
}

/// What a `forwardTrain` kept for its `backward` (GPU memory; `free()` it, or let the garbage
/// collector, when the backward is done).
#[wasm_bindgen(js_name = Activations)]
pub struct JsActivations {
    activations: Rc<Activations>,
}

#[wasm_bindgen(js_class = Activations)]
impl JsActivations {
    /// GPU bytes kept: linear in `batch·seq`.
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> f64 {
        self.activations.gpu_bytes() as f64
    }

    #[wasm_bindgen(getter)]
    pub fn batch(&self) -> usize {
        self.activations.batch()
    }

    #[wasm_bindgen(getter)]
    pub fn seq(&self) -> usize {
        self.activations.seq()
    }
}

/// The gradients of one layer's parameters on the GPU (`layer.gradients()`), added to by each
/// `backward` until `zero()`.
#[wasm_bindgen(js_name = Gradients)]
#[derive(Clone)]
pub struct JsGradients {
    gradients: Rc<RefCell<Gradients>>,
}

#[wasm_bindgen(js_class = Gradients)]
impl JsGradients {
    /// Sets every gradient to zero. An Error while a `backward` into them is in flight.
    pub fn zero(&self) -> Result<(), ApiError> {
        let mut gradients = self.gradients.try_borrow_mut().map_err(|_| busy())?;
        gradients.zero();
        Ok(())
    }

    /// Reads the gradients back: every parameter's by its `state_dict` name.
    #[wasm_bindgen(js_name = toObject, unchecked_return_type = "Promise<ParameterTensors>")]
    pub fn to_object(&self) -> Promise {
        let this = self.clone();
        future_to_promise(async move {
            let weights = this.to_weights().await?;
            Ok(tensors(&weights).into())
        })
    }

    /// GPU bytes the gradients hold.
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> Result<f64, ApiError> {
        Ok(self.gradients.try_borrow().map_err(|_| busy())?.gpu_bytes() as f64)
    }
}

impl JsGradients {
    /// [`Self::to_object`] for Rust callers (the browser tests).
    // The shared borrow spans the readback: a `backward` or `zero` into these gradients meanwhile
    // is refused (busy), never interleaved.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn to_weights(&self) -> Result<Weights, ApiError> {
        let gradients = self.gradients.clone();
        let gradients = gradients.try_borrow().map_err(|_| busy())?;
        gradients.to_weights().await.map_err(js_error)
    }
}

/// PyTorch's AdamW for one layer's parameters, on the GPU.
#[wasm_bindgen(js_name = AdamW)]
#[derive(Clone)]
pub struct JsAdamW {
    optimizer: Rc<RefCell<AdamW>>,
}

#[wasm_bindgen(js_class = AdamW)]
impl JsAdamW {
    /// AdamW for `layer` at learning rate `lr` (`options`: `betas`, `eps`, `weightDecay`).
    #[wasm_bindgen(constructor)]
    pub fn new(
        layer: &JsCompositionalAttention,
        lr: f64,
        options: Option<JsAdamWOptions>,
    ) -> Result<JsAdamW, ApiError> {
        let layer_ref = layer.layer().try_borrow().map_err(|_| busy())?;
        let mut optimizer = AdamW::new(&layer_ref, lr).map_err(js_error)?;
        if let Some(options) = options {
            let options: JsValue = options.into();
            let number = |key: &str| -> Result<Option<f64>, ApiError> {
                let value =
                    js_sys::Reflect::get(&options, &key.into()).unwrap_or(JsValue::UNDEFINED);
                if value.is_undefined() {
                    return Ok(None);
                }
                value
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(format!("AdamW option {key} must be a number")))
            };
            let betas =
                js_sys::Reflect::get(&options, &"betas".into()).unwrap_or(JsValue::UNDEFINED);
            if !betas.is_undefined() {
                let array = js_sys::Array::from(&betas);
                let pair: Vec<Option<f64>> = array.iter().map(|v| v.as_f64()).collect();
                match (js_sys::Array::is_array(&betas), pair.as_slice()) {
                    (true, [Some(b1), Some(b2)]) => optimizer = optimizer.betas(*b1, *b2),
                    _ => return Err(err("AdamW option betas must be an array of two numbers")),
                }
            }
            if let Some(eps) = number("eps")? {
                optimizer = optimizer.eps(eps);
            }
            if let Some(decay) = number("weightDecay")? {
                optimizer = optimizer.weight_decay(decay);
            }
        }
        Ok(JsAdamW {
            optimizer: Rc::new(RefCell::new(optimizer)),
        })
    }

    /// One step: updates `layer`'s parameters from `gradients` on the GPU, in the layer's turn
    /// (`options.signal` aborts it while it waits).
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn step(
        &self,
        layer: &JsCompositionalAttention,
        gradients: &JsGradients,
        options: Option<CallOptions>,
    ) -> Promise {
        let (this, layer, gradients) = (self.clone(), layer.clone(), gradients.clone());
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "step")?;
            let signal = call_signal(&options)?;
            this.step_async(&layer, &gradients, signal.as_ref())
                .await
                .map(|()| JsValue::UNDEFINED)
                .map_err(Into::into)
        })
    }

    /// Steps taken.
    #[wasm_bindgen(getter)]
    pub fn steps(&self) -> Result<f64, ApiError> {
        Ok(self.optimizer.try_borrow().map_err(|_| busy())?.steps() as f64)
    }
}

impl JsAdamW {
    /// [`Self::step`] for Rust callers (the browser tests).
    // The borrows span the step, inside the layer's turn (see `in_turn_unless_aborted`).
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn step_async(
        &self,
        layer: &JsCompositionalAttention,
        gradients: &JsGradients,
        signal: Option<&AbortSignal>,
    ) -> Result<(), ApiError> {
        let (optimizer, gradients) = (self.optimizer.clone(), gradients.gradients.clone());
        layer
            .in_turn_unless_aborted(signal, async |layer| {
                let mut optimizer = optimizer.try_borrow_mut().map_err(|_| busy())?;
                let gradients = gradients.try_borrow().map_err(|_| busy())?;
                optimizer.step(layer, &gradients).await.map_err(js_error)
            })
            .await
    }
}

#[wasm_bindgen(js_class = CompositionalAttention)]
impl JsCompositionalAttention {
    /// Zeroed gradients for this layer's parameters (GPU buffers).
    pub fn gradients(&self) -> Result<JsGradients, ApiError> {
        let layer = self.layer().try_borrow().map_err(|_| busy())?;
        Ok(JsGradients {
            gradients: Rc::new(RefCell::new(layer.gradients().map_err(js_error)?)),
        })
    }

    /// A training forward: `x [batch, seq, dim]`, `mask [batch, seq]` (optional) → the output
    /// and the activations its `backward` needs. Dropout (the config's `p`) is drawn from
    /// `dropoutSeed` (a number or a BigInt; default 0): the same seed repeats it exactly.
    /// `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(js_name = forwardTrain, unchecked_return_type = "Promise<TrainResult>")]
    pub fn forward_train(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        #[wasm_bindgen(js_name = dropoutSeed, unchecked_optional_param_type = "number | bigint")]
        dropout_seed: Option<JsValue>,
        #[wasm_bindgen(unchecked_optional_param_type = "CallOptions")] options: Option<CallOptions>,
    ) -> Promise {
        let this = self.clone();
        let dropout_seed = dropout_seed.unwrap_or(JsValue::UNDEFINED);
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "forwardTrain")?;
            let signal = call_signal(&options)?;
            let (output, activations) = this
                .forward_train_vec(x, batch, seq, mask, &dropout_seed, signal.as_ref())
                .await?;
            let o = Object::new();
            set(&o, "output", Float32Array::from(output.as_slice()));
            set(&o, "activations", activations);
            Ok(o.into())
        })
    }

    /// The backward of the forward that made `activations`, for `dy = dL/d(output)
    /// [batch, seq, dim]`: adds the parameters' gradients into `gradients` and resolves to
    /// `dL/dx [batch, seq, dim]`. `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn backward(
        &self,
        activations: &JsActivations,
        dy: Vec<f32>,
        gradients: &JsGradients,
        options: Option<CallOptions>,
    ) -> Promise {
        let (this, activations, gradients) = (
            self.clone(),
            activations.activations.clone(),
            gradients.clone(),
        );
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "backward")?;
            let signal = call_signal(&options)?;
            match this
                .backward_vec(&activations, dy, &gradients, signal.as_ref())
                .await
            {
                Ok(dx) => Ok(Float32Array::from(dx.as_slice()).into()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// The layer's parameters now (after AdamW steps, read back from the GPU), by `state_dict`
    /// name. `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(unchecked_return_type = "Promise<ParameterTensors>")]
    pub fn weights(&self, options: Option<CallOptions>) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "weights")?;
            let signal = call_signal(&options)?;
            let weights = this
                .in_turn_unless_aborted(signal.as_ref(), async |layer| {
                    layer.weights().await.map_err(js_error)
                })
                .await?;
            Ok(tensors(&weights).into())
        })
    }

    /// Compiles every pipeline of a training step at `batch × seq` ahead of the first.
    /// `options.signal` aborts the call while it waits for its turn.
    #[wasm_bindgen(js_name = prepareTraining, unchecked_return_type = "Promise<void>")]
    pub fn prepare_training(&self, batch: f64, seq: f64, options: Option<CallOptions>) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "prepareTraining")?;
            let signal = call_signal(&options)?;
            let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
            this.in_turn_unless_aborted(signal.as_ref(), async |layer| {
                layer.prepare_training(batch, seq).await.map_err(js_error)
            })
            .await?;
            Ok(JsValue::UNDEFINED)
        })
    }
}

impl JsCompositionalAttention {
    /// [`Self::forward_train`] for Rust callers (the browser tests).
    pub async fn forward_train_vec(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        seed: &JsValue,
        signal: Option<&AbortSignal>,
    ) -> Result<(Vec<f32>, JsActivations), ApiError> {
        let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
        let seed = dropout_seed(seed)?;
        let mask = check_x_mask(self.layer_config(), &x, batch, seq, mask)?;
        let (output, activations) = self
            .in_turn_unless_aborted(signal, async |layer| {
                layer
                    .forward_train(&x, batch, seq, mask.as_deref(), seed)
                    .await
                    .map_err(js_error)
            })
            .await?;
        Ok((
            output,
            JsActivations {
                activations: Rc::new(activations),
            },
        ))
    }

    /// [`Self::backward`] for Rust callers (the browser tests).
    // The gradients' borrow spans the backward, inside this call's turn (see `in_turn_unless_aborted`).
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn backward_vec(
        &self,
        activations: &Activations,
        dy: Vec<f32>,
        gradients: &JsGradients,
        signal: Option<&AbortSignal>,
    ) -> Result<Vec<f32>, ApiError> {
        let gradients = gradients.gradients.clone();
        self.in_turn_unless_aborted(signal, async |layer| {
            let mut gradients = gradients.try_borrow_mut().map_err(|_| busy())?;
            layer
                .backward(activations, &dy, &mut gradients)
                .await
                .map_err(js_error)
        })
        .await
    }
}

impl JsActivations {
    /// The crate's activations (the browser tests).
    pub fn inner(&self) -> &Activations {
        &self.activations
    }
}
