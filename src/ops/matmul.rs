//! Training's GEMMs (`shaders/matmul.wgsl`): `C (+)= op(A)·op(B)` with either operand
//! transposed and every matrix a column block of a wider one (an offset and a row stride), so
//! that the backward's products (`dyᵀ·concat`, `dPᵀ·h`, `dL·SK`, ...) read the packed
//! projections and write the gradients in place, without transposing copies.
//!
//! Register blocked as the forward's buffer GEMM (`gemm.wgsl`, `GemmTiling::REGISTER`): each
//! lane holds a `4 × TILE_N` block of sums (vec4 columns), and the `TILE_N` values of `op(B)` it reads at
//! each step are the same for every lane of the workgroup. The reduction is split over several
//! dispatches where the driver caps loop iterations (the later ones accumulate).
//!
//! Where the plan stores operands as texels (`plan::OperandStorage::Texels`, CPU drivers but
//! GL), a product instead copies `A` and `B` into texel rows as they are stored (by the copy
//! engine where the layout allows, `TexelRows::upload`, else `texture_copy.wgsl`, which reads
//! column blocks) and runs the forward's texel GEMM
//! (`gemm_texture.wgsl`) into the output block, which reads a stored transpose transposed where
//! the product needs `op(A)` or `op(B)ᵀ` as the other: on lavapipe that GEMM runs about 4×
//! faster than this one, and the copies cost `(m + n)·k` against its `m·n·k`. The copies live
//! in [`TexelPacks`], one texture per shape and slot, reused by every product of a pass.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::gpu::dispatch::{Command, Dispatch, as_commands, split_for_loop_budget};
use crate::gpu::pipelines::{Kernel, ShaderVariant, kernel};
use crate::gpu::texture::{TexelRows, TexelShape};
use crate::gpu::uniform::uniform;
use crate::ops::Rows;
use crate::ops::gemm::{self, OutBlock, TexelOperand};
use crate::ops::kernel_params::TexelGemmKernel;
use crate::ops::texture_copy::{self, SourceBlock};
use crate::precision::Precision;

static MATMUL: Kernel = kernel!("matmul");

const WG: u32 = 8;
/// Rows per lane: the components of a vec4.
const TILE_M: u32 = 4;
const TILE_N: u32 = 16;

uniform! {
    struct Params {
        m: u32,
        n: u32,
        tiles_n: u32,
        accumulate: u32,
        k_begin: u32,
        k_end: u32,
        a_offset: u32,
        a_stride: u32,
        b_offset: u32,
        b_stride: u32,
        c_offset: u32,
        c_stride: u32,
    }
}

/// An input matrix: `buffer` from element `offset`, rows `stride` elements apart; `transposed`
/// when it is stored as the transpose of the operand the product reads.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    /// The matrix as it is stored, whichever way the product reads it.
    pub(crate) fn stored(self) -> Stored<'a> {
        Stored {
            buffer: self.buffer,
            offset: self.offset,
            stride: self.stride,
        }
    }
}

/// A matrix as it is stored: `buffer` from element `offset`, rows `stride` elements apart.
#[derive(Clone, Copy)]
pub(crate) struct Stored<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
}

/// The output matrix: `buffer` from element `offset`, rows `stride` elements apart.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
    pub stride: usize,
}

/// Where a product reads its operands (the plan's `OperandStorage` for training).
#[derive(Clone, Copy)]
pub(crate) enum Operands<'p> {
    /// `matmul.wgsl` on the storage buffers.
    Buffers,
    /// Texel copies in these packs and the texel GEMM; a product whose copies would not fit a
    /// texture (an operand stored wider than `4 × max_texture_dimension_2d` columns, or with
    /// more rows than the texture array holds) reads buffers.
    Texels(&'p TexelPacks),
}

/// The texel copies of products' operands (and the texel intermediates of training's chunked
/// core): one `rgba32float` texture per `(rows, cols, slot)`, reused by every product that
/// needs that slot and shape. Products run in the order they were bound
/// and wgpu orders each command's writes (a dispatch's or a copy's) after the previous
/// commands' reads, so a later product may overwrite a copy an earlier one has read.
#[derive(Default)]
pub(crate) struct TexelPacks {
    packs: Mutex<HashMap<(usize, usize, &'static str), TexelRows>>,
}

impl TexelPacks {
    pub(crate) fn new() -> TexelPacks {
        TexelPacks::default()
    }

