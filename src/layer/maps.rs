//! `forward_with_maps`: a forward that also returns what the layer attended to. The maps are
//! intermediates of the unfused core, copied out in the same submit (ARCHITECTURE decision 14);
//! the types and their file form are `crate::maps`, which needs no GPU.

use super::{AfterForward, CompositionalAttention, run};
use crate::error::Result;
use crate::io;
use crate::maps::{AttentionMaps, MapsOptions};
use crate::plan::Strategy;
use crate::shape;
use crate::workspace::Workspace;

/// Attention maps: the search attention and the retrieval selection (see `src/maps.rs`).
impl CompositionalAttention {
    /// [`forward`](Self::forward), also returning what the layer attended to: for the query rows
    /// `options` names (every row by default) of every batch row, the search attention `[batch,
    /// s, q, n]` and the retrieval selection `[batch, s, q, r]` ([`AttentionMaps`]).
    ///
    /// The maps are intermediates of the unfused strategy, so this runs the unfused strategy
    /// whatever [`strategy`](Self::strategy) is set (its output matches the fused one's to f32
    /// rounding), and its `b·s·n²` search weights must fit the device's storage buffers. Only
    /// the asked rows are copied back. Maps larger than [`MapsOptions::max_bytes`] are refused
    /// with [`Error::MapsTooLarge`](crate::Error::MapsTooLarge) before anything runs.
    pub async fn forward_with_maps(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        options: &MapsOptions,
    ) -> Result<(Vec<f32>, AttentionMaps)> {
        let c = self.config;
        let (searches, retrievals) = (c.num_searches, c.num_retrievals);
        shape::check_input(&c, x, batch, seq, mask)?;
        let query_rows = options.resolve(batch, seq, searches, retrievals)?;
        io::check_finite("input", x)?;
        let ctx = self.ctx.clone();
        let _serial = ctx.serial().await;
        let workspace = self
            .workspace_for(batch, seq, Strategy::Unfused, &mut |_| {})
            .await?;
        let rows = query_rows.len();
        let readback = workspace.maps_readback(&ctx, rows, (searches, retrievals))?;
        let copy = |workspace: &Workspace, encoder: &mut wgpu::CommandEncoder| {
            workspace.record_maps_copies(encoder, &query_rows, (searches, retrievals), &readback);
        };
        let planes = batch * searches * rows;
        let after = AfterForward {
            record: &copy,
            read: vec![
                (&readback[0], planes * seq),
                (&readback[1], planes * retrievals),
            ],
        };
        let (result, maps) = run(&ctx, workspace, c.dim, x, mask, false, Some(after)).await?;
        let [search, logits]: [Vec<f32>; 2] = maps.try_into().expect("two maps read back");
        let maps = AttentionMaps {
            batch,
            searches,
            retrievals,
            seq,
            query_rows,
            search,
            selection: logits.chunks_exact(retrievals).flat_map(softmax).collect(),
        };
        Ok((result.output, maps))
    }

    /// Blocking [`forward_with_maps`](Self::forward_with_maps) (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_with_maps_blocking(
        &mut self,
        x: &[f32],
        batch: usize,
        seq: usize,
        mask: Option<&[bool]>,
        options: &MapsOptions,
    ) -> Result<(Vec<f32>, AttentionMaps)> {
        pollster::block_on(self.forward_with_maps(x, batch, seq, mask, options))
    }
}

/// The retrieval selection from its logits `G`: `softmax_ρ(G − max G)`, as the kernel mixes.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|g| (g - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
