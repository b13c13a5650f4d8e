//! The fused attention core (`shaders/fused_attention.wgsl`): search softmax, aggregation over
//! all retrievals and the retrieval selection in one kernel, with no `n × n` buffer.
//!
//! The kernel has two ways to read keys, chosen per device:
//! * staged: each key tile is copied to workgroup memory once and read by every invocation,
//!   the standard flash-attention structure that real GPUs need (coalesced loads, reuse);
//! * direct: every invocation reads keys from the storage buffer at the same address. On CPU
//!   drivers (lavapipe, SwiftShader) invocations are SIMD lanes and a load at a lane-uniform
//!   address is done once and broadcast, while workgroup memory costs a copy plus barriers that
//!   are coroutine switches; direct reads win there.
//!
//! Several queries per invocation (`qpi`) let each key and value element feed `qpi`
//! multiply-adds: on SIMD CPUs that is what turns loads into arithmetic; on GPUs registers are
//! scarcer and one query per invocation with more invocations is the better trade.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Dispatch, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::texture::rows_per_layer;
use crate::ops::{ProjectionLayout, Rows, Unused};

static FUSED_ATTENTION: Kernel = kernel!("fused_attention", includes: ["texel_rows"]);

/// WGSL implementations may cap function-scope memory at 8 KiB per invocation (Tint does);
/// the per-invocation registers (queries, accumulators, scores) are kept within it.
const PRIVATE_BUDGET_BYTES: usize = 8192;

/// Tile sizes of the fused kernel: the specialisation key of its pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FusedTiling {
    /// Invocations per workgroup.
    pub wg: u32,
    /// Queries per invocation.
    pub qpi: u32,
    /// Keys per tile.
    pub bk: u32,
    /// Stage key tiles in workgroup memory.
    pub stage: bool,
}

impl FusedTiling {
    /// Queries per workgroup.
    pub(crate) fn rows(&self) -> usize {
        (self.wg * self.qpi) as usize
    }

    fn private_bytes(&self, head: usize, retrievals: usize) -> usize {
        let per_query = head + retrievals * head + 2 * self.bk as usize + 4;
        4 * (self.qpi as usize * per_query + retrievals)
    }

    fn workgroup_bytes(&self, head: usize, retrievals: usize) -> u64 {
        if !self.stage {
            return 0;
        }
        4 * self.bk as u64 * (head as u64 * (1 + retrievals as u64) + 1)
    }

    /// The tiling for this device and head size: with the CPU kernel profile, direct reads,
    /// one query per lane (more queries per lane measured no faster on lavapipe, where the
    /// per-lane arrays they need cost what they save, and compiled far slower); elsewhere,
    /// staged tiles of the largest key count that fits workgroup memory. The override
    /// `COMPATTN_FUSED_TILING=wg,qpi,bk,stage` (for example `8,4,16,0`) is for experiments.
    pub(crate) fn choose(ctx: &GpuContext, head: usize, retrievals: usize) -> Result<Self> {
        if let Some(tiling) = Self::from_env()? {
            return tiling.check(ctx, head, retrievals);
        }
        let cpu = ctx.cpu_kernels();
        let mut tiling = if cpu {
            FusedTiling {
                wg: 8,
                qpi: 1,
                bk: 16,
                stage: false,
            }
        } else {
            FusedTiling {
                wg: 64,
                qpi: 1,
                bk: 32,
                stage: true,
            }
        };
        let workgroup_limit = ctx.limits().max_compute_workgroup_storage_size as u64;
        while tiling.stage && tiling.workgroup_bytes(head, retrievals) > workgroup_limit {
            if tiling.bk > 4 {
                tiling.bk /= 2;
            } else {
                tiling.stage = false;
                tiling.bk = 16;
            }
        }
        while tiling.qpi > 1 && tiling.private_bytes(head, retrievals) > PRIVATE_BUDGET_BYTES {
            tiling.qpi /= 2;
        }
        tiling.check(ctx, head, retrievals)
    }

    fn from_env() -> Result<Option<Self>> {
        let Ok(value) = std::env::var("COMPATTN_FUSED_TILING") else {
            return Ok(None);
        };
        let parts: Vec<u32> = value
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .ok()
            .filter(|p: &Vec<u32>| p.len() == 4 && p[..3].iter().all(|&v| v > 0))
            .ok_or(Error::InvalidConfig {
                field: "COMPATTN_FUSED_TILING",
                value: value.clone(),
                reason: "must be `wg,qpi,bk,stage` with positive sizes and stage 0 or 1",
            })?;
        Ok(Some(FusedTiling {
            wg: parts[0],
            qpi: parts[1],
            bk: parts[2],
            stage: parts[3] != 0,
        }))
    }

