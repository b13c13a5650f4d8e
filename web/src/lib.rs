//! Browser entry points for `compositional_attention`: open the WebGPU device, run the layer
//! on a configuration the page picks, and compare the result with the `f64` CPU reference.
//!
//! Built with `wasm-bindgen --target web` into `web/pkg/` (see `web/README.md`). The main crate
//! needs no wasm-bindgen: everything JavaScript sees is declared here.
//!
//! ```js
//! import init, { Session, strategies } from "./pkg/compattn_web.js";
//! await init();
//! const session = await Session.open("adapter");      // or "webgpu" for WebGPU's default limits
//! const report = await session.run({ dim: 64, dimHead: 16, searches: 4, retrievals: 2,
//!                                    batch: 1, seq: 32, causal: false, prenorm: false,
//!                                    strategy: "unfused" });
//! console.log(report.adapter, report.forwardMs, report.maxAbsRelative, report.within);
//! ```

mod api;
mod cross;
pub mod errors;
#[cfg(target_arch = "wasm32")]
mod interop;
#[cfg(target_arch = "wasm32")]
mod own_io;
#[cfg(feature = "page")]
mod page;
mod training;
pub use api::{
    CallOptions, JsCompositionalAttention, JsKvCache, JsMapsOptions, LoadOptions, PrepareOptions,
    RandomOptions, random_normal, read_case,
};
pub use cross::JsMemory;
pub use errors::{ApiError, Code};
#[cfg(feature = "page")]
pub use page::{
    FULL_CHECK_SCORES, RunOptions, RunReport, SAMPLED_ROWS, Session, TOLERANCE, check_size,
    rows_to_check, run_on,
};
pub use training::{JsActivations, JsAdamW, JsAdamWOptions, JsGradients};

use compositional_attention::{Config, GpuContext, GpuOptions, LimitsPolicy, Strategy};
use js_sys::Reflect;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[wasm_bindgen]
extern "C" {
    /// `performance.now()` of the global scope (a window or a worker).
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Milliseconds since the page's time origin (std has no clock on wasm32-unknown-unknown).
pub fn now_ms() -> f64 {
    performance_now()
}

/// The names of every strategy the crate offers, in `Strategy::ALL` order.
#[wasm_bindgen(unchecked_return_type = "StrategyName[]")]
pub fn strategies() -> Vec<String> {
    Strategy::ALL.iter().map(|s| s.name().to_string()).collect()
}

/// Whether this browser exposes WebGPU (`navigator.gpu`) at all.
#[wasm_bindgen(js_name = hasWebGpu)]
pub fn has_webgpu() -> bool {
    let navigator =
        Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    !navigator.is_undefined()
        && Reflect::get(&navigator, &"gpu".into()).is_ok_and(|gpu| !gpu.is_undefined())
}

/// What the browser itself says about its default adapter (`GPUAdapter.info`: vendor,
/// architecture, device, description), which wgpu's WebGPU backend leaves out of `AdapterInfo`.
/// `None` without WebGPU or an adapter.
pub async fn browser_adapter_info() -> Option<String> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = Reflect::get(&navigator, &"gpu".into())
        .ok()
        .filter(|g| !g.is_undefined())?;
    let request: js_sys::Function = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = Reflect::get(&adapter, &"info".into()).ok()?;
    let field = |name: &str| {
        Reflect::get(&info, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|v| !v.is_empty())
    };
    let mut text = ["vendor", "architecture", "device"]
        .iter()
        .filter_map(|name| field(name))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(description) = field("description") {
        text = if text.is_empty() {
            description
        } else {
            format!("{text} — {description}")
        };
    }
    (!text.is_empty()).then_some(text)
}

/// [`GpuContext::describe`], with the browser's own adapter description where wgpu's is blank.
pub async fn describe(ctx: &GpuContext) -> String {
    if ctx.info().name.is_empty()
        && let Some(browser) = browser_adapter_info().await
    {
        let info = ctx.info();
        return format!("{browser} ({:?}, {:?})", info.backend, info.device_type);
    }
    ctx.describe()
}

/// Turns a crate error into a JavaScript `Error` with the crate's message.
/// The crate's error as the `CompattnError` a call throws ([`errors`]).
pub(crate) fn js_error(error: compositional_attention::Error) -> ApiError {
    error.into()
}

/// Parses `"adapter"` / `"webgpu"` (also `"default"`) into a [`LimitsPolicy`].
pub fn parse_limits(limits: &str) -> Result<LimitsPolicy, String> {
    match limits {
        "" | "adapter" => Ok(LimitsPolicy::Adapter),
        "webgpu" | "default" => Ok(LimitsPolicy::WebGpuDefaults),
        other => Err(format!(
            "limits must be `adapter` or `webgpu`, not {other:?}"
        )),
    }
}

/// Options for the browser's device: WebGPU only, limits as asked, the built-in tilings
/// (tuning, which the crate keeps in memory only in a browser, has no JavaScript option yet).
pub fn browser_options(limits: LimitsPolicy) -> GpuOptions {
    GpuOptions {
        backends: Some(wgpu::Backends::BROWSER_WEBGPU),
        limits,
        tune: compositional_attention::TuneMode::Off,
        tune_cache: None,
        ..GpuOptions::default()
    }
}

pub(crate) fn get(options: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(options, &key.into())
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

/// `value` if it is a whole number in `range`, else a message naming `name`, the range (as
/// `range_text` says it) and the value: no silent truncation of `2.5`, `-1` or `NaN`. The one
/// check of every numeric option and argument of the page and of the JavaScript API.
pub fn whole_number(
    name: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    range_text: &str,
) -> Result<f64, String> {
    match value.fract() == 0.0 && range.contains(&value) {
        true => Ok(value),
        false => Err(format!(
            "{name} must be a whole number {range_text}, not {value}"
        )),
    }
}

/// [`check_size`] of a layer's problem: `batch·seq·width`, and the unfused strategy's
/// `batch·searches·seq²`, must fit 32 bits (the products checked, so no size can wrap).
pub fn check_elements(
    c: &Config,
    batch: usize,
    seq: usize,
    strategy: Strategy,
) -> Result<(), String> {
    let widest = c.dim.max(c.projection_width());
    let mut counts = vec![("batch·seq·width", [batch, seq, widest, 1])];
    if strategy == Strategy::Unfused {
        counts.push(("batch·searches·seq²", [batch, c.num_searches, seq, seq]));
    }
    for (what, factors) in counts {
        let count = factors
            .iter()
            .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64));
        if count.is_none_or(|count| count > u32::MAX as u64) {
            return Err(format!(
                "{what} = {}: more than 2³² elements (the kernels' 32-bit indices and wasm32's \
                 usize); make the problem smaller{}",
                count.map_or_else(|| "past 2⁶⁴".to_string(), |n| n.to_string()),
                if strategy == Strategy::Unfused {
                    " or use the fused strategy"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}
