//! The JavaScript API of the `compositional-attention` package: the class
//! `CompositionalAttention` (a layer on a WebGPU device, loaded from a checkpoint file's bytes
//! or built from random weights), its `KvCache` for generation, and `readCase` / `randomNormal`
//! for the inputs (cross-attention, `memory` and `forwardCross`, is in `src/cross.rs`). The
//! TypeScript interfaces of the options and results are declared below in [`TS_INTERFACES`];
//! `web/README.md` ("JavaScript API") has a complete example.
//!
//! Every method validates its arguments before the crate sees them and turns every failure into
//! a JavaScript `Error` carrying the crate's message; nothing panics on bad input.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Poll, Waker};

use compositional_attention::checkpoint::{self, CheckpointOptions, Constructor, Format};
use compositional_attention::io::{Input, MemoryInput, read_output};
use compositional_attention::rng::{self, Rng};
use compositional_attention::{
    AttentionMaps, CompileProgress, CompositionalAttention as Layer, Config, Error, GpuContext,
    KvCache as CrateKvCache, LimitsPolicy, MapsOptions, Precision, Strategy, Weights,
};
use js_sys::{Array, Float32Array, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::errors::{ApiError, Code};
use crate::{browser_options, describe, get, has_webgpu, js_error, parse_limits};

#[wasm_bindgen(typescript_custom_section)]
const TS_INTERFACES: &'static str = r#"
/** The layer's attention strategy: `"fused"` (flash-style, no n×n buffer) or `"unfused"`. */
export type StrategyName = "fused" | "unfused";
/** Which device limits to ask for: everything the adapter offers, or WebGPU's defaults. */
export type LimitsName = "adapter" | "webgpu";
/** Storage precision of weights and activations (`"f16"` needs the `shader-f16` feature). */
export type PrecisionName = "f32" | "f16";
/** The checkpoint formats the crate reads (a layer from `CompositionalAttention.random` reports
 *  `"random"` as its `format` instead). */
export type FormatName = "lucidrains" | "keras" | "fairseq" | "xformers";

/** Where and how a layer runs (the WebGPU device is opened once per `limits` and shared). */
export interface DeviceOptions {
  /** Default `"adapter"`. */
  limits?: LimitsName;
  /** Default `"f32"`. */
  precision?: PrecisionName;
  /** Default `"fused"`. */
  strategy?: StrategyName;
  /** Called once if the layer's WebGPU device is lost (a driver reset, `device.destroy()`),
   *  with a `CompattnError` of code `"DEVICE_LOST"` whose message gives the browser's reason.
   *  Calls after that reject with `"DEVICE_LOST"`; `load` (or `random`) opens a new device. */
  onDeviceLost?: (error: Error & { code: CompattnErrorCode }) => void;
}

/** Options of `CompositionalAttention.load`. */
export interface LoadOptions extends DeviceOptions {
  /** Causal attention (fairseq passes it at call time; the other formats may also set `causal` in `config`). */
  causal?: boolean;
  /** Prefix of the layer's tensor names inside a larger model's state dict, e.g. `"layers.0.attn."`. */
  prefix?: string;
  /** The original module's constructor arguments under their original names (JSON text or an
   *  object), e.g. `{ format: "fairseq", embed_dim: 32, num_heads: 4 }`; fairseq and xformers
   *  need `num_heads`. */
  config?: object | string;
  /** Forces the format; else `config.format`, else detected from the tensor names. */
  format?: FormatName;
}

/** Options of `CompositionalAttention.random` (missing sizes take the reference defaults:
 *  dim 64, dimHead 64, searches 8, retrievals 2). */
export interface RandomOptions extends DeviceOptions {
  dim?: number;
  dimHead?: number;
  searches?: number;
  retrievals?: number;
  causal?: boolean;
  prenorm?: boolean;
  /** Biases on the projections (default false, as lucidrains' layer). */
  bias?: boolean;
  /** Seed of the weights (PyTorch's default initialisation), default 1. */
  seed?: number;
}

/** The device limits the kernels depend on. */
export interface DeviceLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxStorageBuffersPerShaderStage: number;
  /** GPU timestamp queries available. */
  timestamps: boolean;
  /** The `shader-f16` feature (needed by `precision: "f16"`). */
  shaderF16: boolean;
}

/** The layer's hyper-parameters. */
export interface LayerConfig {
  dim: number;
  dimHead: number;
  searches: number;
  retrievals: number;
  causal: boolean;
  prenorm: boolean;
  bias: boolean;
  layerNormEps: number;
  /** Hidden width of the MLP score network (fairseq/xformers `nonlinear`), else null. */
  selectionMlp: number | null;
  /** A cross-attention layer's key input width (fairseq's `kdim`; `memory`, `forwardCross`);
   *  null for self-attention. */
  keyDim: number | null;
  /** A cross-attention layer's value input width (fairseq's `vdim`; `memoryKv` when it is not
   *  `keyDim`); null for self-attention. */
  valueDim: number | null;
  /** fairseq's `encoder_decoder_attention`: keys and values from one memory (`memory`, never
   *  `memoryKv`) and no self-attention (`forward`). False for every other layer. */
  encoderDecoder: boolean;
  /** Key rows every query attends beyond the input's or the memory's (fairseq's `add_bias_kv`,
   *  `add_zero_attn`): 0, 1 or 2. */
  extraKeyRows: number;
  /** Number of parameters. */
  parameters: number;
}

/** What `layer.info()` returns: the device, how the layer runs, and its configuration (the
 *  configuration's fields also sit at the top level). */
export interface LayerInfo extends LayerConfig {
  /** The adapter as the browser describes it. */
  adapter: string;
  /** wgpu's backend, `"BrowserWebGpu"` in a browser. */
  backend: string;
  limitsPolicy: LimitsName;
  limits: DeviceLimits;
  precision: PrecisionName;
  strategy: StrategyName;
  /** The checkpoint's format, or `"random"`. */
  format: FormatName | "random";
  config: LayerConfig;
  /** GPU memory the layer holds now (weights and workspaces), bytes. */
  gpuBytes: number;
}

/** Options of a call that takes its turn on the layer (`forward`, `prefill`, `decode`,
 *  `memory`, `memoryKv`, `forwardCross`). */
