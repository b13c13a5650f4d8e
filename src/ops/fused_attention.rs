//! The fused attention core (`shaders/fused_attention.wgsl`): search softmax, aggregation over
//! all retrievals and the retrieval selection in one kernel, with no `n × n` buffer.
//!
//! The kernel has two ways to read keys; `src/plan/mod.rs` (`FusedTiling::choose`) picks one per
//! device:
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

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Bind, Dispatch};
use crate::gpu::pipelines::{Kernel, Piece, ShaderVariant, kernel, piece};
use crate::gpu::texture::{TexelRows, rows_per_layer};
use crate::gpu::uniform::uniform;
use crate::ops::ProjectionLayout;
use crate::ops::kernel_params::{FusedPlan, vector_width};
use crate::ops::key_values::KeyValues;
use crate::precision::Precision;

static FUSED_ATTENTION: Kernel = kernel!("fused_attention", includes: ["texel_rows"]);

/// The kernel's name, which starts its variants' labels (the tuner times it alone).
pub(crate) const KERNEL_NAME: &str = FUSED_ATTENTION.name;
static IO_BUFFERS: Piece = piece!("fused_buffers");
static IO_TEXELS: Piece = piece!("fused_texels");
static CARRY: Piece = piece!("fused_carry");
static SINGLE_PASS: Piece = piece!("fused_single_pass");

uniform! {
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
        kv_seq: u32,
        k_stride: u32,
        k_batch_rows: u32,
        k_head_rows: u32,
        k_head_cols: u32,
        v_stride: u32,
        causal_offset: u32,
        _pad: u32,
    }
}

/// `precision`: of buffer projections and concatenation (texel rows are f32).
pub(crate) fn variant(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: &FusedPlan,
    precision: Precision,
) -> ShaderVariant {
    let tiling = plan.tiling;
    let (io, precision) = match plan.storage {
        crate::ops::kernel_params::OperandStorage::Texels => (&IO_TEXELS, Precision::F32),
        crate::ops::kernel_params::OperandStorage::Buffers => (&IO_BUFFERS, precision),
    };
    ShaderVariant::new(&FUSED_ATTENTION)
        .piece(io)
        .piece(if plan.splits_keys() {
            &CARRY
        } else {
            &SINGLE_PASS
        })
        .u32("WG", tiling.wg)
        .u32("QPI", tiling.qpi)
        .u32("BK", tiling.bk)
        .bool("STAGE", tiling.stage)
        .bool("SELECT", !plan.stores_retrieved)
        .u32("D", layout.head as u32)
        .u32("R", layout.retrievals as u32)
        .vector(vector_width(layout.head) as u32)
        .u32("RPL", rows_per_layer(ctx))
        .stored("Proj", precision)
}

/// The projections the kernel reads and the concatenation it writes, in the plan's storage.
#[derive(Clone, Copy)]
pub(crate) enum FusedIo<'a> {
    /// Packed projections `[b·n, (3s + r)·d]` (RQ block holding `RQ·W_rk`) and `[b, n, s·d]`,
    /// both stored in `precision`.
    Buffers {
        proj: &'a wgpu::Buffer,
        concat: &'a wgpu::Buffer,
        precision: Precision,
    },
    /// The same as texel rows (`d % 4 == 0`).
    Texels {
        proj: &'a TexelRows,
        concat: &'a TexelRows,
    },
}

/// The state carried between key chunks where the plan splits the keys.
pub(crate) struct Carry {
    /// `[b·s·n, r·d]` accumulators.
    pub acc: wgpu::Buffer,
    /// `[b·s·n, 2]` running max and sum.
    pub stats: wgpu::Buffer,
}

impl Carry {
    /// The carry buffers the plan needs: `None` when one dispatch covers every key.
    pub(crate) fn for_plan(
        ctx: &GpuContext,
        layout: &ProjectionLayout,
        plan: &FusedPlan,
    ) -> Result<Option<Carry>> {
        if !plan.splits_keys() {
            return Ok(None);
        }
        let rows = layout.batch * layout.searches * layout.seq;
        Ok(Some(Carry {
            acc: crate::gpu::memory::storage(
                ctx,
                "fused carry (accumulators)",
                &[rows, layout.retrievals * layout.head],
                None,
            )?,
            stats: crate::gpu::memory::storage(ctx, "fused carry (max, sum)", &[rows, 2], None)?,
        }))
    }
}