    /// Fails with [`Error::LimitExceeded`] if the tiling cannot run on this device.
    pub(crate) fn check(self, ctx: &GpuContext, head: usize, retrievals: usize) -> Result<Self> {
        let limits = ctx.limits();
        let hint = Some("the unfused strategy (Strategy::Unfused) has no such limit");
        if self.wg > limits.max_compute_invocations_per_workgroup
            || self.wg > limits.max_compute_workgroup_size_x
        {
            return Err(Error::LimitExceeded {
                what: "fused attention workgroup".into(),
                required: self.wg as u64,
                limit: limits.max_compute_invocations_per_workgroup as u64,
                limit_name: "max_compute_invocations_per_workgroup",
                hint,
            });
        }
        let workgroup = self.workgroup_bytes(head, retrievals);
        if workgroup > limits.max_compute_workgroup_storage_size as u64 {
            return Err(Error::LimitExceeded {
                what: "fused attention key tile".into(),
                required: workgroup,
                limit: limits.max_compute_workgroup_storage_size as u64,
                limit_name: "max_compute_workgroup_storage_size",
                hint,
            });
        }
        let private = self.private_bytes(head, retrievals);
        if ctx.info().backend == wgpu::Backend::BrowserWebGpu && private > PRIVATE_BUDGET_BYTES {
            return Err(Error::LimitExceeded {
                what: format!(
                    "fused attention registers for dim_head {head}, {retrievals} retrievals"
                ),
                required: private as u64,
                limit: PRIVATE_BUDGET_BYTES as u64,
                limit_name: "WGSL function-scope memory (8 KiB in browsers)",
                hint,
            });
        }
        Ok(self)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    searches: u32,
    row_stride: u32,
    q_offset: u32,
    k_offset: u32,
    qt_offset: u32,
    v_offset: u32,
    scale: f32,
    tiles: u32,
    causal: u32,
    key_begin: u32,
    key_end: u32,
    first: u32,
    last: u32,
    _pad: u32,
}

/// 4 where the head width allows vec4 loads (every offset is then a multiple of 4), else 1.
fn vector_width(head: usize) -> usize {
    if head.is_multiple_of(4) { 4 } else { 1 }
}

pub(crate) fn variant(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    tiling: FusedTiling,
    texels: bool,
) -> ShaderVariant {
    ShaderVariant::new(&FUSED_ATTENTION)
        .u32("WG", tiling.wg)
        .u32("QPI", tiling.qpi)
        .u32("BK", tiling.bk)
        .bool("STAGE", tiling.stage)
        .u32("D", layout.head as u32)
        .u32("R", layout.retrievals as u32)
        .vector(vector_width(layout.head) as u32)
        .bool("TEXELS", texels)
        .u32("RPL", rows_per_layer(ctx))
}

/// Whether the fused kernel can read and write texel rows for this head width: heads must
/// start on texel boundaries.
pub(crate) fn texels_supported(head: usize) -> bool {
    vector_width(head) == 4
}

/// Buffers the fused kernel reads and writes.
pub(crate) struct FusedBuffers<'a> {
    /// Packed projections `[b·n, (3s + r)·d]` whose RQ block holds `RQ·W_rk`; texel rows only
    /// where [`texels_supported`], and then `concat` must be texel rows too.
    pub proj: Rows<'a>,
    /// Key mask `[b, n]` (u32).
    pub mask: &'a wgpu::Buffer,
    /// `[b, r·d]` from `value_mean`.
    pub value_mean: &'a wgpu::Buffer,
    /// `[b·s·n, r·d]` and `[b·s·n, 2]`: state between key chunks (see [`carry_len`]).
    pub carry_acc: &'a wgpu::Buffer,
    pub carry_stats: &'a wgpu::Buffer,
    /// Output `[b, n, s·d]`.
    pub concat: Rows<'a>,
}

/// Elements of the carry buffers (`acc`, `stats`): empty when one dispatch covers every key.
pub(crate) fn carry_len(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    tiling: FusedTiling,
) -> Result<(usize, usize)> {
    if key_chunks(ctx, layout, tiling)?.len() == 1 {
        // Unused, but bound: one vec4 each, the smallest binding the kernel's types allow.
        return Ok((4, 4));
    }
    let rows = layout.batch * layout.searches * layout.seq;
    Ok((rows * layout.retrievals * layout.head, rows * 2))
}

