//! Measuring the candidate tilings of a shape class (issue 18, target 4; ARCHITECTURE
//! decision 20): the layer runs each candidate's whole forward on its own weights and times the
//! tiled kernel alone; the fastest must beat the built-in tiling by more than 5 % in a run-off
//! to replace it; the context's store keeps the winner, and the plan takes it from then on
//! (`plan::tuned`).
//!
//! It runs on the first forward (or `prepare`, or `encode`) of a shape class whose choice is
//! not stored, when the context's [`TuneMode`] is not `Off` (natively; in a browser only when
//! asked), and on an explicit [`CompositionalAttention::tune`]. A first use measures for about
//! [`FIRST_USE_BUDGET_MS`]: where the built-in tiling's forward says that measuring every
//! candidate would take longer (long sequences on CPU drivers, where one forward takes
//! seconds), it keeps the built-in tiling, and it starts nothing more once the budget is spent;
//! an explicit `tune` measures whatever it costs. A choice kept that way is stored like a
//! measured one: `tune` (or `COMPATTN_TUNE=force` with a budget that fits) replaces it.

use super::{CompositionalAttention, run};
use crate::error::Result;
use crate::gpu::timing::TimingSource;
use crate::gpu::{CompileProgress, TuneMode};
use crate::plan::ExecutionPlan;
use crate::plan::tuned::{Tiling, TunedChoice};
use crate::workspace::Workspace;

/// Forwards timed per candidate after the one that warms it up; the fastest counts (the least
/// disturbed by other work on the machine).
const TIMED_RUNS: usize = 3;

/// Rounds in which the fastest candidate and the built-in tiling are timed again, alternately.
const RUN_OFF_ROUNDS: usize = 3;

/// How much faster than the built-in tiling a candidate must be to replace it.
const WIN_MARGIN: f64 = 0.95;

/// What a first use may spend measuring, in milliseconds. Two checks keep near it: the built-in
/// tiling is timed first, and where its forward's wall time times every forward of the
/// measuring ([`projected_forwards`]) exceeds the budget, it is kept after one timed forward;
/// and no candidate or run-off turn starts once the budget has been spent (compiles count
/// there, and candidates slower than the built-in one). What has started runs to its end, so
/// a long forward can overrun it by a few forwards. Without it the first forward of a
/// 16 384-token layer on lavapipe measured for over twenty minutes (about 25 s a forward).
const FIRST_USE_BUDGET_MS: f64 = 60_000.0;

/// The two limits of a budgeted measuring, in milliseconds (both [`FIRST_USE_BUDGET_MS`] for a
/// first use; apart in the tests, to check each alone).
#[derive(Clone, Copy, Debug)]
pub(super) struct Budget {
    /// The projected time of the whole measuring over which the first candidate that runs is
    /// kept after one timed forward.
    projected_ms: f64,
    /// The time after which no candidate or run-off turn starts.
    deadline_ms: f64,
}

impl Budget {
    /// A first use's (native only: in a browser only `tune` measures, without a budget).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(super) const FIRST_USE: Budget = Budget {
        projected_ms: FIRST_USE_BUDGET_MS,
        deadline_ms: FIRST_USE_BUDGET_MS,
    };
}

/// Every forward that measuring `candidates` tilings runs: each candidate's warm-up and timed
/// forwards, and as many again for each turn of the run-off.
fn projected_forwards(candidates: usize) -> f64 {
    ((candidates + 2 * RUN_OFF_ROUNDS) * (1 + TIMED_RUNS)) as f64
}

/// One candidate's measurement: the time that ranks it and its fastest whole forward.
struct Timed {
    /// The tiled kernel's GPU time where there are timestamps, else `wall_ms`.
    ms: f64,
    /// The fastest forward's host wall time, upload to readback.
    wall_ms: f64,
    /// Forwards timed (after the warm-up): [`TIMED_RUNS`], or 1 where the first was over the
    /// caller's limit. Read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    forwards: usize,
}

