//! The demo page's runner (feature `page`, not in the npm package): random weights and input
//! from a seed, the layer on them, and the comparison with the `f64` CPU reference.

use compositional_attention::testing::{self, ErrorStats};
use std::str::FromStr;

use compositional_attention::{CompositionalAttention, Config, GpuContext, Strategy, reference};
use js_sys::{Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::errors::ApiError;
use crate::{check_elements, describe, get, now_ms, parse_limits, whole_number};

/// The tolerance the tests and the page judge the GPU result by (`ErrorStats::within`).
pub const TOLERANCE: f64 = 1e-4;

/// One layer configuration and problem, as the page describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// The layer's hyper-parameters (`causal` and `prenorm` included).
    pub config: Config,
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// The attention strategy.
    pub strategy: Strategy,
    /// Seed of the random weights and input.
    pub seed: u64,
    /// Key lengths per batch row for a padding mask (`None`: no mask).
    pub mask_lengths: Option<Vec<usize>>,
    /// Timed forward passes after the first (which also builds pipelines and buffers).
    pub repeats: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            config: Config::new(64)
                .dim_head(16)
                .num_searches(4)
                .num_retrievals(2),
            batch: 1,
            seq: 32,
            strategy: Strategy::default(),
            seed: 1,
            mask_lengths: None,
            repeats: 5,
        }
    }
}

