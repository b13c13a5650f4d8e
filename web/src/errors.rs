//! `CompattnError`: what every failing call of the JavaScript API throws (and what the
//! `onDeviceLost` hook receives), a JavaScript `Error`
//! subclass (`web/js/errors.js`) with a stable `code` and the crate's message in the API's own
//! terms (JavaScript option names, no advice meant for a native machine).
//!
//! [`ApiError`] is its Rust side: every entry point returns `Result<T, ApiError>`, and
//! wasm-bindgen throws the `CompattnError` that `From<ApiError> for JsValue` builds. The
//! crate's typed errors map onto the codes in one place, [`ApiError::from`].

use compositional_attention::Error;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    #[wasm_bindgen(js_name = compattnError)]
    fn compattn_error(code: &str, message: &str) -> JsValue;
    /// Calls `hook` with a `DEVICE_LOST` `CompattnError` once `device.lost` resolves (the
    /// `onDeviceLost` option; `device` is a `GPUDevice`).
    #[wasm_bindgen(js_name = onDeviceLost)]
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn on_device_lost(device: &JsValue, hook: &js_sys::Function);
}

#[wasm_bindgen(typescript_custom_section)]
const TS_ERROR_CODES: &'static str = r#"
/** The stable `code` of a `CompattnError` (the class is exported by the package's entry). */
export type CompattnErrorCode =
  | "NO_WEBGPU" | "NO_ADAPTER" | "DEVICE_LOST" | "LIMIT_EXCEEDED" | "MISSING_FEATURE"
  | "SHAPE" | "CHECKPOINT" | "MAPS_TOO_LARGE" | "CACHE_FULL" | "BUSY" | "ABORTED"
  | "INVALID_ARGUMENT" | "INTERNAL";
"#;

/// A `CompattnError`'s code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The browser has no `navigator.gpu`.
    NoWebGpu,
    /// WebGPU is there but gave no adapter or device.
    NoAdapter,
    /// The device was lost; open the layer again.
    DeviceLost,
    /// A size past the device's limits (or wasm32's 4 GiB), or memory that could not be had.
    LimitExceeded,
    /// The device lacks an optional feature (`shader-f16` for `precision: "f16"`).
    MissingFeature,
    /// An input of the wrong length or shape.
    Shape,
    /// A checkpoint that cannot be read: malformed, missing or unexpected tensors, an
    /// unsupported option of its implementation.
    Checkpoint,
    /// `forwardWithMaps` would pass `maxBytes`.
    MapsTooLarge,
    /// A KV cache has no room for the tokens.
    CacheFull,
    /// Another call on the same layer, cache, gradients or optimiser is in flight.
    Busy,
    /// The call was aborted before it ran.
    Aborted,
    /// An argument or option of the wrong type or value (`causal: "false"`, an unknown strategy).
    InvalidArgument,
    /// The GPU or the browser failed in a way no argument explains.
    Internal,
}

impl Code {
    /// The code's text, as `CompattnErrorCode` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NoWebGpu => "NO_WEBGPU",
            Code::NoAdapter => "NO_ADAPTER",
            Code::DeviceLost => "DEVICE_LOST",
            Code::LimitExceeded => "LIMIT_EXCEEDED",
            Code::MissingFeature => "MISSING_FEATURE",
            Code::Shape => "SHAPE",
            Code::Checkpoint => "CHECKPOINT",
            Code::MapsTooLarge => "MAPS_TOO_LARGE",
            Code::CacheFull => "CACHE_FULL",
            Code::Busy => "BUSY",
            Code::Aborted => "ABORTED",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::Internal => "INTERNAL",
        }
    }
}

/// A failed call: its code and message (thrown as a `CompattnError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// The explanation.
    pub message: String,
}