/// The key ranges of the dispatches: one range unless the driver caps loop iterations.
fn key_chunks(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    tiling: FusedTiling,
) -> Result<Vec<std::ops::Range<usize>>> {
    let v = vector_width(layout.head) as u64;
    let (q, bk, wg) = (tiling.qpi as u64, tiling.bk as u64, tiling.wg as u64);
    let (dv, r) = (layout.head as u64 / v, layout.retrievals as u64);
    let vwv = r * dv;
    // Loop iterations, counting every loop as if the compiler unrolled none of them.
    let per_key = 2 + 2 * q + (dv + vwv) * (1 + q);
    let per_tile = 2 * q + q * (1 + bk + vwv) + (bk * (dv + vwv + 1)).div_ceil(wg) + 3;
    let fixed = q * (2 + dv + 2 * vwv) + q * (r * (1 + dv) + r + dv * (1 + r)) + 16;
    split_for_loop_budget(
        ctx,
        "fused attention",
        layout.seq,
        per_key + per_tile.div_ceil(bk),
        fixed,
        tiling.bk as usize,
    )
}

/// Binds the fused kernel: one dispatch per key chunk (usually one), writing `concat`.
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    tiling: FusedTiling,
    scale: f32,
    causal: bool,
    buffers: &FusedBuffers<'_>,
) -> Result<Vec<Dispatch>> {
    let v = vector_width(layout.head);
    let tiles = layout.seq.div_ceil(tiling.rows());
    let chunks = key_chunks(ctx, layout, tiling)?;
    let count = chunks.len();
    let unused = Unused::new(ctx)?;
    let (proj, proj_texels, texels) = match buffers.proj {
        Rows::Buffer(buffer) => (buffer, unused.read_texels.view(), false),
        Rows::Texels(rows) => (&unused.read_buffer, rows.view(), true),
    };
    let (concat, concat_texels) = match buffers.concat {
        Rows::Buffer(buffer) if !texels => (buffer, unused.write_texels.view()),
        Rows::Texels(rows) if texels => (&unused.write_buffer, rows.view()),
        _ => unreachable!("projections and concatenation use the same storage"),
    };
    debug_assert!(!texels || texels_supported(layout.head));
    let variant = variant(ctx, layout, tiling, texels);
    let mut dispatches = Vec::with_capacity(count);
    for (index, keys) in chunks.into_iter().enumerate() {
        let params = Params {
            batch: layout.batch as u32,
            seq: layout.seq as u32,
            searches: layout.searches as u32,
            row_stride: (layout.row_stride / v) as u32,
            q_offset: (layout.search_queries / v) as u32,
            k_offset: (layout.search_keys / v) as u32,
            qt_offset: (layout.retrieval_queries / v) as u32,
            v_offset: (layout.retrieval_values / v) as u32,
            scale,
            tiles: tiles as u32,
            causal: causal as u32,
            key_begin: keys.start as u32,
            key_end: keys.end as u32,
            first: (index == 0) as u32,
            last: (index + 1 == count) as u32,
            _pad: 0,
        };
        dispatches.push(
            Dispatch::with_binds(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &[
                    Bind::Buffer(proj),
                    Bind::Buffer(buffers.mask),
                    Bind::Buffer(buffers.value_mean),
                    Bind::Buffer(buffers.carry_acc),
                    Bind::Buffer(buffers.carry_stats),
                    Bind::Buffer(concat),
                    Bind::Texture(proj_texels),
                    Bind::Texture(concat_texels),
                ],
                (layout.batch * layout.searches * tiles) as u64,
            )
            .await?,
        );
    }
    Ok(dispatches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::*;
    use crate::gpu::texture::TexelRows;
    use crate::ops::value_mean;
    use crate::reference::{self, Dims};
    use crate::verify::{length_mask, normal};

    struct Case {
        batch: usize,
        seq: usize,
        searches: usize,
        retrievals: usize,
        head: usize,
        causal: bool,
        mask: Option<Vec<bool>>,
        magnitude: f32,
    }

    impl Case {
        fn layout(&self) -> ProjectionLayout {
            ProjectionLayout::new(
                self.batch,
                self.seq,
                self.searches,
                self.retrievals,
                self.head,
            )
        }
    }

    const DIRECT: FusedTiling = FusedTiling {
        wg: 8,
        qpi: 3,
        bk: 5,
        stage: false,
    };
    const STAGED: FusedTiling = FusedTiling {
        wg: 16,
        qpi: 1,
        bk: 7,
        stage: true,
    };

    /// Runs value_mean + fused on random projections and compares with the reference chain
    /// logits → softmax → aggregation → selection (which uses RQ and W_rk as SPEC writes them).
    /// How the core under test runs: the fused kernel on buffers or texels, or the blocked CPU
    /// variant (`ops::blocked_attention`).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Mode {
        Buffers,
        Texels,
        Blocked,
    }

    fn check(case: Case, tiling: FusedTiling, mode: Mode) {
        let texels = mode != Mode::Buffers;
        let layout = case.layout();
        let Case {
            batch,
            seq,
            searches,
            retrievals,
            head,
            causal,
            mask,
            magnitude,
        } = case;
        let (mut rng, what) = rng(&format!(
            "fused b{batch} n{seq} s{searches} r{retrievals} d{head} causal {causal} \
             mask {:?} x{magnitude} {tiling:?} {mode:?}",
            mask.as_ref().map(|m| m.iter().filter(|&&a| a).count())
        ));
        let mut proj = normal(&mut rng, batch * seq * layout.row_stride, magnitude);
        let w_rk = normal(&mut rng, head * head, (head as f32).powf(-0.5));
        let rq = layout.column_block(&proj, layout.retrieval_queries, searches * head);
        // The kernel reads Q̃ = RQ · W_rk in the RQ block (what the fused weights produce).
        for (token, row) in proj.chunks_exact_mut(layout.row_stride).enumerate() {
            for sigma in 0..searches {
                for k in 0..head {
                    let q_tilde: f64 = (0..head)
                        .map(|kk| {
                            rq[token * searches * head + sigma * head + kk]
                                * w_rk[kk * head + k] as f64
                        })
                        .sum();
                    row[layout.retrieval_queries + sigma * head + k] = q_tilde as f32;
                }
            }
        }
        let mask_words: Vec<u32> = match &mask {
            Some(m) => m.iter().map(|&a| a as u32).collect(),
            None => vec![1; batch * seq],
        };
        let scale = (head as f32).powf(-0.5);
        let proj_buffer = upload(&proj);
        let mask_buffer = upload(&mask_words);
        let means = poisoned(batch * retrievals * head);
        let concat = poisoned(batch * seq * searches * head);
        let ctx = context();
        let tiling = tiling.check(ctx, head, retrievals).unwrap();
        let (acc_len, stats_len) = carry_len(ctx, &layout, tiling).unwrap();
        let (carry_acc, carry_stats) = (poisoned(acc_len), poisoned(stats_len));
        let (proj_texels, concat_texels) = {
            let _serial = pollster::block_on(ctx.serial());
            let rows = batch * seq;
            (
                TexelRows::with_data(ctx, "proj", rows, layout.row_stride, &proj).unwrap(),
                TexelRows::new(ctx, "concat", rows, searches * head).unwrap(),
            )
        };
        let (proj_rows, concat_rows) = if texels {
            (Rows::Texels(&proj_texels), Rows::Texels(&concat_texels))
        } else {
            (Rows::Buffer(&proj_buffer), Rows::Buffer(&concat))
        };
        let mean_dispatch = build(value_mean::dispatch(ctx, &layout, proj_rows, &means));
        let buffers = FusedBuffers {
            proj: proj_rows,
            mask: &mask_buffer,
            value_mean: &means,
            carry_acc: &carry_acc,
            carry_stats: &carry_stats,
            concat: concat_rows,
        };
        // The blocked core's `retrieved` intermediate lives as long as its dispatches.
        let (fused, _retrieved) = if mode == Mode::Blocked {
            let core = build(crate::ops::blocked_attention::bind(
                ctx,
                &layout,
                scale,
                causal,
                &proj_texels,
                &mask_buffer,
                &means,
                &concat_texels,
            ));
            (core.dispatches, Some(core.retrieved))
        } else {
            let fused = build_all(dispatches(ctx, &layout, tiling, scale, causal, &buffers));
            (fused, None)
        };
        let mut all = vec![&mean_dispatch];
        all.extend(fused.iter());
        run(&all);
        let got = if texels {
            download_texels(&concat_texels)
        } else {
            download(&concat, batch * seq * searches * head)
        };

        let dims = Dims {
            batch,
            seq,
            searches,
            retrievals,
            head,
        };
        let sq = layout.column_block(&proj, layout.search_queries, searches * head);
        let sk = layout.column_block(&proj, layout.search_keys, searches * head);
        let rv = layout.column_block(&proj, layout.retrieval_values, retrievals * head);
        let logits = reference::search_logits(&sq, &sk, dims, scale as f64);
        let weights = reference::search_weights(&logits, dims, mask.as_deref(), causal);
        let retrieved = reference::retrieve(&weights, &rv, dims);
        let expected = reference::retrieval_select(&retrieved, &rq, &w_rk, dims, scale as f64);
        // Scores of large-magnitude inputs are large, and f32 rounding of a large score moves
        // its softmax weight by more: such cases are held to 1e-4 rather than 2e-5.
        let tolerance = if magnitude > 1.0 { 1e-4 } else { 2e-5 };
        assert_close(&what, &got, &expected, tolerance);
    }

    /// Both key-reading modes, each on buffers and (where the head width allows) texel rows.
    fn both(make: impl Fn() -> Case) {
        let ctx = context();
        check(make(), DIRECT, Mode::Buffers);
        check(make(), STAGED, Mode::Buffers);
        // Texel variants where operands can be texels (not on GL; see
        // `GpuContext::texel_operands`) and heads start on texel boundaries.
        let case = make();
        if ctx.info().backend != wgpu::Backend::Gl && texels_supported(case.head) {
            check(make(), DIRECT, Mode::Texels);
            check(make(), STAGED, Mode::Texels);
        }
        if crate::ops::blocked_attention::supported(ctx, &case.layout()) {
            check(make(), DIRECT, Mode::Blocked);
        }
    }

    fn case(batch: usize, seq: usize, searches: usize, retrievals: usize, head: usize) -> Case {
        Case {
            batch,
            seq,
            searches,
            retrievals,
            head,
            causal: false,
            mask: None,
            magnitude: 1.0,
        }
    }

    #[test]
    fn odd_sizes_span_several_key_tiles() {
        both(|| case(2, 29, 3, 4, 10));
        both(|| case(1, 53, 2, 2, 7));
    }

    #[test]
    fn single_key() {
        both(|| case(2, 1, 2, 2, 4));
    }

    #[test]
    fn one_search_one_retrieval() {
        both(|| case(2, 9, 1, 1, 6));
    }

    #[test]
    fn causal_skips_key_tiles() {
        both(|| Case {
            causal: true,
            ..case(2, 45, 2, 3, 12)
        });
    }

    #[test]
    fn padding_and_fully_masked_rows() {
        both(|| Case {
            mask: Some(length_mask(3, 17, &[17, 0, 6])),
            ..case(3, 17, 2, 3, 8)
        });
    }

    #[test]
    fn causal_rows_whose_keys_are_all_padded() {
        // Keys 0..4 padded: causal queries 0..4 have no allowed key and must be uniform over
        // all keys (future ones too); the rest are ordinary.
        let late: Vec<bool> = (0..2 * 19).map(|t| t % 19 >= 4).collect();
        both(|| Case {
            causal: true,
            mask: Some(late.clone()),
            ..case(2, 19, 2, 2, 8)
        });
    }

    #[test]
    fn large_magnitude_scores() {
        both(|| Case {
            magnitude: 8.0,
            causal: true,
            ..case(1, 40, 2, 2, 16)
        });
    }

    /// Long enough that a loop-capped driver (lavapipe) needs several key chunks, which must
    /// carry the online-softmax state between dispatches exactly.
    #[test]
    fn keys_split_over_several_dispatches() {
        both(|| Case {
            causal: true,
            ..case(1, 700, 1, 2, 64)
        });
        both(|| Case {
            mask: Some(length_mask(2, 611, &[611, 300])),
            ..case(2, 611, 2, 3, 20)
        });
    }

    #[test]
    fn wide_head() {
        both(|| case(1, 37, 2, 2, 64));
    }

    /// The blocked variant with `r·d` past one column block and not a multiple of it (80 and
    /// 84 value columns: 20 and 21 texels against blocks of 16), so its last block is partial.
    /// Only that variant: the general kernel's head loop does not depend on `r·d` blocks.
    #[test]
    fn blocked_values_wider_than_a_column_block() {
        for case in [
            case(2, 37, 2, 4, 20),
            Case {
                causal: true,
                mask: Some(length_mask(1, 26, &[19])),
                ..case(1, 26, 3, 3, 28)
            },
        ] {
            if crate::ops::blocked_attention::supported(context(), &case.layout()) {
                check(case, DIRECT, Mode::Blocked);
            }
        }
    }
}
