//! Tilings chosen by measurement (issue 18, target 4; ARCHITECTURE decision 20): what a shape
//! class is, which tilings are its candidates, and what a stored choice means.
//!
//! The built-in tilings were measured on one machine. Here a forward's attention core names
//! its candidates; the layer times them on first use of the shape class
//! (`layer::tune`, [`TuneMode`](crate::gpu::TuneMode)) and the context's store
//! (`gpu::tuning_store`) keeps the fastest. [`ExecutionPlan::resolve`](super::ExecutionPlan::resolve)
//! then takes the stored choice where it is still valid on this device, and the built-in
//! tiling otherwise. Every candidate computes the same sums in the same order per output
//! element, apart from where the fused kernel's key tiles rescale its online softmax, so a
//! tuned plan changes results by f32 rounding at most (`layer::tune`'s tests check each
//! candidate against the built-in plan).
//!
//! Tuned today: the blocked core's block width and slices (CPU drivers) and the general fused
//! kernel's tiling (GPUs, and biased layers on CPU drivers). The GEMM tiles and the split-KV
//! splits of decode keep their built-in choices.

use super::{
    BLOCKED_MAX_SLICES, BlockedPlan, FusedTiling, KernelFamily, balanced_slices,
    blocked_block_texels, blocked_slices_cap,
};
use crate::config::Config;
use crate::gpu::GpuContext;
use crate::ops::ProjectionLayout;
use crate::precision::Precision;

/// Which core a shape class tunes: the two the forward runs with more than one tiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TunedCore {
    /// The blocked core (`BlockedPlan`).
    Blocked,
    /// The general fused kernel (`FusedTiling`), on texel or buffer operands.
    Fused { texels: bool },
}

/// The key of a stored choice: the core, the kernel family, the precision, the layer's widths
/// and flags (causal, biases, the MLP score network), the sequence length and the token count
/// each rounded up to a power of two (a shape class: nearby shapes share a choice), and the
/// workgroup limits the candidates were checked against. The adapter and driver are the
/// store's own key.
pub(crate) fn shape_class(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    layout: &ProjectionLayout,
    core: TunedCore,
) -> String {
    let family = match KernelFamily::of(ctx) {
        KernelFamily::Cpu => "cpu",
        KernelFamily::Gpu => "gpu",
    };
    let core = match core {
        TunedCore::Blocked => "blocked",
        TunedCore::Fused { texels: true } => "fused-texels",
        TunedCore::Fused { texels: false } => "fused-buffers",
    };
    let seq = layout.seq.max(1).next_power_of_two();
    let tokens = (layout.batch * layout.seq).max(1).next_power_of_two();
    let mut flags = String::new();
    for (flag, set) in [
        (" causal", config.causal),
        (" bias", config.bias),
        (" mlp", config.selection_mlp.is_some()),
    ] {
        if set {
            flags.push_str(flag);
        }
    }
    // The limits that bound the candidates (WebGPU's defaults or the adapter's).
    let limits = ctx.limits();
    format!(
        "{core} {family} {precision} D{} d{} s{} r{}{flags} seq<={seq} tokens<={tokens} \
         limits{}/{}",
        config.dim,
        layout.head,
        layout.searches,
        layout.retrievals,
        limits.max_compute_invocations_per_workgroup,
        limits.max_compute_workgroup_storage_size
    )
}

/// A candidate or stored tiling of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TunedChoice {
    /// The blocked core's value texels per lane and slices per workgroup.
    Blocked { block_texels: usize, slices: usize },
    /// The general fused kernel's tiling.
    Fused(FusedTiling),
}

impl TunedChoice {
    /// The kernel the choice tiles: the only one whose time differs between candidates (the
    /// GEMMs and the selection are the same), so the tuner times it alone.
    pub(crate) fn kernel_name(&self) -> &'static str {
        match self {
            TunedChoice::Blocked { .. } => crate::ops::blocked_attention::KERNEL_NAME,
            TunedChoice::Fused(_) => crate::ops::fused_attention::KERNEL_NAME,
        }
    }

    /// The stored form: `blocked texels=16 slices=8` or `fused 64,1,32,1` (wg, qpi, bk, stage:
    /// `COMPATTN_FUSED_TILING`'s form).
    pub(crate) fn encode(&self) -> String {
        match self {
            TunedChoice::Blocked {
                block_texels,
                slices,
            } => format!("blocked texels={block_texels} slices={slices}"),
            TunedChoice::Fused(t) => format!("fused {},{},{},{}", t.wg, t.qpi, t.bk, t.stage as u8),
        }
    }

    /// The inverse of [`TunedChoice::encode`]; `None` for anything else (an edited or foreign
    /// cache entry is ignored, not trusted).
    pub(crate) fn decode(text: &str) -> Option<TunedChoice> {
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "blocked" => {
                let mut block_texels = None;
                let mut slices = None;
                for part in rest.split_whitespace() {
                    match part.split_once('=')? {
                        ("texels", v) => block_texels = Some(v.parse().ok()?),
                        ("slices", v) => slices = Some(v.parse().ok()?),
                        _ => return None,
                    }
                }
                Some(TunedChoice::Blocked {
                    block_texels: block_texels?,
                    slices: slices?,
                })
            }
            "fused" => FusedTiling::parse(rest).ok().map(TunedChoice::Fused),
            _ => None,
        }
    }
}

/// Where [`ExecutionPlan::resolve_tiled`](super::ExecutionPlan::resolve_tiled) takes the core's
/// tiling from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tiling<'a> {
    /// The context's stored choice for the shape class, if any (else the built-in tiling).
    Stored,
    /// The built-in tiling, whatever is stored.
    BuiltIn,
    /// A candidate the tuner is timing.
    Candidate(&'a TunedChoice),
}