/// One candidate's time in a [`TuneReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct TunedTime {
    /// The tiling, as the cache file stores it (`blocked texels=16 slices=8`, `fused
    /// 64,1,32,1`).
    pub choice: String,
    /// Its fastest forward in milliseconds: the tiled kernel's GPU time where the adapter has
    /// timestamp queries, else the host wall time of the whole forward, upload to readback.
    pub ms: f64,
}

/// What [`CompositionalAttention::tune`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneReport {
    /// The shape class the choice is kept for (core, kernel family, precision, widths, tokens
    /// rounded up to a power of two).
    pub class: String,
    /// Every candidate that ran, the chosen one first, then the others fastest first; the
    /// built-in tiling is among them.
    pub candidates: Vec<TunedTime>,
    /// The choice now stored: the fastest candidate if it ran more than 5 % faster than the
    /// built-in tiling in a run-off against it, else the built-in tiling.
    pub chosen: String,
}

impl CompositionalAttention {
    /// Times every candidate tiling of the core a forward at `batch × seq` runs, on random
    /// inputs, and keeps the fastest for its shape class: in this context's memory and,
    /// natively, in the cache file ([`GpuContext::tune_cache_path`](crate::GpuContext::tune_cache_path)).
    /// Workspaces of the class built before with another tiling are dropped, so the next
    /// forward runs the choice; other shapes' workspaces stay (a browser's `prepare`d shapes
    /// stay prepared).
    ///
    /// `Ok(None)` where there is nothing to choose (the unfused strategy, a KV cache or memory,
    /// a core with one tiling, a tiling set by `COMPATTN_FUSED_TILING` or
    /// `COMPATTN_BLOCKED_SLICES`) or tuning is [`TuneMode::Off`]. Natively a forward does this
    /// by itself on first use of a shape class unless tuning is off, starting nothing new
    /// after 60 s (the built-in tiling is kept where measuring would take longer); this call
    /// measures every candidate whatever it costs (a long sequence on a CPU driver: minutes).
    /// Call it to tune ahead (a warm-up). In a browser only this call measures; the choice
    /// stays in memory.
    pub async fn tune(&mut self, batch: usize, seq: usize) -> Result<Option<TuneReport>> {
        self.ctx.check_alive("tune")?;
        let ctx = self.ctx.clone();
        // GL serialises GPU work (GpuContext::serial); forward and prepare hold it around
        // workspace_for, which measures inside it.
        let _serial = ctx.serial().await;
        self.measure(batch, seq, self.strategy, None, &mut |_| {})
            .await
    }

