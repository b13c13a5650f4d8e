//! A monotonic clock on every target: std's on native, the browser's `performance.now()` through
//! `web-time` in wasm, where `std::time::Instant::now` panics.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;