export interface CallOptions {
  /** Aborts the call while it waits for its turn: it rejects with a `CompattnError` of code
   *  `"ABORTED"` and runs nothing. A call already running finishes. */
  signal?: AbortSignal;
}

/** How far `layer.prepare` is: `compiled` of the `total` pipelines the shape needs are ready. */
export interface PrepareProgress {
  compiled: number;
  total: number;
}

/** Options of `layer.prepare`. */
export interface PrepareOptions extends CallOptions {
  /** Called once the total is known (pipelines compiled earlier, by any layer on the device,
   *  count as done), then after each pipeline compiles; not at all if the shape is ready. An
   *  exception it throws rejects `prepare` once the preparation is done. */
  onProgress?: (progress: PrepareProgress) => void;
}

/** Options of `layer.forwardWithMaps`. */
export interface MapsOptions extends CallOptions {
  /** Query token positions to return maps of (the same in every batch row): whole numbers,
   *  strictly increasing, below `seq`. Default: every position. */
  rows?: number[];
  /** The most bytes the maps may take (both tensors, 4 bytes a number); larger requests are an
   *  Error ("MapsTooLarge"-style message) before anything runs. Default 256 MiB. */
  maxBytes?: number;
}

/** What `layer.forwardWithMaps` resolves to: the output and what the layer attended to, for the
 *  query rows `queryRows` (q = `queryRows.length`) of every batch row. */
export interface MapsResult {
  /** The layer's output, `[batch, seq, dim]` (as `forward`'s). */
  output: Float32Array;
  /** Search attention `[batch, searches, q, seq]`: how strongly search σ of query token
   *  `queryRows[i]` attends each key; each row sums to 1. */
  search: Float32Array;
  /** Retrieval selection `[batch, searches, q, retrievals]`: how search σ of that token weighs
   *  each retrieval; each row sums to 1. */
  selection: Float32Array;
  batch: number;
  searches: number;
  retrievals: number;
  seq: number;
  /** The query token positions the maps are of, strictly increasing. */
  queryRows: number[];
}

/** The case tensors of a safetensors file (`readCase`); null where the file has none. */
export interface Case {
  /** From `input` [batch, seq, dim] (else from a 3-d `output`). */
  batch: number | null;
  seq: number | null;
  dim: number | null;
  /** `input`, row-major [batch, seq, dim]. */
  input: Float32Array | null;
  /** `mask`, 1 = may be attended, 0 = masked: [batch, seq] on the input's keys, or in a
   *  cross-attention case (one with a `memory`) [batch, memorySeq] on the memory's positions. */
  mask: Uint8Array | null;
  /** A cross-attention case's `memory` [batch, memorySeq, kdim], row-major: the input of the
   *  keys and values (`layer.memory`), or of the keys when `valueInput` is there. */
  memory: Float32Array | null;
  /** `value_input` [batch, memorySeq, vdim]: separate values (`layer.memoryKv`). */
  valueInput: Float32Array | null;
  /** Memory positions per sequence, from `memory`. */
  memorySeq: number | null;
  /** `output`, the reference output. */
  output: Float32Array | null;
  outputShape: number[] | null;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// `LoadOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "LoadOptions")]
    pub type LoadOptions;
    /// `RandomOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "RandomOptions")]
    pub type RandomOptions;
    /// `MapsOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "MapsOptions")]
    pub type JsMapsOptions;
    /// `CallOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "CallOptions")]
    pub type CallOptions;
    /// `PrepareOptions` of the TypeScript definitions (a plain object).
    #[wasm_bindgen(typescript_type = "PrepareOptions")]
    pub type PrepareOptions;

    /// The DOM's `AbortSignal` (windows and workers).
    #[wasm_bindgen(extends = js_sys::Object)]
    #[derive(Clone, Debug)]
    pub type AbortSignal;
    #[wasm_bindgen(method, getter)]
    fn aborted(this: &AbortSignal) -> bool;
    #[wasm_bindgen(method, js_name = addEventListener)]
    fn add_event_listener(this: &AbortSignal, kind: &str, listener: &js_sys::Function);
    #[wasm_bindgen(method, js_name = removeEventListener)]
    fn remove_event_listener(this: &AbortSignal, kind: &str, listener: &js_sys::Function);
}

/// The `signal` of a [`CallOptions`] (or `MapsOptions`) object, which must be an `AbortSignal`.
pub(crate) fn call_signal(options: &JsValue) -> Result<Option<AbortSignal>, ApiError> {
    match get(options, "signal") {
        None => Ok(None),
        Some(value) => value.dyn_into::<AbortSignal>().map(Some).map_err(|v| {
            err(format!(
                "signal must be an AbortSignal, not {}",
                js_text(&v)
            ))
        }),
    }
}

fn aborted() -> ApiError {
    ApiError::new(
        Code::Aborted,
        "the call was aborted (its AbortSignal) before its turn; nothing ran",
    )
}

/// A bad argument or option (`INVALID_ARGUMENT`); other codes are made where they apply.
pub(crate) fn err(message: impl AsRef<str>) -> ApiError {
    ApiError::invalid(message.as_ref())
}

/// One device per limits policy, opened on first use and shared by every layer after (opening a
/// device is slow), the page's `Session` included; a lost device is replaced on the next open.
pub(crate) struct SharedDevice {
    policy: LimitsPolicy,
    pub(crate) ctx: GpuContext,
    pub(crate) adapter: String,
}

thread_local! {
    static DEVICES: RefCell<Vec<Rc<SharedDevice>>> = const { RefCell::new(Vec::new()) };
}

pub(crate) async fn shared_device(policy: LimitsPolicy) -> Result<Rc<SharedDevice>, ApiError> {
    let cached = DEVICES.with(|d| {
        d.borrow()
            .iter()
            .find(|s| s.policy == policy && !s.ctx.is_lost())
            .cloned()
    });
    if let Some(device) = cached {
        return Ok(device);
    }
    if !has_webgpu() {
        return Err(ApiError::new(
            Code::NoWebGpu,
            "this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome/Edge, \
             or Firefox/Safari with WebGPU enabled, over https or localhost",
        ));
    }
    let ctx = GpuContext::new(&browser_options(policy))
        .await
        .map_err(js_error)?;
    let adapter = describe(&ctx).await;
    let device = Rc::new(SharedDevice {
        policy,
        ctx,
        adapter,
    });
    DEVICES.with(|d| {
        let mut d = d.borrow_mut();
        d.retain(|s| s.policy != policy);
        d.push(device.clone());
    });
    Ok(device)
}