    /// Blocking [`CompositionalAttention::tune`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn tune_blocking(&mut self, batch: usize, seq: usize) -> Result<Option<TuneReport>> {
        pollster::block_on(self.tune(batch, seq))
    }

    /// Measures the shape class of `batch × seq` where tuning is on and its choice is not stored
    /// yet (in memory, or in the file in `On` mode). Native only: in a browser the first use
    /// never measures (the JavaScript package's size budget: this call's state machine in every
    /// forward was 21 KB of wasm; and a page's first frame), and a program calls
    /// [`CompositionalAttention::tune`] instead.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) async fn tune_if_new(
        &mut self,
        batch: usize,
        seq: usize,
        strategy: crate::Strategy,
        progress: &mut dyn FnMut(CompileProgress),
    ) -> Result<()> {
        if self.ctx.tune_mode() == TuneMode::Off || !self.config.plain_self_attention() {
            return Ok(());
        }
        let plan = self.plan_for(batch, seq, strategy)?;
        if let Some((class, _)) = plan.tuning_candidates(&self.ctx, &self.config)
            && self.ctx.tuning().get(&class).is_none()
        {
            self.measure(batch, seq, strategy, Some(Budget::FIRST_USE), progress)
                .await?;
        }
        Ok(())
    }

    /// Measures the candidates of `batch × seq`'s shape class and stores the choice. With a
    /// `budget` ([`Budget::FIRST_USE`]), the first candidate that runs (the built-in
    /// tiling, unless it fails) is measured first and the others only if all of them are
    /// projected to fit; otherwise that candidate is stored as the choice, so that later
    /// forwards (and processes) do not pay for the projection again. Once the budget is spent
    /// no candidate or run-off turn starts, and the built-in tiling stays.
    pub(super) async fn measure(
        &mut self,
        batch: usize,
        seq: usize,
        strategy: crate::Strategy,
        budget: Option<Budget>,
        progress: &mut dyn FnMut(CompileProgress),
    ) -> Result<Option<TuneReport>> {
        crate::shape::check_tokens(&self.config, batch, seq)?;
        if self.ctx.tune_mode() == TuneMode::Off || !self.config.plain_self_attention() {
            return Ok(None);
        }
        self.sync_parameters().await?;
        // The candidates of the core the plan runs now.
        let Some((class, candidates)) = self
            .plan_for(batch, seq, strategy)?
            .tuning_candidates(&self.ctx, &self.config)
        else {
            return Ok(None);
        };
        let ctx = self.ctx.clone();
        let dim = self.config.dim;
        let mut rng = crate::rng::Rng::seed_from_u64(0x7u64 << 32 | (batch * seq) as u64);
        let mut x: Vec<f32> =
            crate::host_memory::try_with_capacity("tuning input", batch * seq * dim)?;
        x.extend((0..batch * seq * dim).map(|_| rng.uniform_f32(-1.0, 1.0)));
        // Each candidate is passed to the plan, never stored, so another layer on this context
        // only ever runs a tiling that won.
        let mut times = Vec::new();
        let mut first_error = None;
        let built_in_choice = candidates[0];
        let count = candidates.len();
        let started = crate::time::Instant::now();
        let out_of_time = |what: &str| match budget {
            Some(Budget { deadline_ms, .. })
                if started.elapsed().as_secs_f64() * 1e3 > deadline_ms =>
            {
                log::info!(
                    "tuning {class}: the first use's {:.0} s are spent; {what}",
                    deadline_ms / 1e3
                );
                true
            }
            _ => false,
        };
        // The longest first forward for which measuring every candidate fits the budget.
        let longest_forward_ms = budget.map_or(f64::INFINITY, |b| {
            b.projected_ms / projected_forwards(count)
        });
        // Set when the budget ran out before every candidate was measured: no run-off then.
        let mut cut_short = false;
        for choice in candidates {
            // Not checked before a first time exists: failures end quickly, and the first
            // candidate that runs is bounded by the projection.
            if !times.is_empty() && out_of_time("the built-in tiling stays") {
                cut_short = true;
                break;
            }
            // The first candidate that runs (the built-in one, unless it failed) sets the pace.
            let stop_above_ms = if times.is_empty() {
                longest_forward_ms
            } else {
                f64::INFINITY
            };
            match self
                .time_candidate(&choice, batch, seq, strategy, &x, stop_above_ms, progress)
                .await
            {
                Ok(Some(timed)) => {
                    times.push(TunedTime {
                        choice: choice.encode(),
                        ms: timed.ms,
                    });
                    if let Some(Budget { projected_ms, .. }) = budget
                        && timed.wall_ms > stop_above_ms
                    {
                        log::info!(
                            "tuning {class}: measuring {count} tilings would take about {:.0} s \
                             ({:.0} ms a forward), over the first use's {:.0} s: {} is kept \
                             (CompositionalAttention::tune measures them all)",
                            timed.wall_ms * projected_forwards(count) / 1e3,
                            timed.wall_ms,
                            projected_ms / 1e3,
                            choice.encode()
                        );
                        break;
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    ctx.check_alive("tuning")?;
                    log::warn!("tuning {class}: {} failed: {error}", choice.encode());
                    first_error.get_or_insert(error);
                }
            }
        }
        // The built-in tiling is the first candidate. A challenger must beat it by
        // WIN_MARGIN in a run-off, alternating with it: on a noisy machine (lavapipe's times
        // vary by ±25 % from run to run) a single turn each picked slower tilings than the
        // built-in one (BENCHMARKS.md).
        let built_in = built_in_choice.encode();
        let fastest = times
            .iter()
            .min_by(|a, b| a.ms.total_cmp(&b.ms))
            .map(|t| t.choice.clone());
        let built_in_at = times.iter().position(|t| t.choice == built_in);
        let challenger_at = fastest.and_then(|f| times.iter().position(|t| t.choice == f));
        if let (Some(b), Some(c)) = (built_in_at, challenger_at)
            && b != c
        {
            // A run-off cut short by the budget (or never run) leaves the built-in tiling.
            let mut confirmed = !cut_short;
            let rounds = if cut_short { 0 } else { RUN_OFF_ROUNDS };
            'run_off: for _ in 0..rounds {
                for i in [c, b] {
                    if out_of_time("the built-in tiling stays") {
                        confirmed = false;
                        break 'run_off;
                    }
                    let Some(choice) = TunedChoice::decode(&times[i].choice) else {
                        continue;
                    };
                    // A failure here leaves the first round's time.
                    match self
                        .time_candidate(&choice, batch, seq, strategy, &x, f64::INFINITY, progress)
                        .await
                    {
                        Ok(Some(timed)) => times[i].ms = times[i].ms.min(timed.ms),
                        Ok(None) => {}
                        Err(error) => {
                            ctx.check_alive("tuning")?;
                            log::warn!("tuning {class}: {} failed: {error}", choice.encode());
                        }
                    }
                }
            }
            if !confirmed || times[c].ms >= WIN_MARGIN * times[b].ms {
                // Not clearly faster: the built-in tiling stays, first in the report.
                let kept = times.remove(b);
                times.sort_by(|a, b| a.ms.total_cmp(&b.ms));
                times.insert(0, kept);
            } else {
                times.sort_by(|a, b| a.ms.total_cmp(&b.ms));
            }
        } else {
            times.sort_by(|a, b| a.ms.total_cmp(&b.ms));
        }
        let Some(best) = times.first().cloned() else {
            return match first_error {
                Some(error) => Err(error),
                None => Ok(None),
            };
        };
        ctx.tuning().set(&class, &best.choice);
        // Workspaces of this class built with another tiling would keep running it.
        if let Some(chosen) = TunedChoice::decode(&best.choice) {
            let config = self.config;
            self.workspaces.drop_where(|plan| {
                plan.tuning_candidates(&ctx, &config)
                    .is_some_and(|(c, _)| c == class && !plan.runs(&chosen))
            });
        }
        let measured: Vec<String> = times
            .iter()
            .map(|t| format!("{} {:.2} ms", t.choice, t.ms))
            .collect();
        log::info!(
            "tuned {class}: {} of [{}]",
            best.choice,
            measured.join(", ")
        );
        Ok(Some(TuneReport {
            class,
            candidates: times,
            chosen: best.choice,
        }))
    }

    /// The fastest of [`TIMED_RUNS`] forwards with the plan given `choice`, after one that warms
    /// it up (and compiles); `None` if the plan did not take it. Only one is timed if its wall
    /// time exceeds `stop_above_ms` (the first use's budget).
    #[allow(clippy::too_many_arguments)]
    async fn time_candidate(
        &mut self,
        choice: &TunedChoice,
        batch: usize,
        seq: usize,
        strategy: crate::Strategy,
        x: &[f32],
        stop_above_ms: f64,
        progress: &mut dyn FnMut(CompileProgress),
    ) -> Result<Option<Timed>> {
        let plan = ExecutionPlan::resolve_tiled(
            &self.ctx,
            &self.config,
            self.precision,
            strategy,
            (batch, seq),
            Tiling::Candidate(choice),
        )?;
        if !plan.runs(choice) {
            return Ok(None);
        }
        let weights = self.weights.for_plan(&self.ctx, &plan)?;
        let mut workspace =
            Workspace::build(&self.ctx, &self.config, weights, plan, None, progress).await?;
        let dim = self.config.dim;
        // With GPU timestamps, the tiled kernel alone: the GEMMs around it are the same for
        // every candidate, and on lavapipe their noise hid differences of 40 % in the core
        // (BENCHMARKS.md). Without timestamps, the host wall time of the whole forward.
        run(&self.ctx, &mut workspace, dim, x, None, true, None).await?;
        let mut best = f64::INFINITY;
        let mut wall_ms = f64::INFINITY;
        let mut forwards = 0;
        for _ in 0..TIMED_RUNS {
            let (timed, _) = run(&self.ctx, &mut workspace, dim, x, None, true, None).await?;
            let kernel: f64 = timed
                .kernels
                .iter()
                .filter(|k| k.label.starts_with(choice.kernel_name()))
                .map(|k| k.ms)
                .sum();
            best = best.min(match timed.source {
                TimingSource::GpuTimestamps if kernel > 0.0 => kernel,
                _ => timed.wall_ms,
            });
            wall_ms = wall_ms.min(timed.wall_ms);
            forwards += 1;
            if wall_ms > stop_above_ms {
                break;
            }
        }
        Ok(Some(Timed {
            ms: best,
            wall_ms,
            forwards,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;
    use crate::gpu::test_device::rng;
    use crate::gpu::{GpuContext, GpuOptions, KernelFamilyRequest, TuneMode};
    use crate::plan::CorePlan;
    use crate::testing::{ErrorStats, random_problem};
    use crate::{CompositionalAttention, Config, reference};

    /// A context of its own with tuning on: in memory only, or over `cache`.
    fn tuned_context(
        kernels: KernelFamilyRequest,
        mode: TuneMode,
        cache: Option<std::path::PathBuf>,
    ) -> GpuContext {
        let options = GpuOptions {
            kernels,
            tune: mode,
            tune_cache: cache,
            ..GpuOptions::from_env().expect("GPU options from the environment")
        };
        pollster::block_on(GpuContext::new(&options)).expect("a GPU adapter")
    }

    /// A layer of `weights` on a context of its own with tuning on (in memory), with the class
    /// and candidates of its 3 × 37 plan; `None` where that plan has nothing to tune.
    fn tuned_layer(
        kernels: KernelFamilyRequest,
        weights: &crate::Weights,
    ) -> Option<(
        GpuContext,
        CompositionalAttention,
        String,
        Vec<super::TunedChoice>,
    )> {
        let ctx = tuned_context(kernels, TuneMode::On, None);
        let layer = CompositionalAttention::new(&ctx, weights).unwrap();
        let (class, candidates) = layer
            .plan(3, 37)
            .unwrap()
            .tuning_candidates(&ctx, weights.config())?;
        Some((ctx, layer, class, candidates))
    }

    /// 3 sequences of 37 rows (whole, padded, fully masked), causal; values 5 × 16 wide, so the
    /// blocked core has two 64-column blocks (or three of 32) and no size is a tile multiple.
    fn problem(seed: u64) -> (crate::Weights, crate::Input, Vec<f64>) {
        let config = Config::new(40)
            .dim_head(16)
            .num_searches(3)
            .num_retrievals(5)
            .causal(true);
        let (weights, input) =
            random_problem(config, 3, 37, Some(&[37, 20, 0]), 2.0, seed).expect("a problem");
        let expected = reference::forward(&weights, &input.x, 3, 37, input.mask.as_deref())
            .expect("the reference");
        (weights, input, expected)
    }

    /// A tuned plan changes results by f32 rounding at most: every candidate of the blocked
    /// core (CPU family) and of the fused kernel (GPU family) matches the f64 reference, and
    /// the built-in plan's output within 1e-5 of its scale.
    #[test]
    fn every_candidate_computes_the_built_in_result() {
        let (mut rng, what) = rng("every_candidate_computes_the_built_in_result");
        let (weights, input, expected) = problem(rng.next_u64());
        for kernels in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
            let ctx = tuned_context(kernels, TuneMode::On, None);
            let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
            let plan = layer.plan(3, 37).unwrap();
            let Some((class, candidates)) = plan.tuning_candidates(&ctx, &weights.config().clone())
            else {
                // The GL backend's CPU family reads buffers: its fused kernel has candidates,
                // but a WebGPU-limited one may have a single tiling.
                eprintln!("{what}: {kernels:?}: no candidates for {}", plan.describe());
                continue;
            };
            assert!(
                plan.runs(&candidates[0]),
                "{what}: the first candidate is not the built-in tiling: {}",
                plan.describe()
            );
            let mut built_in: Option<Vec<f32>> = None;
            for choice in &candidates {
                ctx.tuning().set_in_memory(&class, &choice.encode());
                layer.workspaces.clear();
                let plan = layer.plan(3, 37).unwrap();
                assert!(
                    plan.runs(choice),
                    "{what}: {} not taken: {}",
                    choice.encode(),
                    plan.describe()
                );
                let y = layer
                    .forward_blocking(&input.x, 3, 37, input.mask.as_deref())
                    .unwrap();
                let stats = ErrorStats::compare(&y, &expected);
                let name = format!("{what}: {kernels:?} {class}: {}", choice.encode());
                assert!(stats.within(1e-4), "{name}: {stats}");
                match &built_in {
                    None => built_in = Some(y),
                    Some(first) => {
                        let against: Vec<f64> = first.iter().map(|&v| v as f64).collect();
                        let stats = ErrorStats::compare(&y, &against);
                        assert!(
                            stats.max_abs_relative() <= 1e-5,
                            "{name} against the built-in: {stats}"
                        );
                    }
                }
            }
            eprintln!("{class}: {} candidates", candidates.len());
        }
    }

    /// `tune` measures, keeps the fastest in memory and in the file, and the plan takes it; a
    /// new context in `On` mode reads the file, `Force` and `Off` do not, and a file that does
    /// not parse, comes from another crate version or holds a choice that is not a candidate
    /// leaves the built-in plan. Both kernel families (the blocked core, the fused kernel).
    #[test]
    fn tuning_is_kept_and_read_back() {
        let (mut rng, what) = rng("tuning_is_kept_and_read_back");
        let (weights, input, expected) = problem(rng.next_u64());
        let dir = std::env::temp_dir().join(format!(
            "compattn-tuning-{}-{}",
            std::process::id(),
            rng.next_u64()
        ));
        let path = dir.join("tuning.json");
        for kernels in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
            let _ = std::fs::remove_file(&path);
            let ctx = tuned_context(kernels, TuneMode::On, Some(path.clone()));
            let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
            let built_in = layer.plan(3, 37).unwrap();
            let report = layer
                .tune_blocking(3, 37)
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: nothing to tune in {}", built_in.describe()));
            let what = format!("{what}: {kernels:?} {}", report.class);
            assert!(report.candidates.len() >= 2, "{what}: {report:?}");
            assert_eq!(
                report.candidates[0].choice, report.chosen,
                "{what}: fastest first"
            );
            assert!(
                report
                    .candidates
                    .iter()
                    .all(|t| t.ms.is_finite() && t.ms > 0.0)
            );
            assert_eq!(ctx.tuned_choices().get(&report.class), Some(&report.chosen));
            let file = std::fs::read_to_string(&path).expect("the cache file");
            assert!(
                file.contains(&report.class) && file.contains(&report.chosen),
                "{file}"
            );
            let chosen = super::TunedChoice::decode(&report.chosen).unwrap();
            assert!(layer.plan(3, 37).unwrap().runs(&chosen), "{what}");
            let y = layer
                .forward_blocking(&input.x, 3, 37, input.mask.as_deref())
                .unwrap();
            let stats = ErrorStats::compare(&y, &expected);
            assert!(stats.within(1e-4), "{what}: tuned forward: {stats}");

            // Another candidate than the built-in tiling, written by hand, to tell reading
            // from not reading.
            let other = match built_in.core() {
                CorePlan::Blocked(b) => format!("blocked texels={} slices=1", b.block_texels),
                CorePlan::Fused(f) => format!(
                    "fused {},{},{},{}",
                    f.tiling.wg,
                    f.tiling.qpi,
                    (f.tiling.bk / 2).max(4),
                    f.tiling.stage as u8
                ),
                _ => unreachable!("a tuned core"),
            };
            let text = file.replace(&report.chosen, &other);
            std::fs::write(&path, &text).unwrap();
            let other_choice = super::TunedChoice::decode(&other).unwrap();
            let plan_in = |mode| {
                let ctx = tuned_context(kernels, mode, Some(path.clone()));
                CompositionalAttention::new(&ctx, &weights)
                    .unwrap()
                    .plan(3, 37)
                    .unwrap()
            };
            assert!(
                plan_in(TuneMode::On).runs(&other_choice),
                "{what}: On reads the file"
            );
            assert_eq!(
                plan_in(TuneMode::Force),
                built_in,
                "{what}: Force does not read it"
            );
            assert_eq!(
                plan_in(TuneMode::Off),
                built_in,
                "{what}: Off does not read it"
            );
            // Entries that are not candidates, though they parse (and the fused one passes
            // FusedTiling::check on native): ignored.
            for broken in [
                "{ not json".to_string(),
                text.replace(&other, "blocked texels=5 slices=99"),
                text.replace(&other, "blocked texels=16 slices=7"),
                text.replace(&other, "fused 8,1,100000,0"),
                text.replace(env!("CARGO_PKG_VERSION"), "0.0.0-other"),
            ] {
                std::fs::write(&path, &broken).unwrap();
                assert_eq!(plan_in(TuneMode::On), built_in, "{what}: {broken}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A first use keeps the built-in tiling, stores it as the class's choice and measures
    /// nothing else where its projected measuring exceeds the budget (then the built-in tiling
    /// is timed once after its warm-up) and where the budget's time is spent after the first
    /// candidate, each limit alone; the same call with room to spare measures every
    /// candidate; a candidate's timing stops after one forward over its limit. Both kernel
    /// families.
    #[test]
    fn first_use_over_budget_keeps_the_built_in_tiling() {
        let (mut rng, what) = rng("first_use_over_budget_keeps_the_built_in_tiling");
        let (weights, input, expected) = problem(rng.next_u64());
        for kernels in [KernelFamilyRequest::Cpu, KernelFamilyRequest::Gpu] {
            let over_projection = Budget {
                projected_ms: 0.0,
                deadline_ms: f64::MAX,
            };
            let past_deadline = Budget {
                projected_ms: f64::MAX,
                deadline_ms: 0.0,
            };
            for budget in [over_projection, past_deadline] {
                let Some((ctx, mut layer, class, candidates)) = tuned_layer(kernels, &weights)
                else {
                    eprintln!("{what}: {kernels:?}: no candidates");
                    continue;
                };
                let built_in = layer.plan(3, 37).unwrap();
                let strategy = layer.strategy;
                let report =
                    pollster::block_on(layer.measure(3, 37, strategy, Some(budget), &mut |_| {}))
                        .unwrap()
                        .unwrap_or_else(|| panic!("{what}: nothing measured for {class}"));
                let what = format!("{what}: {kernels:?} {class} {budget:?}");
                let built_in_choice = candidates[0].encode();
                assert_eq!(report.chosen, built_in_choice, "{what}: {report:?}");
                assert_eq!(report.candidates.len(), 1, "{what}: {report:?}");
                assert!(report.candidates[0].ms > 0.0, "{what}: {report:?}");
                assert_eq!(
                    ctx.tuned_choices().get(&class),
                    Some(&built_in_choice),
                    "{what}: the choice is stored"
                );
                assert_eq!(layer.plan(3, 37).unwrap(), built_in, "{what}");
                let y = layer
                    .forward_blocking(&input.x, 3, 37, input.mask.as_deref())
                    .unwrap();
                let stats = ErrorStats::compare(&y, &expected);
                assert!(stats.within(1e-4), "{what}: {stats}");
            }

            let Some((_ctx, mut layer, _, candidates)) = tuned_layer(kernels, &weights) else {
                continue;
            };
            let strategy = layer.strategy;
            let room = Budget {
                projected_ms: f64::MAX,
                deadline_ms: f64::MAX,
            };
            let report =
                pollster::block_on(layer.measure(3, 37, strategy, Some(room), &mut |_| {}))
                    .unwrap()
                    .unwrap();
            assert_eq!(
                report.candidates.len(),
                candidates.len(),
                "{what}: {kernels:?}: within the budget every candidate is measured: {report:?}"
            );

            // A forward over the limit is the only one timed; under it, every timed run.
            for (limit, forwards) in [(0.0, 1), (f64::INFINITY, super::TIMED_RUNS)] {
                let timed = pollster::block_on(layer.time_candidate(
                    &candidates[0],
                    3,
                    37,
                    strategy,
                    &input.x,
                    limit,
                    &mut |_| {},
                ))
                .unwrap()
                .unwrap();
                assert_eq!(timed.forwards, forwards, "{what}: limit {limit}");
                assert!(
                    timed.wall_ms > 0.0 && timed.ms > 0.0,
                    "{what}: limit {limit}"
                );
            }
        }
    }

    /// The first forward of a new class measures by itself (in `On` mode, memory only here) and
    /// keeps other shapes' workspaces; `Off` measures nothing and `tune` says so; a cache file
    /// that cannot be written costs nothing but a warning.
    #[test]
    fn first_use_tunes_and_off_does_not() {
        let (mut rng, what) = rng("first_use_tunes_and_off_does_not");
        let (weights, input, expected) = problem(rng.next_u64());
        let ctx = tuned_context(KernelFamilyRequest::Auto, TuneMode::On, None);
        let mut layer = CompositionalAttention::new(&ctx, &weights).unwrap();
        // Another class first (a different sequence-length bucket), prepared and kept.
        layer.prepare_blocking(1, 300).unwrap();
        let before = ctx.tuned_choices();
        let y = layer
            .forward_blocking(&input.x, 3, 37, input.mask.as_deref())
            .unwrap();
        let stats = ErrorStats::compare(&y, &expected);
        assert!(stats.within(1e-4), "{what}: {stats}");
        let plan = layer.plan(3, 37).unwrap();
        if let Some((class, _)) = plan.tuning_candidates(&ctx, weights.config()) {
            assert!(
                !before.contains_key(&class),
                "{what}: {class} measured early"
            );
            assert!(
                ctx.tuned_choices().contains_key(&class),
                "{what}: {class} not measured"
            );
            assert!(
                layer
                    .workspaces
                    .shapes()
                    .iter()
                    .any(|&(b, n, _)| (b, n) == (1, 300)),
                "{what}: the other shape's workspace was dropped: {:?}",
                layer.workspaces.shapes()
            );
        }

        let off = tuned_context(KernelFamilyRequest::Auto, TuneMode::Off, None);
        let mut layer = CompositionalAttention::new(&off, &weights).unwrap();
        assert_eq!(
            layer.tune_blocking(3, 37).unwrap(),
            None,
            "{what}: Off tunes"
        );
        layer
            .forward_blocking(&input.x, 3, 37, input.mask.as_deref())
            .unwrap();
        assert!(
            off.tuned_choices().is_empty(),
            "{what}: Off stored a choice"
        );

        // A cache path under a regular file: its folder cannot be made.
        let file = std::env::temp_dir().join(format!("compattn-not-a-dir-{}", rng.next_u64()));
        std::fs::write(&file, "a file").unwrap();
        let unwritable = tuned_context(
            KernelFamilyRequest::Auto,
            TuneMode::On,
            Some(file.join("tuning.json")),
        );
        let mut layer = CompositionalAttention::new(&unwritable, &weights).unwrap();
        layer
            .tune_blocking(3, 37)
            .expect("tuning without a writable cache");
        let _ = std::fs::remove_file(&file);
    }
}