    /// Bytes of every copy made so far: scratch of the pass that made them.
    pub(crate) fn bytes(&self) -> u64 {
        let packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        packs.values().map(|p| p.bytes()).sum()
    }

    /// The texture of `slot` at shape `[rows, cols]`, made on first use and shared by every
    /// later use of that slot and shape.
    pub(crate) fn texels(
        &self,
        ctx: &GpuContext,
        slot: &'static str,
        rows: usize,
        cols: usize,
    ) -> Result<TexelRows> {
        let mut packs = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pack) = packs.get(&(rows, cols, slot)) {
            return Ok(pack.clone());
        }
        let pack = TexelRows::new(ctx, slot, rows, cols)?;
        packs.insert((rows, cols, slot), pack.clone());
        Ok(pack)
    }

    /// The stored matrix `a` (`[rows, cols]` as stored) copied into the texture of `slot`, row
    /// by row: a product that needs its transpose reads the copy transposed
    /// ([`TexelOperand::Transposed`]). The copy engine makes the copy where it can
    /// ([`TexelRows::upload`]), `texture_copy.wgsl` elsewhere.
    pub(crate) async fn pack(
        &self,
        ctx: &GpuContext,
        slot: &'static str,
        (rows, cols): (usize, usize),
        a: Stored<'_>,
    ) -> Result<(TexelRows, Command)> {
        for value in [a.offset, a.stride] {
            index("offset or stride", value)?;
        }
        let texels = self.texels(ctx, slot, rows, cols)?;
        if let Some(upload) = texels.upload(a.buffer, a.offset, a.stride) {
            return Ok((texels, Command::Upload(upload)));
        }
        let block = SourceBlock {
            offset: a.offset,
            stride: a.stride,
        };
        let copy =
            texture_copy::dispatch_block(ctx, a.buffer, Precision::F32, block, &texels).await?;
        Ok((texels, copy.into()))
    }
}

pub(crate) fn variant(a_transposed: bool, b_transposed: bool) -> ShaderVariant {
    ShaderVariant::new(&MATMUL)
        .u32("WG", WG)
        .u32("TILE_N", TILE_N)
        .bool("TA", a_transposed)
        .bool("TB", b_transposed)
}

fn index(what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::LimitExceeded {
        what: format!("matmul {what}"),
        required: value as u64,
        limit: u32::MAX as u64,
        limit_name: "32-bit element indices",
        hint: Some("a shorter sequence or a smaller batch"),
    })
}

/// Binds `C[m, n] (+)= op(A)[m, k]·op(B)[k, n]` reading `operands` as the plan stores them: one
/// dispatch, or one per slice of `k` where the driver caps loop iterations (texels: two copies
/// first). `k = 0` writes zeros (or, accumulating, leaves C).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn product_commands(
    ctx: &GpuContext,
    operands: Operands<'_>,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    c: Target<'_>,
    accumulate: bool,
) -> Result<Vec<Command>> {
    // Each operand as it is stored: op(A) [m, k] or its transpose, op(B)ᵀ [n, k] or its
    // transpose.
    let a_shape = if a.transposed { (k, m) } else { (m, k) };
    let b_shape = if b.transposed { (n, k) } else { (k, n) };
    if let Operands::Texels(packs) = operands
        && m > 0
        && n > 0
        && fits(ctx, a_shape.0, a_shape.1)
        && fits(ctx, b_shape.0, b_shape.1)
    {
        for value in [c.offset, c.stride] {
            index("offset or stride", value)?;
        }
        // The texel GEMM computes lhs·rhsᵀ from the rows of op(A) and of op(B)ᵀ, or from their
        // stored transposes, which it reads transposed. So each operand is copied as it is
        // stored, row by row: a copy that transposes reads a column per texel, and in the
        // backward's products (dW = dPᵀ·h, dh = dP·W) those copies cost more than the GEMM's
        // transposed reads (BENCHMARKS.md, Training).
        let (lhs, copy_a) = packs.pack(ctx, "matmul lhs", a_shape, a.stored()).await?;
        let (rhs, copy_b) = packs.pack(ctx, "matmul rhs", b_shape, b.stored()).await?;
        let lhs_operand = match a.transposed {
            false => TexelOperand::Rows(&lhs),
            true => TexelOperand::Transposed(&lhs),
        };
        let rhs_operand = match b.transposed {
            true => TexelOperand::Rows(&rhs),
            false => TexelOperand::Transposed(&rhs),
        };
        let mut commands = vec![copy_a, copy_b];
        let buffer_out = Rows::Buffer(c.buffer.into());
        let out = OutBlock {
            offset: c.offset,
            stride: c.stride,
            accumulate,
        };
        let product = texel_product(ctx, lhs_operand, rhs_operand, buffer_out, out).await?;
        commands.extend(as_commands(product));
        return Ok(commands);
    }
    Ok(as_commands(
        buffer_dispatches(ctx, m, n, k, a, b, c, accumulate).await?,
    ))
}