fn get_string(options: &JsValue, key: &str) -> Result<Option<String>, ApiError> {
    match get(options, key) {
        None => Ok(None),
        Some(v) => v
            .as_string()
            .map(Some)
            .ok_or_else(|| err(format!("{key} must be a string"))),
    }
}

/// A boolean option: absent or null gives `default`; anything but `true` or `false` is an error
/// (the string `"false"` is not false).
fn flag(options: &JsValue, key: &str, default: bool) -> Result<bool, ApiError> {
    match get(options, key) {
        None => Ok(default),
        Some(value) => value.as_bool().ok_or_else(|| {
            err(format!(
                "{key} must be true or false, not {}",
                js_text(&value)
            ))
        }),
    }
}

/// A whole-number option ≥ 0: a JavaScript number (not a numeric string); absent or null gives
/// `default`.
fn whole(options: &JsValue, key: &str, default: usize) -> Result<usize, ApiError> {
    let Some(value) = get(options, key) else {
        return Ok(default);
    };
    let number = value
        .as_f64()
        .ok_or_else(|| err(format!("{key} must be a number, not {}", js_text(&value))))?;
    Ok(crate::whole_number(key, number, 0.0..=u32::MAX as f64, "≥ 0").map_err(err)? as usize)
}

/// A checkpoint file's bytes from a `Uint8Array` (a Node `Buffer` is one) or an `ArrayBuffer`.
fn checkpoint_bytes(value: &JsValue) -> Result<Vec<u8>, ApiError> {
    if let Some(array) = value.dyn_ref::<Uint8Array>() {
        return Ok(array.to_vec());
    }
    if let Some(buffer) = value.dyn_ref::<js_sys::ArrayBuffer>() {
        return Ok(Uint8Array::new(buffer).to_vec());
    }
    Err(err(format!(
        "load: the checkpoint must be a Uint8Array or an ArrayBuffer, not a {}",
        value.js_typeof().as_string().unwrap_or_default()
    )))
}

/// `limits`, `precision`, `strategy` and `onDeviceLost` of a `DeviceOptions` object.
struct DeviceChoice {
    policy: LimitsPolicy,
    precision: Precision,
    strategy: Strategy,
    /// Registered on the device in a browser build only (the host build has no `GPUDevice`).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    on_device_lost: Option<js_sys::Function>,
}

impl DeviceChoice {
    fn from_js(options: &JsValue) -> Result<DeviceChoice, ApiError> {
        let policy =
            parse_limits(&get_string(options, "limits")?.unwrap_or_default()).map_err(err)?;
        let precision = match get_string(options, "precision")? {
            Some(name) => Precision::parse(&name).map_err(js_error)?,
            None => Precision::F32,
        };
        let strategy = match get_string(options, "strategy")? {
            Some(name) => Strategy::from_str(&name).map_err(js_error)?,
            None => Strategy::default(),
        };
        Ok(DeviceChoice {
            policy,
            precision,
            strategy,
            on_device_lost: function_option(options, "onDeviceLost")?,
        })
    }
}

/// A function option (absent or null: `None`).
pub(crate) fn function_option(
    options: &JsValue,
    key: &str,
) -> Result<Option<js_sys::Function>, ApiError> {
    match get(options, key) {
        None => Ok(None),
        Some(value) => value
            .dyn_into()
            .map(Some)
            .map_err(|value| err(format!("{key} must be a function, not {}", js_text(&value)))),
    }
}

pub(crate) fn check_options_object(options: &JsValue, what: &str) -> Result<(), ApiError> {
    if options.is_undefined() || options.is_null() || options.is_object() {
        Ok(())
    } else {
        Err(err(format!("{what}: options must be an object")))
    }
}

/// A whole number ≥ 1 from a JavaScript number (no silent truncation of `2.5` or `-1`).
pub(crate) fn count(name: &str, value: f64) -> Result<usize, ApiError> {
    Ok(crate::whole_number(name, value, 1.0..=u32::MAX as f64, "≥ 1").map_err(err)? as usize)
}

pub(crate) fn product(what: &str, factors: &[usize]) -> Result<usize, ApiError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| {
            ApiError::new(
                Code::LimitExceeded,
                format!("{what} = {factors:?} multiplied is more than 2³² elements"),
            )
        })
}

/// Checks `x` holds `batch·seq·dim` numbers and `mask` (if any) `batch·seq` bytes, and turns the
/// mask into booleans (nonzero = may be attended).
pub(crate) fn check_x_mask(
    config: &Config,
    x: &[f32],
    batch: usize,
    seq: usize,
    mask: Option<Vec<u8>>,
) -> Result<Option<Vec<bool>>, ApiError> {
    let want = product("batch·seq·dim", &[batch, seq, config.dim])?;
    if x.len() != want {
        return Err(ApiError::shape(format!(
            "x: expected batch·seq·dim = {batch}·{seq}·{} = {want} numbers ([batch, seq, dim] \
             row-major), found {}",
            config.dim,
            x.len()
        )));
    }
    let Some(mask) = mask else {
        return Ok(None);
    };
    if mask.len() != batch * seq {
        return Err(ApiError::shape(format!(
            "mask: expected batch·seq = {batch}·{seq} = {} bytes (one per key), found {}",
            batch * seq,
            mask.len()
        )));
    }
    Ok(Some(mask.into_iter().map(|m| m != 0).collect()))
}