impl ApiError {
    /// An error of `code` saying `message`.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A bad argument or option.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidArgument, message)
    }

    /// An input of the wrong size.
    pub fn shape(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Shape, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<ApiError> for JsValue {
    fn from(error: ApiError) -> JsValue {
        compattn_error(error.code.as_str(), &error.message)
    }
}

impl From<Error> for ApiError {
    /// The crate's typed errors by code, their messages in the JavaScript API's terms.
    fn from(error: Error) -> ApiError {
        let code = match &error {
            Error::NoAdapter { .. } | Error::DeviceUnsuitable { .. } => Code::NoAdapter,
            Error::RequestDevice(_) => Code::NoAdapter,
            Error::DeviceLost { .. } => Code::DeviceLost,
            Error::LimitExceeded { .. } | Error::HostMemory { .. } => Code::LimitExceeded,
            Error::GpuOutOfMemory { .. } => Code::LimitExceeded,
            Error::MissingFeature { .. } => Code::MissingFeature,
            Error::Shape { .. } | Error::InvalidMask { .. } => Code::Shape,
            Error::Dtype { .. }
            | Error::MissingTensor { .. }
            | Error::UnexpectedTensor { .. }
            | Error::ConfigMismatch(_)
            | Error::Safetensors(_)
            | Error::Unsupported { .. } => Code::Checkpoint,
            Error::MapsTooLarge { .. } => Code::MapsTooLarge,
            Error::CacheFull { .. } => Code::CacheFull,
            Error::InvalidConfig { .. }
            | Error::NonFinite { .. }
            | Error::CacheMismatch(_)
            | Error::MemoryMismatch(_)
            | Error::TrainingMismatch(_)
            | Error::TrainingUnsupported { .. }
            | Error::IoBuffer { .. } => Code::InvalidArgument,
            _ => Code::Internal,
        };
        let message = match &error {
            // The crate's advice is for a native machine (drivers, environment variables).
            Error::NoAdapter { .. } => "WebGPU gave no GPU adapter: the browser may have WebGPU \
                 disabled or the GPU blocklisted (see chrome://gpu), or the page is not on https \
                 or localhost"
                .to_string(),
            Error::MapsTooLarge {
                queries,
                bytes,
                limit,
            } => format!(
                "attention maps of {queries} query rows need {bytes} bytes, more than maxBytes \
                 ({limit}); ask for fewer rows (the rows option) or raise maxBytes"
            ),
            // The crate names its Rust API (`Precision::F32`) and native drivers.
            Error::MissingFeature {
                adapter, feature, ..
            } if *feature == "shader-f16" => format!(
                "the device on {adapter} lacks the `shader-f16` feature, needed for precision: \
                 \"f16\"; use precision: \"f32\" (SwiftShader and GL-backed adapters have no \
                 shader-f16)"
            ),
            // The crate names its Rust methods; the JavaScript API's are these.
            Error::MemoryMismatch(_) => memory_in_js_terms(&error.to_string()),
            Error::DeviceLost { operation, reason } => format!(
                "the GPU device is lost ({reason}); {operation} did not run: load the layer \
                 again (a new device is opened)"
            ),
            _ => error.to_string(),
        };
        ApiError::new(code, message)
    }
}

/// A cross-attention message of the crate (`Error::MemoryMismatch`) with its Rust names
/// replaced by the JavaScript API's (`forward_cross` → `forwardCross`); a message naming
/// none is unchanged.
fn memory_in_js_terms(message: &str) -> String {
    const NAMES: [(&str, &str); 5] = [
        (
            "CompositionalAttention::memory (or memory_kv)",
            "layer.memory (or layer.memoryKv)",
        ),
        ("CompositionalAttention::memory", "layer.memory"),
        ("memory_kv", "memoryKv"),
        ("forward_cross", "forwardCross"),
        ("Config::memory", "a memory in its checkpoint's config"),
    ];
    NAMES.iter().fold(message.to_string(), |text, (rust, js)| {
        text.replace(rust, js)
    })
}