/// Binds the fused kernel: one dispatch per key chunk of the plan (whose chunks cover the keys
/// of `keys_values`), writing the concatenation. `carry` must be [`Carry::for_plan`]'s. A
/// memory's keys and values are read from its cache buffers, so only with buffer io.
pub(crate) async fn dispatches(
    ctx: &GpuContext,
    layout: &ProjectionLayout,
    plan: &FusedPlan,
    scale: f32,
    io: FusedIo<'_>,
    keys_values: KeyValues<'_>,
    carry: Option<&Carry>,
) -> Result<Vec<Dispatch>> {
    let v = vector_width(layout.head);
    let tiles = layout.seq.div_ceil(plan.tiling.rows());
    let count = plan.key_chunks.len();
    let at = keys_values.addressing(layout, v);
    let (proj, concat, keys, values): (Bind<'_>, Bind<'_>, Bind<'_>, Bind<'_>) = match (
        io,
        &keys_values,
    ) {
        (FusedIo::Buffers { proj, concat, .. }, KeyValues::Own { .. }) => {
            (proj.into(), concat.into(), proj.into(), proj.into())
        }
        (FusedIo::Texels { proj, concat }, KeyValues::Own { .. }) => (
            proj.view().into(),
            concat.view().into(),
            proj.view().into(),
            proj.view().into(),
        ),
        (FusedIo::Buffers { proj, concat, .. }, KeyValues::Memory(memory)) => (
            proj.into(),
            concat.into(),
            (&memory.cache.keys).into(),
            (&memory.cache.values).into(),
        ),
        (FusedIo::Texels { .. }, KeyValues::Memory(_)) => {
            return Err(crate::Error::InvalidConfig {
                field: "execution plan",
                value: String::new(),
                reason: "the fused kernel reads a memory's cache buffers with buffer projections only",
            });
        }
    };
    let mut binds = vec![
        proj,
        keys_values.mask().into(),
        keys_values.value_mean().into(),
        concat,
        keys,
        values,
    ];
    if let Some(carry) = carry {
        binds.extend([Bind::from(&carry.acc), Bind::from(&carry.stats)]);
    }
    let precision = match io {
        FusedIo::Buffers { precision, .. } => precision,
        FusedIo::Texels { .. } => Precision::F32,
    };
    let variant = variant(ctx, layout, plan, precision);
    let mut dispatches = Vec::with_capacity(count);
    for (index, keys) in plan.key_chunks.iter().enumerate() {
        let params = Params {
            batch: layout.batch as u32,
            seq: layout.seq as u32,
            searches: layout.searches as u32,
            row_stride: (layout.row_stride / v) as u32,
            q_offset: (layout.search_queries / v) as u32,
            k_offset: at.k_offset as u32,
            qt_offset: (layout.retrieval_queries / v) as u32,
            v_offset: at.v_offset as u32,
            scale,
            tiles: tiles as u32,
            causal: at.causal as u32,
            key_begin: keys.start as u32,
            key_end: keys.end as u32,
            first: (index == 0) as u32,
            last: (index + 1 == count) as u32,
            kv_seq: at.kv_seq as u32,
            k_stride: at.k_stride as u32,
            k_batch_rows: at.k_batch_rows as u32,
            k_head_rows: at.k_head_rows as u32,
            k_head_cols: at.k_head_cols as u32,
            v_stride: at.v_stride as u32,
            causal_offset: at.causal_offset as u32,
            _pad: 0,
        };
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &binds,
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
    use crate::gpu::test_device::*;
    use crate::ops::kernel_params::{BlockedPlan, FusedTiling, OperandStorage};
    use crate::ops::{Rows, value_mean};
    use crate::reference::{self, Dims};
    use crate::testing::{length_mask, normal};

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
        let storage = if texels {
            OperandStorage::Texels
        } else {
            OperandStorage::Buffers
        };
        let plan = FusedPlan::resolve(ctx, &layout, tiling, storage).unwrap();
        let carry = Carry::for_plan(ctx, &layout, &plan).unwrap();
        if let Some(carry) = &carry {
            // Poisoned like every output: the first key chunk must write before later ones read.
            for buffer in [&carry.acc, &carry.stats] {
                let nan = vec![f32::NAN; buffer.size() as usize / 4];
                ctx.queue()
                    .write_buffer(buffer, 0, bytemuck::cast_slice(&nan));
            }
        }
        let (proj_texels, concat_texels) = {
            let _serial = pollster::block_on(ctx.serial());
            let rows = batch * seq;
            (
                TexelRows::with_data(ctx, "proj", rows, layout.row_stride, &proj).unwrap(),
                TexelRows::new(ctx, "concat", rows, searches * head).unwrap(),
            )
        };
        let (proj_rows, io) = if texels {
            (
                Rows::Texels(&proj_texels),
                FusedIo::Texels {
                    proj: &proj_texels,
                    concat: &concat_texels,
                },
            )
        } else {
            (
                Rows::Buffer((&proj_buffer).into()),
                FusedIo::Buffers {
                    proj: &proj_buffer,
                    concat: &concat,
                    precision: Precision::F32,
                },
            )
        };
        let mean_dispatch = build(value_mean::dispatch(
            ctx,
            &layout,
            proj_rows,
            Precision::F32,
            &means,
        ));
        // The blocked core's `retrieved` intermediate lives as long as its dispatches.
        let (fused, _retrieved) = if mode == Mode::Blocked {
            let blocked = BlockedPlan::resolve(ctx, &layout).expect("a blocked problem");
            let core = build(crate::ops::blocked_attention::bind(
                ctx,
                &layout,
                blocked,
                scale,
                &proj_texels,
                KeyValues::Own {
                    causal,
                    mask: (&mask_buffer).into(),
                    value_mean: &means,
                },
                &concat_texels,
            ));
            (core.dispatches, Some(core.retrieved))
        } else {
            let fused = build_all(dispatches(
                ctx,
                &layout,
                &plan,
                scale,
                io,
                KeyValues::Own {
                    causal,
                    mask: (&mask_buffer).into(),
                    value_mean: &means,
                },
                carry.as_ref(),
            ));
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
        // `OperandStorage::of_operands`) and heads start on texel boundaries.
        let case = make();
        if ctx.info().backend != wgpu::Backend::Gl && case.head.is_multiple_of(4) {
            check(make(), DIRECT, Mode::Texels);
            check(make(), STAGED, Mode::Texels);
        }
        if BlockedPlan::resolve(ctx, &case.layout()).is_some() {
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
            if BlockedPlan::resolve(context(), &case.layout()).is_some() {
                check(case, DIRECT, Mode::Blocked);
            }
        }
    }
}