/// The choice `tiling` names for `core`'s class: the candidate, or the stored entry that parses;
/// `None` for the built-in tiling.
fn named(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    layout: &ProjectionLayout,
    core: TunedCore,
    tiling: Tiling<'_>,
) -> Option<TunedChoice> {
    match tiling {
        Tiling::Candidate(choice) => Some(*choice),
        Tiling::BuiltIn => None,
        Tiling::Stored => {
            let class = shape_class(ctx, config, precision, layout, core);
            TunedChoice::decode(&ctx.tuning().get(&class)?)
        }
    }
}

/// The blocked-core tiling `tiling` names for this layout, where it is one of the class's
/// candidates and runs here (`None` also while `COMPATTN_BLOCKED_SLICES` sets an experiment's
/// cap).
pub(crate) fn blocked(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    layout: &ProjectionLayout,
    tiling: Tiling<'_>,
) -> Option<BlockedPlan> {
    let choice = named(ctx, config, precision, layout, TunedCore::Blocked, tiling)?;
    match choice {
        TunedChoice::Blocked {
            block_texels,
            slices,
        } if blocked_candidates(ctx, layout).contains(&choice) => {
            BlockedPlan::fitting(ctx, layout, block_texels, slices)
        }
        _ => None,
    }
}

/// The fused tiling `tiling` names for this class, where it is one of the class's candidates
/// (which pass [`FusedTiling::check`] here; `None` also while `COMPATTN_FUSED_TILING` sets
/// one). A stored entry edited by hand is ignored, not trusted.
pub(crate) fn fused(
    ctx: &GpuContext,
    config: &Config,
    precision: Precision,
    layout: &ProjectionLayout,
    texels: bool,
    tiling: Tiling<'_>,
) -> Option<FusedTiling> {
    let core = TunedCore::Fused { texels };
    let choice = named(ctx, config, precision, layout, core, tiling)?;
    match choice {
        TunedChoice::Fused(tiling)
            if fused_candidates(ctx, layout.head, layout.retrievals).contains(&choice) =>
        {
            Some(tiling)
        }
        _ => None,
    }
}

fn fused_tiling_set() -> bool {
    std::env::var("COMPATTN_FUSED_TILING").is_ok_and(|v| !v.is_empty())
}

/// The blocked core's candidates at this layout: 64- and 32-column blocks (where the values
/// are that wide), each with 8, 4, 2 or 1 slices per group, balanced; those that run here,
/// without repeats. Empty under an experiment's `COMPATTN_BLOCKED_SLICES`.
pub(crate) fn blocked_candidates(ctx: &GpuContext, layout: &ProjectionLayout) -> Vec<TunedChoice> {
    if blocked_slices_cap().is_some() {
        return Vec::new();
    }
    let widest = blocked_block_texels(layout);
    let mut out = Vec::new();
    for block_texels in [widest, widest / 2].into_iter().filter(|&t| t >= 4) {
        let blocks = (layout.retrievals * layout.head).div_ceil(4 * block_texels);
        for cap in [BLOCKED_MAX_SLICES, 4, 2, 1] {
            let slices = balanced_slices(blocks, cap);
            let choice = TunedChoice::Blocked {
                block_texels,
                slices,
            };
            if !out.contains(&choice)
                && BlockedPlan::fitting(ctx, layout, block_texels, slices).is_some()
            {
                out.push(choice);
            }
        }
    }
    out
}

/// The general fused kernel's candidates: the built-in tiling first, then key tiles of half and
/// twice its keys, and in the GPU family workgroups of 128 and 32; those that pass
/// [`FusedTiling::check`] here, without repeats. Empty under `COMPATTN_FUSED_TILING`.
pub(crate) fn fused_candidates(
    ctx: &GpuContext,
    head: usize,
    retrievals: usize,
) -> Vec<TunedChoice> {
    if fused_tiling_set() {
        return Vec::new();
    }
    let Ok(built_in) = FusedTiling::choose(ctx, head, retrievals) else {
        return Vec::new();
    };
    let mut tilings = vec![
        built_in,
        FusedTiling {
            bk: (built_in.bk / 2).max(4),
            ..built_in
        },
        FusedTiling {
            bk: built_in.bk * 2,
            ..built_in
        },
    ];
    if KernelFamily::of(ctx) == KernelFamily::Gpu {
        tilings.extend([128, 32].map(|wg| FusedTiling { wg, ..built_in }));
    }
    let mut out = Vec::new();
    for tiling in tilings {
        let choice = TunedChoice::Fused(tiling);
        if !out.contains(&choice) && tiling.check(ctx, head, retrievals).is_ok() {
            out.push(choice);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_read_back_and_foreign_text_is_refused() {
        let choices = [
            TunedChoice::Blocked {
                block_texels: 16,
                slices: 8,
            },
            TunedChoice::Blocked {
                block_texels: 8,
                slices: 3,
            },
            TunedChoice::Fused(FusedTiling {
                wg: 64,
                qpi: 1,
                bk: 32,
                stage: true,
            }),
        ];
        for choice in choices {
            assert_eq!(TunedChoice::decode(&choice.encode()), Some(choice));
        }
        for text in [
            "",
            "blocked",
            "blocked texels=16",
            "blocked texels=x slices=2",
            "blocked texels=16 slices=2 extra=1",
            "fused 64,1,32",
            "fused 0,1,32,1",
            "gemm 8",
        ] {
            assert_eq!(TunedChoice::decode(text), None, "{text:?}");
        }
    }
}