impl RunOptions {
    /// Reads a plain JavaScript object: `dim, dimHead, searches, retrievals, batch, seq` (numbers),
    /// `causal, prenorm` (booleans), `strategy` (a name from [`strategies`]), `seed`, `repeats`,
    /// and `maskLengths` (an array of key lengths per batch row, or a comma-separated string).
    /// Missing fields keep [`RunOptions::default`].
    pub fn from_js(options: &JsValue) -> Result<RunOptions, String> {
        let d = RunOptions::default();
        let config = Config::new(get_usize(options, "dim", d.config.dim)?)
            .dim_head(get_usize(options, "dimHead", d.config.dim_head)?)
            .num_searches(get_usize(options, "searches", d.config.num_searches)?)
            .num_retrievals(get_usize(options, "retrievals", d.config.num_retrievals)?)
            .causal(get_bool(options, "causal", false))
            .prenorm(get_bool(options, "prenorm", false));
        let strategy = match get(options, "strategy").and_then(|v| v.as_string()) {
            Some(name) => Strategy::from_str(&name).map_err(|e| e.to_string())?,
            None => d.strategy,
        };
        let mask_lengths = match get(options, "maskLengths") {
            None => None,
            Some(value) => {
                let text = match value.as_string() {
                    Some(text) => text,
                    None => js_sys::Array::from(&value)
                        .iter()
                        .map(|v| v.as_f64().map_or_else(String::new, |n| n.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                };
                let lengths = text
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<usize>()
                            .map_err(|_| format!("maskLengths: {s:?} is not a key count"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (!lengths.is_empty()).then_some(lengths)
            }
        };
        Ok(RunOptions {
            config,
            batch: get_usize(options, "batch", d.batch)?,
            seq: get_usize(options, "seq", d.seq)?,
            strategy,
            seed: get_usize(options, "seed", d.seed as usize)? as u64,
            mask_lengths,
            repeats: get_usize(options, "repeats", d.repeats)?.min(1000),
        })
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The adapter, as [`describe`] says it.
    pub adapter: String,
    /// The configuration that ran.
    pub options: RunOptions,
    /// The first forward: building pipelines and buffers, upload, compute, readback (ms).
    pub first_ms: f64,
    /// Median of the timed forward passes after the first, upload to readback (ms).
    pub forward_ms: Option<f64>,
    /// The CPU reference (`f64`) on the same input, for the checked rows (ms).
    pub reference_ms: f64,
    /// Query rows compared with the reference (all `batch·seq` of a small problem).
    pub checked_rows: usize,
    /// GPU result against the reference.
    pub stats: ErrorStats,
    /// `stats.within(TOLERANCE)`.
    pub within: bool,
    /// FLOPs of one forward (SPEC §7 count).
    pub flops: f64,
    /// GPU bytes the layer holds.
    pub gpu_bytes: u64,
    /// The first outputs, for a glance.
    pub head: Vec<f32>,
}

impl RunReport {
    fn to_js(&self) -> Result<JsValue, JsValue> {
        let o = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v).map(|_| ());
        let c = &self.options.config;
        set("adapter", self.adapter.clone().into())?;
        set("strategy", self.options.strategy.name().into())?;
        set(
            "config",
            format!(
                "dim {} dim_head {} searches {} retrievals {} batch {} seq {}{}{}{}",
                c.dim,
                c.dim_head,
                c.num_searches,
                c.num_retrievals,
                self.options.batch,
                self.options.seq,
                if c.causal { " causal" } else { "" },
                if c.prenorm { " prenorm" } else { "" },
                self.options
                    .mask_lengths
                    .as_ref()
                    .map(|l| format!(" mask lengths {l:?}"))
                    .unwrap_or_default()
            )
            .into(),
        )?;
        set("seed", (self.options.seed as f64).into())?;
        set("firstMs", self.first_ms.into())?;
        set(
            "forwardMs",
            self.forward_ms.map_or(JsValue::NULL, JsValue::from),
        )?;
        set("repeats", (self.options.repeats as f64).into())?;
        set("referenceMs", self.reference_ms.into())?;
        set("checkedRows", (self.checked_rows as f64).into())?;
        set(
            "rows",
            ((self.options.batch * self.options.seq) as f64).into(),
        )?;
        set("maxAbs", self.stats.max_abs.into())?;
        set("maxAbsRelative", self.stats.max_abs_relative().into())?;
        set("relL2", self.stats.rel_l2.into())?;
        set("maxExpected", self.stats.max_expected.into())?;
        set("nonFinite", (self.stats.non_finite as f64).into())?;
        set("len", (self.stats.len as f64).into())?;
        set("stats", self.stats.to_string().into())?;
        set("tolerance", TOLERANCE.into())?;
        set("within", self.within.into())?;
        set("flops", self.flops.into())?;
        let best_ms = self.forward_ms.unwrap_or(self.first_ms);
        set("gflops", (self.flops / (best_ms * 1e6)).into())?;
        set("gpuBytes", (self.gpu_bytes as f64).into())?;
        set(
            "head",
            js_sys::Float32Array::from(self.head.as_slice()).into(),
        )?;
        Ok(o.into())
    }
}

/// Problems whose `b·s·n²` is at most this are checked on every row; larger ones on
/// [`SAMPLED_ROWS`] rows spread over the batch and sequence (`reference::forward_rows` builds no
/// `n × n` tensor, so long sequences stay cheap in wasm memory and time).
pub const FULL_CHECK_SCORES: u64 = 1 << 22;
/// Rows the reference computes for a large problem.
pub const SAMPLED_ROWS: usize = 64;

/// Refuses sizes whose element counts do not fit 32 bits, with the page's own message, before
/// anything is allocated: the kernels index with `u32` and wasm32's memory is 4 GiB. (The crate
/// computes sizes in checked `u64` itself, so nothing would wrap; this says why earlier.)
pub fn check_size(options: &RunOptions) -> Result<(), String> {
    check_elements(
        &options.config,
        options.batch,
        options.seq,
        options.strategy,
    )
}

/// The reference rows to check: all of them for a small problem, else [`SAMPLED_ROWS`] spread
/// evenly from the first to the last.
pub fn rows_to_check(options: &RunOptions) -> Vec<(usize, usize)> {
    let (batch, seq) = (options.batch, options.seq);
    let total = batch * seq;
    let scores = batch as u64 * options.config.num_searches as u64 * (seq as u64).pow(2);
    let indices: Vec<usize> = if scores <= FULL_CHECK_SCORES || total <= SAMPLED_ROWS {
        (0..total).collect()
    } else {
        let mut picked: Vec<usize> = (0..SAMPLED_ROWS)
            .map(|k| (k as u64 * (total as u64 - 1) / (SAMPLED_ROWS as u64 - 1)) as usize)
            .collect();
        picked.dedup();
        picked
    };
    indices.into_iter().map(|r| (r / seq, r % seq)).collect()
}

/// Runs `options` on `ctx`: random weights and input from the seed, one forward that also builds
/// pipelines and buffers, `repeats` timed forwards, the CPU reference, and the comparison.
pub async fn run_on(ctx: &GpuContext, options: &RunOptions) -> Result<RunReport, String> {
    let c = options.config;
    c.validate().map_err(|e| e.to_string())?;
    check_size(options)?;
    let (weights, input) = testing::random_problem(
        c,
        options.batch,
        options.seq,
        options.mask_lengths.as_deref(),
        1.0,
        options.seed,
    )
    .map_err(|e| e.to_string())?;
    let mut layer = CompositionalAttention::new(ctx, &weights).map_err(|e| e.to_string())?;
    layer.set_strategy(options.strategy);

    let start = now_ms();
    let y = layer
        .forward_input(&input)
        .await
        .map_err(|e| e.to_string())?;
    let first_ms = now_ms() - start;
    let mut times = Vec::with_capacity(options.repeats);
    for _ in 0..options.repeats {
        let start = now_ms();
        layer
            .forward_input(&input)
            .await
            .map_err(|e| e.to_string())?;
        times.push(now_ms() - start);
    }
    times.sort_by(f64::total_cmp);
    let forward_ms = (!times.is_empty()).then(|| times[times.len() / 2]);

    let rows = rows_to_check(options);
    let start = now_ms();
    let expected = reference::forward_rows(
        &weights,
        &input.x,
        input.batch,
        input.seq,
        input.mask.as_deref(),
        &rows,
    )
    .map_err(|e| e.to_string())?;
    let reference_ms = now_ms() - start;
    let dim = c.dim;
    let actual: Vec<f32> = rows
        .iter()
        .flat_map(|&(b, i)| {
            let start = (b * options.seq + i) * dim;
            y[start..start + dim].iter().copied()
        })
        .collect();
    let stats = ErrorStats::compare(&actual, &expected);
    Ok(RunReport {
        adapter: describe(ctx).await,
        options: options.clone(),
        first_ms,
        forward_ms,
        reference_ms,
        checked_rows: rows.len(),
        within: stats.within(TOLERANCE),
        stats,
        flops: c.forward_flops(options.batch, options.seq),
        gpu_bytes: layer.gpu_bytes(),
        head: y.iter().take(8).copied().collect(),
    })
}

/// A WebGPU device for the page: opened once, shared by every run.
#[wasm_bindgen]
pub struct Session {
    ctx: GpuContext,
    adapter: String,
}

#[wasm_bindgen]
impl Session {
    /// The browser's WebGPU device for `limits` (opened on first use, shared with
    /// `CompositionalAttention.load` and `random`). `limits`: `"adapter"` (everything
    /// the adapter offers) or `"webgpu"` (WebGPU's defaults, what every browser grants).
    pub async fn open(limits: String) -> Result<Session, ApiError> {
        let policy = parse_limits(&limits).map_err(ApiError::invalid)?;
        // The device `CompositionalAttention.load` and `random` share: one per page and policy.
        let device = crate::api::shared_device(policy).await?;
        Ok(Session {
            ctx: device.ctx.clone(),
            adapter: device.adapter.clone(),
        })
    }

    /// "name (backend, device type, driver …)", the browser's description where wgpu has no name.
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// The device limits the kernels may rely on, the ones that matter here.
    pub fn limits(&self) -> String {
        let l = self.ctx.limits();
        format!(
            "max storage binding {} MiB, max buffer {} MiB, workgroup storage {} KiB, \
             {} invocations/workgroup, {} storage buffers/stage, timestamps {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_storage_buffers_per_shader_stage,
            if self.ctx.has_timestamps() {
                "yes"
            } else {
                "no"
            },
        )
    }

    /// Runs the layer on random weights and input (see [`RunOptions::from_js`] for the fields)
    /// and resolves to a report object: `adapter, strategy, config, seed, firstMs, forwardMs,
    /// repeats, referenceMs, checkedRows, rows, maxAbs, maxAbsRelative, relL2, maxExpected,
    /// nonFinite, len, stats, tolerance, within, flops, gflops, gpuBytes, head`.
    pub async fn run(&self, options: JsValue) -> Result<JsValue, JsValue> {
        let options = RunOptions::from_js(&options).map_err(ApiError::invalid)?;
        let report = run_on(&self.ctx, &options)
            .await
            .map_err(ApiError::invalid)?;
        report.to_js()
    }
}

/// The page's form values: numbers or numeric text.
fn get_usize(options: &JsValue, key: &str, default: usize) -> Result<usize, String> {
    let Some(value) = get(options, key) else {
        return Ok(default);
    };
    let number = value
        .as_f64()
        .or_else(|| value.as_string().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| format!("{key} must be a number"))?;
    Ok(whole_number(key, number, 0.0..=u32::MAX as f64, "≥ 0")? as usize)
}

/// The page's checkboxes: any truthy value.
fn get_bool(options: &JsValue, key: &str, default: bool) -> bool {
    get(options, key).map_or(default, |v| v.is_truthy())
}