/// A JavaScript value as text, for messages.
fn js_text(value: &JsValue) -> String {
    if let Some(text) = value.as_string() {
        return format!("{text:?}");
    }
    if let Some(number) = value.as_f64() {
        return number.to_string();
    }
    js_sys::JSON::stringify(value)
        .ok()
        .and_then(|s| s.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// `rows` and `maxBytes` of a [`MapsOptions`] object (TypeScript `MapsOptions`): rows must be
/// whole numbers ≥ 0 (the crate checks their order and range), `maxBytes` a whole number ≥ 0.
fn maps_options(options: &JsValue) -> Result<MapsOptions, ApiError> {
    check_options_object(options, "forwardWithMaps")?;
    let mut maps = MapsOptions::default();
    if let Some(rows) = get(options, "rows") {
        if !Array::is_array(&rows) {
            return Err(err(
                "rows must be an array of query positions (whole numbers ≥ 0)",
            ));
        }
        let rows = Array::from(&rows)
            .iter()
            .map(|row| {
                row.as_f64()
                    .and_then(|r| crate::whole_number("rows", r, 0.0..=u32::MAX as f64, "").ok())
                    .map(|r| r as usize)
                    .ok_or_else(|| {
                        err(format!(
                            "rows must be whole numbers ≥ 0, not {}",
                            js_text(&row)
                        ))
                    })
            })
            .collect::<Result<Vec<usize>, ApiError>>()?;
        maps.query_rows = Some(rows);
    }
    if let Some(value) = get(options, "maxBytes") {
        // Up to 2⁵³ − 1, JavaScript's largest exact whole number.
        let max_bytes = value
            .as_f64()
            .and_then(|n| {
                crate::whole_number("maxBytes", n, 0.0..=9_007_199_254_740_991.0, "").ok()
            })
            .ok_or_else(|| {
                err(format!(
                    "maxBytes must be a whole number ≥ 0, not {}",
                    js_text(&value)
                ))
            })?;
        maps.max_bytes = max_bytes as u64;
    }
    Ok(maps)
}

/// A [`MapsResult`] object (TypeScript) of the output and the maps.
fn maps_object(output: &[f32], maps: &AttentionMaps) -> Object {
    let o = Object::new();
    set(&o, "output", Float32Array::from(output));
    set(&o, "search", Float32Array::from(maps.search.as_slice()));
    set(
        &o,
        "selection",
        Float32Array::from(maps.selection.as_slice()),
    );
    set(&o, "batch", maps.batch as f64);
    set(&o, "searches", maps.searches as f64);
    set(&o, "retrievals", maps.retrievals as f64);
    set(&o, "seq", maps.seq as f64);
    let rows = Array::new();
    for &row in &maps.query_rows {
        rows.push(&(row as f64).into());
    }
    set(&o, "queryRows", rows);
    o
}

/// What reading a checkpoint failed with: `CHECKPOINT`, unless the file asked for more than the
/// machine or the device has.
fn checkpoint_error(error: Error) -> ApiError {
    let error = ApiError::from(error);
    match error.code {
        Code::LimitExceeded => error,
        _ => ApiError::new(Code::Checkpoint, error.message),
    }
}

/// A problem past 2³² elements (`LIMIT_EXCEEDED`).
pub(crate) fn too_large(message: String) -> ApiError {
    ApiError::new(Code::LimitExceeded, message)
}

pub(crate) fn busy() -> ApiError {
    ApiError::new(
        Code::Busy,
        "the layer or cache is in use by another call in flight; await it first",
    )
}

pub(crate) fn set(o: &Object, key: &str, value: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(o, &key.into(), &value.into());
}

fn config_object(c: &Config) -> Object {
    let o = Object::new();
    set(&o, "dim", c.dim as f64);
    set(&o, "dimHead", c.dim_head as f64);
    set(&o, "searches", c.num_searches as f64);
    set(&o, "retrievals", c.num_retrievals as f64);
    set(&o, "causal", c.causal);
    set(&o, "prenorm", c.prenorm);
    set(&o, "bias", c.bias);
    set(&o, "layerNormEps", c.layer_norm_eps as f64);
    set(
        &o,
        "selectionMlp",
        c.selection_mlp.map_or(JsValue::NULL, |h| (h as f64).into()),
    );
    // Cross-attention (`layer.memory`, `forwardCross`): the widths of the key and value inputs.
    let (key_dim, value_dim) = match c.memory {
        Some(m) => ((m.key_dim as f64).into(), (m.value_dim as f64).into()),
        None => (JsValue::NULL, JsValue::NULL),
    };
    set(&o, "keyDim", key_dim);
    set(&o, "valueDim", value_dim);
    set(
        &o,
        "encoderDecoder",
        c.memory.is_some_and(|m| m.encoder_decoder),
    );
    set(&o, "extraKeyRows", c.extra_keys.rows() as f64);
    set(&o, "parameters", c.parameter_count() as f64);
    o
}

/// Calls on one layer take turns: each waits until the previous one has finished (in the order
/// they get here, in practice), so `Promise.all([layer.forward(a), layer.forward(b)])` works.
#[derive(Default)]
struct Turns {
    busy: Cell<bool>,
    waiting: RefCell<Vec<Waker>>,
}

/// The current turn; the next caller may go when it is dropped.
struct Turn(Rc<Turns>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.busy.set(false);
        for waker in self.0.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// Waits for the layer's turn; an abort of `signal` while waiting (or before) ends the wait
/// with `ABORTED` (its `abort` event wakes the waiting call, which then runs nothing).
async fn turn(turns: &Rc<Turns>, signal: Option<&AbortSignal>) -> Result<Turn, ApiError> {
    let woken: Rc<RefCell<Option<Waker>>> = Rc::new(RefCell::new(None));
    let on_abort = signal.map(|signal| {
        let woken = woken.clone();
        let wake = Closure::<dyn FnMut()>::new(move || {
            if let Some(waker) = woken.borrow_mut().take() {
                waker.wake();
            }
        });
        signal.add_event_listener("abort", wake.as_ref().unchecked_ref());
        (signal, wake)
    });
    let result = std::future::poll_fn(|cx| {
        if signal.is_some_and(AbortSignal::aborted) {
            return Poll::Ready(Err(aborted()));
        }
        if turns.busy.get() {
            turns.waiting.borrow_mut().push(cx.waker().clone());
            *woken.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        } else {
            turns.busy.set(true);
            Poll::Ready(Ok(Turn(turns.clone())))
        }
    })
    .await;
    if let Some((signal, wake)) = on_abort {
        signal.remove_event_listener("abort", wake.as_ref().unchecked_ref());
    }
    result
}

/// Compositional Attention on a WebGPU device: load a checkpoint (`load`) or random weights
/// (`random`), then `forward`, or `kvCache` + `prefill` + `decode` to generate, or (a
/// cross-attention layer) `memory` + `forwardCross`. Calls on one layer run one at a time, in
/// turn.
#[wasm_bindgen(js_name = CompositionalAttention)]
#[derive(Clone)]
pub struct JsCompositionalAttention {
    layer: Rc<RefCell<Layer>>,
    turns: Rc<Turns>,
    device: Rc<SharedDevice>,
    format: &'static str,
    config: Config,
    precision: Precision,
    /// Applied at the start of each call (so `setStrategy` never waits for one).
    strategy: Rc<Cell<Strategy>>,
    /// After the last call (workspaces grow with new shapes).
    gpu_bytes: Rc<Cell<u64>>,
    /// The layer's own buffers behind the last `forwardGpu`/`prefillGpu`/`decodeGpu`, kept for
    /// the next call of the same sizes (a decode loop binds them once).
    #[cfg(target_arch = "wasm32")]
    pub(crate) page_io: Rc<RefCell<Option<crate::own_io::OwnIo>>>,
}

impl JsCompositionalAttention {
    async fn build(
        weights: &Weights,
        choice: DeviceChoice,
        format: &'static str,
    ) -> Result<JsCompositionalAttention, ApiError> {
        let device = shared_device(choice.policy).await?;
        let mut layer =
            Layer::with_precision(&device.ctx, weights, choice.precision).map_err(js_error)?;
        layer.set_strategy(choice.strategy);
        #[cfg(target_arch = "wasm32")]
        if let (Some(hook), Some(gpu)) = (&choice.on_device_lost, device.ctx.device().as_webgpu()) {
            crate::errors::on_device_lost(&gpu.clone().into(), hook);
        }
        Ok(JsCompositionalAttention {
            config: *layer.config(),
            precision: layer.precision(),
            strategy: Rc::new(Cell::new(choice.strategy)),
            gpu_bytes: Rc::new(Cell::new(layer.gpu_bytes())),
            layer: Rc::new(RefCell::new(layer)),
            turns: Rc::default(),
            device,
            format,
            #[cfg(target_arch = "wasm32")]
            page_io: Rc::default(),
        })
    }

    /// Runs `f` on the layer in this call's turn, with the current strategy, unless `signal`
    /// aborts before the turn comes (`ABORTED`, nothing runs); records the GPU bytes after.
    // The borrow is held across `f`'s awaits on purpose: only the call whose turn it is borrows
    // the layer (or a cache) mutably, turns never overlap, and what must not wait (`info`, the
    // cache's `len`) reads `Cell`s instead; `kvCache` and `clear` try_borrow and throw if busy.
    #[allow(clippy::await_holding_refcell_ref)]
    pub(crate) async fn in_turn_unless_aborted<T>(
        &self,
        signal: Option<&AbortSignal>,
        f: impl AsyncFnOnce(&mut Layer) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _turn = turn(&self.turns, signal).await?;
        // Only calls in their turn borrow mutably, and nothing borrows across turns.
        let mut layer = self.layer.try_borrow_mut().map_err(|_| busy())?;
        layer.set_strategy(self.strategy.get());
        let result = f(&mut layer).await;
        self.gpu_bytes.set(layer.gpu_bytes());
        result
    }

    /// The layer (borrowed outside a turn only by calls that must not wait: `kvCache`,
    /// `gradients`, `new AdamW`).
    pub(crate) fn layer(&self) -> &Rc<RefCell<Layer>> {
        &self.layer
    }

    /// The layer's configuration.
    pub(crate) fn layer_config(&self) -> &Config {
        &self.config
    }

    /// The strategy the next call runs.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn strategy_now(&self) -> Strategy {
        self.strategy.get()
    }

    /// The JS `GPUDevice` behind the layer's wgpu device (undefined off the web).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn gpu_device(&self) -> JsValue {
        #[cfg(target_arch = "wasm32")]
        if let Some(device) = self.device.ctx.device().as_webgpu() {
            return device.clone().into();
        }
        JsValue::UNDEFINED
    }

    /// [`Self::forward`] for Rust callers (the browser tests): resolves to the output.
    pub async fn forward_vec(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
    ) -> Result<Vec<f32>, ApiError> {
        self.forward_vec_unless_aborted(x, batch, seq, mask, None)
            .await
    }

    /// [`Self::forward_vec`] that `signal` may abort before its turn.
    pub async fn forward_vec_unless_aborted(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        signal: Option<AbortSignal>,
    ) -> Result<Vec<f32>, ApiError> {
        let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
        crate::check_elements(&self.config, batch, seq, self.strategy.get()).map_err(too_large)?;
        let mask = check_x_mask(&self.config, &x, batch, seq, mask)?;
        self.in_turn_unless_aborted(signal.as_ref(), async |layer: &mut Layer| {
            layer
                .forward(&x, batch, seq, mask.as_deref())
                .await
                .map_err(js_error)
        })
        .await
    }

    /// [`Self::prepare`] for Rust callers (the browser tests): `progress` hears each compile.
    pub async fn prepare_vec(
        &self,
        batch: f64,
        seq: f64,
        mut progress: impl FnMut(CompileProgress),
        signal: Option<&AbortSignal>,
    ) -> Result<(), ApiError> {
        let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
        crate::check_elements(&self.config, batch, seq, self.strategy.get()).map_err(too_large)?;
        self.in_turn_unless_aborted(signal, async |layer: &mut Layer| {
            layer
                .prepare_with_progress(batch, seq, &mut progress)
                .await
                .map_err(js_error)
        })
        .await
    }

    /// [`Self::forward_with_maps`] for Rust callers (the browser tests): resolves to the output
    /// and the crate's [`AttentionMaps`]. `options` is a `MapsOptions` object (or undefined).
    pub async fn forward_with_maps_vec(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        options: JsValue,
    ) -> Result<(Vec<f32>, AttentionMaps), ApiError> {
        let (batch, seq) = (count("batch", batch)?, count("seq", seq)?);
        // The maps come from the unfused strategy, whatever the layer's is.
        crate::check_elements(&self.config, batch, seq, Strategy::Unfused).map_err(too_large)?;
        let mask = check_x_mask(&self.config, &x, batch, seq, mask)?;
        let signal = call_signal(&options)?;
        let options = maps_options(&options)?;
        self.in_turn_unless_aborted(signal.as_ref(), async |layer: &mut Layer| {
            layer
                .forward_with_maps(&x, batch, seq, mask.as_deref(), &options)
                .await
                .map_err(js_error)
        })
        .await
    }

    /// [`Self::prefill`] for Rust callers (`seq = 1`: [`Self::decode`]).
    pub async fn prefill_vec(
        &self,
        cache: &JsKvCache,
        x: Vec<f32>,
        seq: f64,
        mask: Option<Vec<u8>>,
    ) -> Result<Vec<f32>, ApiError> {
        self.prefill_vec_unless_aborted(cache, x, seq, mask, None)
            .await
    }

    /// [`Self::prefill_vec`] that `signal` may abort before its turn.
    // The cache's borrow spans the step, inside this call's turn (see `in_turn_unless_aborted`).
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn prefill_vec_unless_aborted(
        &self,
        cache: &JsKvCache,
        x: Vec<f32>,
        seq: f64,
        mask: Option<Vec<u8>>,
        signal: Option<AbortSignal>,
    ) -> Result<Vec<f32>, ApiError> {
        let seq = count("seq", seq)?;
        let mask = check_x_mask(&self.config, &x, cache.batch, seq, mask)?;
        let cache = cache.clone();
        self.in_turn_unless_aborted(signal.as_ref(), async |layer: &mut Layer| {
            let mut kv = cache.cache.try_borrow_mut().map_err(|_| busy())?;
            let result = layer.prefill(&mut kv, &x, seq, mask.as_deref()).await;
            cache.len.set(kv.len());
            result.map_err(js_error)
        })
        .await
    }
}

pub(crate) fn to_promise(
    future: impl std::future::Future<Output = Result<Vec<f32>, ApiError>> + 'static,
) -> Promise {
    future_to_promise(async move {
        match future.await {
            Ok(y) => Ok(Float32Array::from(y.as_slice()).into()),
            Err(e) => Err(e.into()),
        }
    })
}

#[wasm_bindgen(js_class = CompositionalAttention)]
impl JsCompositionalAttention {
    /// Reads a checkpoint in any format the crate reads (lucidrains, Keras, fairseq or xformers
    /// safetensors, or a Keras `.weights.h5`) and builds the layer on the browser's WebGPU
    /// device. Case tensors (`input`, `mask`, `output`) beside the weights are ignored.
    pub async fn load(
        #[wasm_bindgen(unchecked_param_type = "Uint8Array | ArrayBuffer")] bytes: JsValue,
        options: Option<LoadOptions>,
    ) -> Result<JsCompositionalAttention, ApiError> {
        let bytes = checkpoint_bytes(&bytes)?;
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        check_options_object(&options, "load")?;
        let choice = DeviceChoice::from_js(&options)?;
        let constructor = match get(&options, "config") {
            None => None,
            Some(value) => {
                let json = match value.as_string() {
                    Some(text) if text.trim().is_empty() => None,
                    Some(text) => Some(text),
                    None => Some(
                        js_sys::JSON::stringify(&value)
                            .ok()
                            .and_then(|s| s.as_string())
                            .ok_or_else(|| err("config must be a JSON object or its text"))?,
                    ),
                };
                // A bad `config` is a bad option, whatever the crate calls it.
                json.map(|j| Constructor::parse(&j).map_err(|e| err(e.to_string())))
                    .transpose()?
            }
        };
        let format = match get_string(&options, "format")? {
            Some(name) if !name.is_empty() => Some(Format::parse(&name).map_err(js_error)?),
            _ => None,
        };
        let checkpoint_options = CheckpointOptions {
            constructor,
            format,
            causal: flag(&options, "causal", false)?,
            prefix: get_string(&options, "prefix")?.unwrap_or_default(),
        };
        if bytes.is_empty() {
            return Err(ApiError::new(
                Code::Checkpoint,
                "load: the checkpoint file is empty",
            ));
        }
        let (weights, format) = checkpoint::layer_weights_from_bytes(&bytes, &checkpoint_options)
            .map_err(checkpoint_error)?;
        Self::build(&weights, choice, format.name()).await
    }

    /// A layer with seeded random weights (PyTorch's default initialisation), for demos and
    /// tests: the same seed gives the same weights on every platform.
    pub async fn random(
        options: Option<RandomOptions>,
    ) -> Result<JsCompositionalAttention, ApiError> {
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        check_options_object(&options, "random")?;
        let choice = DeviceChoice::from_js(&options)?;
        let d = Config::new(whole(&options, "dim", 64)?);
        let config = d
            .dim_head(whole(&options, "dimHead", d.dim_head)?)
            .num_searches(whole(&options, "searches", d.num_searches)?)
            .num_retrievals(whole(&options, "retrievals", d.num_retrievals)?)
            .causal(flag(&options, "causal", false)?)
            .prenorm(flag(&options, "prenorm", false)?)
            .bias(flag(&options, "bias", false)?);
        let seed = whole(&options, "seed", 1)? as u64;
        let weights = Weights::random(config, seed).map_err(js_error)?;
        Self::build(&weights, choice, "random").await
    }

    /// `x [batch, seq, dim]` (row-major) → `[batch, seq, dim]`. `mask [batch, seq]`: one byte
    /// per key, nonzero = the key may be attended. `options.signal` aborts the call while it
    /// waits for its turn.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn forward(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        options: Option<CallOptions>,
    ) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        to_promise(async move {
            check_options_object(&options, "forward")?;
            let signal = call_signal(&options)?;
            this.forward_vec_unless_aborted(x, batch, seq, mask, signal)
                .await
        })
    }

    /// `forward`, also resolving to what the layer attended to (`MapsResult`): for the query
    /// rows `options.rows` (every row by default) of every batch row, the search attention
    /// `[batch, searches, q, seq]` and the retrieval selection `[batch, searches, q, retrievals]`.
    /// Runs the unfused strategy whatever `strategy` is (the output matches the fused one's to
    /// f32 rounding). Maps larger than `options.maxBytes` (default 256 MiB) are an Error before
    /// anything runs.
    #[wasm_bindgen(js_name = forwardWithMaps, unchecked_return_type = "Promise<MapsResult>")]
    pub fn forward_with_maps(
        &self,
        x: Vec<f32>,
        batch: f64,
        seq: f64,
        mask: Option<Vec<u8>>,
        options: Option<JsMapsOptions>,
    ) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            match this
                .forward_with_maps_vec(x, batch, seq, mask, options)
                .await
            {
                Ok((output, maps)) => Ok(maps_object(&output, &maps).into()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Allocates the workspace of `batch × seq` and compiles its pipelines ahead of the first
    /// `forward` (which then only records), in the layer's turn. `options.onProgress` hears
    /// `{ compiled, total }` as the pipelines compile; `options.signal` aborts it while it
    /// waits for its turn. `releaseWorkspaces()` frees the memory again.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn prepare(&self, batch: f64, seq: f64, options: Option<PrepareOptions>) -> Promise {
        let this = self.clone();
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        future_to_promise(async move {
            check_options_object(&options, "prepare")?;
            let signal = call_signal(&options)?;
            let on_progress = function_option(&options, "onProgress")?;
            // The first exception the hook throws, rethrown once the preparation is done.
            let mut thrown = None;
            let report = |progress: CompileProgress| {
                let Some(hook) = &on_progress else { return };
                let o = Object::new();
                set(&o, "compiled", progress.compiled as f64);
                set(&o, "total", progress.total as f64);
                if let Err(e) = hook.call1(&JsValue::NULL, &o) {
                    thrown.get_or_insert(e);
                }
            };
            this.prepare_vec(batch, seq, report, signal.as_ref())
                .await?;
            match thrown {
                Some(e) => Err(e),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// A GPU-resident KV cache for `batch` sequences of up to `maxSeq` positions (causal layers
    /// only: a non-causal layer gives an Error).
    #[wasm_bindgen(js_name = kvCache)]
    pub fn kv_cache(
        &self,
        batch: f64,
        #[wasm_bindgen(js_name = maxSeq)] max_seq: f64,
    ) -> Result<JsKvCache, ApiError> {
        let (batch, max_seq) = (count("batch", batch)?, count("maxSeq", max_seq)?);
        crate::check_elements(&self.config, batch, max_seq, Strategy::Fused).map_err(too_large)?;
        let layer = self.layer.try_borrow().map_err(|_| {
            ApiError::new(
                Code::Busy,
                "kvCache: the layer is running a call; await it before making a cache",
            )
        })?;
        let cache = layer.kv_cache(batch, max_seq).map_err(js_error)?;
        Ok(JsKvCache {
            batch: cache.batch(),
            capacity: cache.capacity(),
            gpu_bytes: cache.gpu_bytes(),
            len: Rc::new(Cell::new(cache.len())),
            cache: Rc::new(RefCell::new(cache)),
        })
    }

    /// Appends `seq` positions per sequence (`x [batch, seq, dim]`, `mask [batch, seq]` of the
    /// new keys) to `cache` and resolves to their outputs `[batch, seq, dim]`: row `t` equals
    /// row `t` of the causal `forward` over the sequence so far.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn prefill(
        &self,
        cache: &JsKvCache,
        x: Vec<f32>,
        seq: f64,
        mask: Option<Vec<u8>>,
        options: Option<CallOptions>,
    ) -> Promise {
        let (this, cache) = (self.clone(), cache.clone());
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        to_promise(async move {
            check_options_object(&options, "prefill")?;
            let signal = call_signal(&options)?;
            this.prefill_vec_unless_aborted(&cache, x, seq, mask, signal)
                .await
        })
    }

    /// One new token per sequence: `prefill` with `seq = 1` (`x [batch, 1, dim]`).
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn decode(
        &self,
        cache: &JsKvCache,
        x: Vec<f32>,
        mask: Option<Vec<u8>>,
        options: Option<CallOptions>,
    ) -> Promise {
        self.prefill(cache, x, 1.0, mask, options)
    }

    /// The adapter, the device limits, how the layer runs and its configuration.
    #[wasm_bindgen(unchecked_return_type = "LayerInfo")]
    pub fn info(&self) -> JsValue {
        let ctx = &self.device.ctx;
        let (precision, strategy, gpu_bytes) =
            (self.precision, self.strategy.get(), self.gpu_bytes.get());
        let o = config_object(&self.config);
        set(&o, "config", config_object(&self.config));
        set(&o, "adapter", self.device.adapter.clone());
        set(&o, "backend", format!("{:?}", ctx.info().backend));
        set(
            &o,
            "limitsPolicy",
            match self.device.policy {
                LimitsPolicy::Adapter => "adapter",
                LimitsPolicy::WebGpuDefaults => "webgpu",
            },
        );
        let l = ctx.limits();
        let limits = Object::new();
        set(
            &limits,
            "maxStorageBufferBindingSize",
            l.max_storage_buffer_binding_size as f64,
        );
        set(&limits, "maxBufferSize", l.max_buffer_size as f64);
        set(
            &limits,
            "maxComputeWorkgroupStorageSize",
            l.max_compute_workgroup_storage_size as f64,
        );
        set(
            &limits,
            "maxComputeInvocationsPerWorkgroup",
            l.max_compute_invocations_per_workgroup as f64,
        );
        set(
            &limits,
            "maxStorageBuffersPerShaderStage",
            l.max_storage_buffers_per_shader_stage as f64,
        );
        set(&limits, "timestamps", ctx.has_timestamps());
        set(&limits, "shaderF16", ctx.supports_f16());
        set(&o, "limits", limits);
        set(&o, "precision", precision.name());
        set(&o, "strategy", strategy.name());
        set(&o, "format", self.format);
        set(&o, "gpuBytes", gpu_bytes as f64);
        o.into()
    }

    /// The layer's hyper-parameters.
    #[wasm_bindgen(getter, unchecked_return_type = "LayerConfig")]
    pub fn config(&self) -> JsValue {
        config_object(&self.config).into()
    }

    /// Model width: `x` holds `batch·seq·dim` numbers.
    #[wasm_bindgen(getter)]
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Whether the layer is causal (only a causal layer has a `kvCache`).
    #[wasm_bindgen(getter)]
    pub fn causal(&self) -> bool {
        self.config.causal
    }

    /// The checkpoint's format (`"lucidrains"`, `"keras"`, `"fairseq"`, `"xformers"`) or
    /// `"random"`.
    #[wasm_bindgen(getter, unchecked_return_type = "FormatName | \"random\"")]
    pub fn format(&self) -> String {
        self.format.to_string()
    }

    /// The attention strategy (`"fused"` or `"unfused"`).
    #[wasm_bindgen(getter, unchecked_return_type = "StrategyName")]
    pub fn strategy(&self) -> String {
        self.strategy.get().name().to_string()
    }

    /// Frees the GPU memory of every shape's workspace (the buffers a forward needs beyond the
    /// weights); the weights stay, and the next call of a shape builds its workspace again.
    /// Throws `BUSY` while a call on the layer is in flight.
    #[wasm_bindgen(js_name = releaseWorkspaces)]
    pub fn release_workspaces(&self) -> Result<(), ApiError> {
        let mut layer = self.layer.try_borrow_mut().map_err(|_| busy())?;
        layer.release_workspaces();
        #[cfg(target_arch = "wasm32")]
        self.page_io.take();
        self.gpu_bytes.set(layer.gpu_bytes());
        Ok(())
    }

    /// Switches the attention strategy (same results within 1e-4) from the next call on.
    #[wasm_bindgen(js_name = setStrategy)]
    pub fn set_strategy(
        &self,
        #[wasm_bindgen(unchecked_param_type = "StrategyName")] strategy: String,
    ) -> Result<(), ApiError> {
        let strategy = Strategy::from_str(&strategy).map_err(js_error)?;
        self.strategy.set(strategy);
        Ok(())
    }
}

/// A GPU-resident KV cache of one layer (`layer.kvCache(batch, maxSeq)`), for `prefill` and
/// `decode`. Free it with `free()` when done (or let the garbage collector).
#[wasm_bindgen(js_name = KvCache)]
#[derive(Clone)]
pub struct JsKvCache {
    cache: Rc<RefCell<CrateKvCache>>,
    /// The cache's length after the last call (read without waiting for one in flight).
    len: Rc<Cell<usize>>,
    batch: usize,
    capacity: usize,
    gpu_bytes: u64,
}

impl JsKvCache {
    /// The crate's cache, borrowed by calls in their layer's turn.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn shared(&self) -> Rc<RefCell<CrateKvCache>> {
        self.cache.clone()
    }

    /// Records the cache's length after a call (what `len` reads without waiting).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn sync_len(&self) {
        if let Ok(kv) = self.cache.try_borrow() {
            self.len.set(kv.len());
        }
    }
}

#[wasm_bindgen(js_class = KvCache)]
impl JsKvCache {
    /// Positions cached per sequence so far (after the last finished call).
    // A JavaScript getter (`cache.len`); an `isEmpty` would add nothing in JS.
    #[allow(clippy::len_without_is_empty)]
    #[wasm_bindgen(getter)]
    pub fn len(&self) -> usize {
        self.len.get()
    }

    /// The most positions it can hold per sequence (`maxSeq`).
    #[wasm_bindgen(getter)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences in the batch.
    #[wasm_bindgen(getter)]
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// GPU bytes the cache holds.
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> f64 {
        self.gpu_bytes as f64
    }

    /// Empties the cache (keeps its memory) to start new sequences. An Error while a `prefill`
    /// or `decode` on it is in flight.
    pub fn clear(&self) -> Result<(), ApiError> {
        let mut cache = self.cache.try_borrow_mut().map_err(|_| {
            ApiError::new(
                Code::Busy,
                "clear: a prefill or decode on this cache is in flight; await it first",
            )
        })?;
        cache.clear();
        self.len.set(cache.len());
        Ok(())
    }
}

/// The case tensors of a safetensors file: `input` [batch, seq, dim], `mask` [batch, seq] and
/// `output`, and a cross-attention case's `memory`, `valueInput` and `memorySeq` (its `mask` is
/// then the memory's, [batch, memorySeq]), each null where absent (a Keras `.weights.h5` has
/// none). A malformed file is an Error.
#[wasm_bindgen(js_name = readCase, unchecked_return_type = "Case")]
pub fn read_case(bytes: Vec<u8>) -> Result<JsValue, ApiError> {
    let o = Object::new();
    for key in [
        "batch",
        "seq",
        "dim",
        "input",
        "mask",
        "memory",
        "valueInput",
        "memorySeq",
        "output",
        "outputShape",
    ] {
        set(&o, key, JsValue::NULL);
    }
    if checkpoint::is_keras_h5(&bytes) {
        return Ok(o.into());
    }
    let input = match Input::from_safetensors(&bytes) {
        Ok(input) => Some(input),
        Err(Error::MissingTensor { name, .. }) if name == "input" => None,
        Err(e) => return Err(js_error(e)),
    };
    // A cross-attention case: the memory (`Input` left its mask, the memory's, out).
    if let Some(memory) = MemoryInput::from_safetensors(&bytes).map_err(js_error)? {
        set(&o, "memory", Float32Array::from(memory.keys.as_slice()));
        if let Some((values, _)) = &memory.values {
            set(&o, "valueInput", Float32Array::from(values.as_slice()));
        }
        if let Some(mask) = &memory.mask {
            let bytes: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
            set(&o, "mask", Uint8Array::from(bytes.as_slice()));
        }
        set(&o, "memorySeq", memory.seq as f64);
    }
    let output = read_output(&bytes).map_err(js_error)?;
    let mut shape = None;
    if let Some(input) = &input {
        shape = Some([input.batch, input.seq, input.dim]);
        set(&o, "input", Float32Array::from(input.x.as_slice()));
        if let Some(mask) = &input.mask {
            let bytes: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
            set(&o, "mask", Uint8Array::from(bytes.as_slice()));
        }
    }
    if let Some((out_shape, y)) = &output {
        if let (None, &[b, n, d]) = (shape, out_shape.as_slice()) {
            shape = Some([b, n, d]);
        }
        set(&o, "output", Float32Array::from(y.as_slice()));
        let dims = Array::new();
        for &s in out_shape {
            dims.push(&(s as f64).into());
        }
        set(&o, "outputShape", dims);
    }
    if let Some([b, n, d]) = shape {
        set(&o, "batch", b as f64);
        set(&o, "seq", n as f64);
        set(&o, "dim", d as f64);
    }
    Ok(o.into())
}

/// `length` standard-normal numbers from `seed` (the crate's generator: the same numbers on
/// every platform), e.g. a random input `[batch, seq, dim]`.
#[wasm_bindgen(js_name = randomNormal)]
pub fn random_normal(length: f64, seed: f64) -> Result<Float32Array, ApiError> {
    crate::whole_number("length", length, 0.0..=(1u64 << 28) as f64, "from 0 to 2²⁸")
        .map_err(err)?;
    crate::whole_number("seed", seed, 0.0..=u64::MAX as f64, "≥ 0").map_err(err)?;
    let values = rng::normal(&mut Rng::seed_from_u64(seed as u64), length as usize, 1.0);
    Ok(Float32Array::from(values.as_slice()))
}