/// Whether a `[rows, cols]` matrix fits texel rows on this device.
pub(crate) fn fits(ctx: &GpuContext, rows: usize, cols: usize) -> bool {
    TexelShape::new(ctx, "matmul operand", rows, cols).is_ok()
}

/// `out (+)= lhs·rhsᵀ` with both operands texel rows, either stored transposed
/// (`gemm_texture.wgsl`), into a block of a buffer or into texel rows.
pub(crate) async fn texel_product(
    ctx: &GpuContext,
    lhs: TexelOperand<'_>,
    rhs: TexelOperand<'_>,
    out: Rows<'_>,
    block: OutBlock,
) -> Result<Vec<Dispatch>> {
    gemm::texel_dispatches_into(
        ctx,
        TexelGemmKernel::Blocked,
        lhs,
        rhs,
        out,
        Precision::F32,
        block,
    )
    .await
}

/// `matmul.wgsl` on the storage buffers.
#[allow(clippy::too_many_arguments)]
async fn buffer_dispatches(
    ctx: &GpuContext,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    c: Target<'_>,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let tn = TILE_N as u64;
    // Loop iterations per step of k (a quarter of the unrolled loop's 1 + TILE_N, or the
    // remainder loop's) and outside it, counting no loop as unrolled.
    let slices = split_for_loop_budget(ctx, "matmul", k, 1 + tn.div_ceil(4), 8 * (1 + tn) + tn, 4)?;
    let tiles_n = n.div_ceil(TILE_N as usize);
    let tiles_m = m.div_ceil((WG * TILE_M) as usize);
    let variant = variant(a.transposed, b.transposed);
    let mut dispatches = Vec::with_capacity(slices.len());
    for (slice_index, slice) in slices.into_iter().enumerate() {
        let params = Params {
            m: index("rows", m)?,
            n: index("columns", n)?,
            tiles_n: index("tiles", tiles_n)?,
            accumulate: (accumulate || slice_index > 0) as u32,
            k_begin: index("reduction", slice.start)?,
            k_end: index("reduction", slice.end)?,
            a_offset: index("offset", a.offset)?,
            a_stride: index("stride", a.stride)?,
            b_offset: index("offset", b.offset)?,
            b_stride: index("stride", b.stride)?,
            c_offset: index("offset", c.offset)?,
            c_stride: index("stride", c.stride)?,
        };
        dispatches.push(
            Dispatch::new(
                ctx,
                &variant,
                bytemuck::bytes_of(&params),
                &[a.buffer.into(), b.buffer.into(), c.buffer.into()],
                (tiles_m * tiles_n) as u64,
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
    use crate::testing::normal;

    /// op(A)·op(B) in f64 on the host.
    #[allow(clippy::too_many_arguments)]
    fn product(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (a_offset, a_stride, ta): (usize, usize, bool),
        b: &[f32],
        (b_offset, b_stride, tb): (usize, usize, bool),
    ) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for row in 0..m {
            for col in 0..n {
                out[row * n + col] = (0..k)
                    .map(|i| {
                        let x = a[a_offset
                            + if ta {
                                i * a_stride + row
                            } else {
                                row * a_stride + i
                            }];
                        let y = b[b_offset
                            + if tb {
                                col * b_stride + i
                            } else {
                                i * b_stride + col
                            }];
                        x as f64 * y as f64
                    })
                    .sum();
            }
        }
        out
    }

    /// The routes this device can take: buffers, and texel copies where texel loads work.
    fn routes(packs: &TexelPacks) -> Vec<(&'static str, Operands<'_>)> {
        let mut routes = vec![("buffers", Operands::Buffers)];
        if context().texel_loads_work() {
            routes.push(("texels", Operands::Texels(packs)));
        }
        routes
    }

    #[test]
    fn products_match_the_host_in_every_layout() {
        let packs = TexelPacks::new();
        for (route, operands) in routes(&packs) {
            products_match_the_host(route, operands);
        }
    }

    /// Every transpose pair on a shape no multiple of any tile, into a column block of a wider
    /// C whose other columns keep their poison; then accumulated; then a reduction long enough
    /// to split on a loop-capped driver (stored as 70 000 columns, too wide for a texture, the
    /// texel route falls back to buffers; stored as 70 000 rows, transposed A and untransposed
    /// B, it runs the texel GEMM split over K); and the degenerate sizes.
    fn products_match_the_host(route: &str, operands: Operands<'_>) {
        let (mut rng, what) = rng("matmul");
        for &(m, n, k) in &[
            (37, 29, 53),
            (1, 1, 1),
            (1, 17, 5),
            (33, 1, 9),
            (5, 7, 70_000),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
                let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
                let (a_offset, a_stride) = (3, a_cols + 2);
                let (b_offset, b_stride) = (5, b_cols + 1);
                let a = normal(&mut rng, a_offset + a_rows * a_stride, 1.0);
                let b = normal(&mut rng, b_offset + b_rows * b_stride, 1.0);
                let (c_offset, c_stride) = (2, n + 3);
                let c_len = c_offset + m * c_stride;
                let expected = product(
                    (m, n, k),
                    &a,
                    (a_offset, a_stride, ta),
                    &b,
                    (b_offset, b_stride, tb),
                );
                let (a_buf, b_buf, c_buf) = (upload(&a), upload(&b), poisoned(c_len));
                let run_product = |accumulate: bool| {
                    let ds = build(product_commands(
                        context(),
                        operands,
                        m,
                        n,
                        k,
                        Operand {
                            buffer: &a_buf,
                            offset: a_offset,
                            stride: a_stride,
                            transposed: ta,
                        },
                        Operand {
                            buffer: &b_buf,
                            offset: b_offset,
                            stride: b_stride,
                            transposed: tb,
                        },
                        Target {
                            buffer: &c_buf,
                            offset: c_offset,
                            stride: c_stride,
                        },
                        accumulate,
                    ));
                    if k > 60_000 && context().loop_budget().is_some() {
                        assert!(ds.len() > 1, "{what}: K = {k} did not split");
                    }
                    run_commands(&ds);
                    download(&c_buf, c_len)
                };
                let block = |c: &[f32]| -> Vec<f32> {
                    (0..m)
                        .flat_map(|r| c[c_offset + r * c_stride..][..n].to_vec())
                        .collect()
                };
                let label = format!("{what}: {route}, {m}×{n}×{k} TA {ta} TB {tb}");
                let c = run_product(false);
                assert_close(&label, &block(&c), &expected, 1e-5);
                let outside =
                    (0..c_len).filter(|i| *i < c_offset || (*i - c_offset) % c_stride >= n);
                assert!(
                    outside.clone().all(|i| c[i].is_nan()),
                    "{label}: wrote outside the block"
                );
                let c = run_product(true);
                let doubled: Vec<f64> = expected.iter().map(|v| 2.0 * v).collect();
                assert_close(&format!("{label} accumulated"), &block(&c), &doubled, 1e-5);
            }
        }
    }

    /// Two products of the same shapes bound one after the other and run in one submission:
    /// the second's copies overwrite the texel packs the first read, and both must be right.
    #[test]
    fn products_in_one_pass_share_texel_copies() {
        let (mut rng, what) = rng("matmul packs");
        let packs = TexelPacks::new();
        // Odd sizes copied by the kernel; whole texels at a 256-byte pitch by the copy engine.
        for (m, n, k) in [(19, 23, 13), (19, 64, 64)] {
            products_share_texel_copies(&mut rng, &what, &packs, (m, n, k));
        }
    }

    fn products_share_texel_copies(
        rng: &mut crate::rng::Rng,
        what: &str,
        packs: &TexelPacks,
        (m, n, k): (usize, usize, usize),
    ) {
        for (route, operands) in routes(packs) {
            let mut all = Vec::new();
            let mut expected = Vec::new();
            let mut outputs = Vec::new();
            for _ in 0..2 {
                let a = normal(rng, m * k, 1.0);
                let b = normal(rng, k * n, 1.0);
                expected.push(product((m, n, k), &a, (0, k, false), &b, (0, n, false)));
                let (a_buf, b_buf, c_buf) = (upload(&a), upload(&b), poisoned(m * n));
                let operand = |buffer, stride| Operand {
                    buffer,
                    offset: 0,
                    stride,
                    transposed: false,
                };
                let target = Target {
                    buffer: &c_buf,
                    offset: 0,
                    stride: n,
                };
                all.extend(build(product_commands(
                    context(),
                    operands,
                    m,
                    n,
                    k,
                    operand(&a_buf, k),
                    operand(&b_buf, n),
                    target,
                    false,
                )));
                outputs.push((a_buf, b_buf, c_buf));
            }
            run_commands(&all);
            for (i, ((_, _, c_buf), expected)) in outputs.iter().zip(&expected).enumerate() {
                let c = download(c_buf, m * n);
                let label = format!("{what}: {route}, {m}×{n}×{k}, product {i}");
                assert_close(&label, &c, expected, 1e-5);
            }
        }
    }

    /// Which copies the copy engine makes: whole texels, a texel-aligned offset, a 256-byte row
    /// pitch and a source long enough; each condition broken alone falls back to the kernel.
    /// An upload over several texture layers arrives whole.
    #[test]
    fn aligned_copies_go_through_the_copy_engine() {
        if !context().texel_loads_work() {
            return;
        }
        let (mut rng, what) = rng("texel uploads");
        let packs = TexelPacks::new();
        let source = upload(&normal(&mut rng, 64 * 200, 1.0));
        for (rows, cols, offset, stride, uploads, case) in [
            (10, 64, 0, 64, true, "whole rows"),
            (10, 16, 4, 128, true, "a column block"),
            (200, 64, 0, 64, true, "the whole source"),
            (10, 62, 0, 64, false, "cols % 4 != 0"),
            (10, 64, 2, 64, false, "an offset inside a texel"),
            (10, 64, 0, 68, false, "a pitch of 272 bytes"),
            (1, 128, 0, 64, false, "one row with a shorter stride"),
            (200, 64, 4, 64, false, "a source one texel short"),
            (10, 0, 0, 64, false, "no columns"),
        ] {
            let stored = Stored {
                buffer: &source,
                offset,
                stride,
            };
            let (_, step) = build(packs.pack(context(), "upload", (rows, cols), stored));
            assert_eq!(
                matches!(step, Command::Upload(_)),
                uploads,
                "{what}: {case} ({rows} × {cols} from {offset}, stride {stride})"
            );
        }
        // A caller's buffer that cannot be a copy source (encode_backward's grad_output may be
        // one) is copied by the kernel.
        let storage_only = context().device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("storage only"),
            size: 4 * 64 * 10,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let stored = Stored {
            buffer: &storage_only,
            offset: 0,
            stride: 64,
        };
        let (_, command) = build(packs.pack(context(), "upload", (10, 64), stored));
        assert!(
            matches!(command, Command::Kernel(_)),
            "{what}: a source without COPY_SRC"
        );
        // Round trips: every texture layer of a tall matrix, and a column block of a wider one.
        let tall = crate::gpu::texture::rows_per_layer(context()) as usize + 3;
        for (rows, cols, offset, stride) in [(tall, 8, 0, 64), (5, 16, 20, 128)] {
            let data = normal(&mut rng, offset + rows * stride, 1.0);
            let source = upload(&data);
            let stored = Stored {
                buffer: &source,
                offset,
                stride,
            };
            let (texels, step) = build(packs.pack(context(), "round trip", (rows, cols), stored));
            assert!(
                matches!(step, Command::Upload(_)),
                "{what}: {rows} × {cols}"
            );
            run_commands(&[step]);
            let got = download_texels(&texels);
            for row in 0..rows {
                assert_eq!(
                    got[row * cols..][..cols],
                    data[offset + row * stride..][..cols],
                    "{what}: row {row} of {rows} × {cols} from {offset}"
                );
            }
        }
    }
}
