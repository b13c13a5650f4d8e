//! Matrices stored as `rgba32float` texels, the operand format of the CPU-driver kernels
//! (`rgba16float` for an f16 layer's weights and the blocked core's operands: `textureLoad`
//! widens them to f32 as it fetches, so the kernels that read texels are the same for both).
//!
//! Why textures: lavapipe and llvmpipe turn every storage-buffer or workgroup-memory load into
//! a loop over the SIMD lanes with a branch and a bounds check per lane and component, while a
//! texel fetch is one vectorised gather. A GEMM that reads its operands as texels ran 7× faster
//! there than the same GEMM reading storage buffers (BENCHMARKS.md). GPUs gain nothing from
//! it, so only the CPU kernel profile uses this layout. A kernel may read texel rows as a
//! sampled or as a read-only storage texture (`TexelRead`, `GpuContext::texel_read_for`): every
//! texture here has both usages, and both reads give the same values.
//!
//! Layout: a row-major `[rows, cols]` matrix becomes a 2-D array texture `ceil(cols / 4)`
//! texels wide; row `r` lives at `y = r % rows_per_layer` of layer `r / rows_per_layer`, so
//! that the row count is bounded by `max_texture_dimension_2d × max_texture_array_layers`
//! instead of the (WebGPU default 8192) height alone. Columns past `cols` in the last texel of a
//! row are zero, which GEMMs rely on when `cols % 4 != 0`; the one exception is a texel GEMM's
//! own output (`io/gemm_out_texels.wgsl`), whose readers skip those columns or multiply them by
//! zero padding.

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::precision::Precision;

/// Texels per row, rows per layer and layers of a `[rows, cols]` matrix on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TexelShape {
    pub rows: usize,
    pub cols: usize,
    pub width: u32,
    pub rows_per_layer: u32,
    pub layers: u32,
}

impl TexelShape {
    pub(crate) fn new(ctx: &GpuContext, what: &str, rows: usize, cols: usize) -> Result<Self> {
        let limits = ctx.limits();
        let rows_per_layer = rows_per_layer(ctx);
        let width = cols.div_ceil(4).max(1) as u64;
        let layers = rows.div_ceil(rows_per_layer as usize).max(1) as u64;
        for (required, limit, limit_name) in [
            (
                width,
                limits.max_texture_dimension_2d as u64,
                "max_texture_dimension_2d",
            ),
            (
                layers,
                limits.max_texture_array_layers as u64,
                "max_texture_array_layers",
            ),
        ] {
            if required > limit {
                return Err(Error::LimitExceeded {
                    what: format!("{what} as a texture ({rows} × {cols})"),
                    required,
                    limit,
                    limit_name,
                    hint: Some("the GPU kernel profile (COMPATTN_KERNELS=gpu) uses buffers"),
                });
            }
        }
        Ok(TexelShape {
            rows,
            cols,
            width: width as u32,
            rows_per_layer,
            layers: layers as u32,
        })
    }
}

/// Rows per texture layer: the device's 2-D texture height limit. A pipeline constant (`RPL`)
/// of every kernel that reads or writes texel rows.
pub(crate) fn rows_per_layer(ctx: &GpuContext) -> u32 {
    ctx.limits().max_texture_dimension_2d.max(1)
}

/// A `[rows, cols]` matrix in texels, readable by `textureLoad` and writable by `textureStore`.
/// A clone shares the texture.
#[derive(Clone)]
pub(crate) struct TexelRows {
    pub shape: TexelShape,
    precision: Precision,
    texture: wgpu::Texture,
    view: wgpu::TextureView,
}

impl TexelRows {
    /// An uninitialised `rgba32float` texel matrix.
    pub(crate) fn new(ctx: &GpuContext, label: &str, rows: usize, cols: usize) -> Result<Self> {
        Self::new_in(ctx, label, rows, cols, Precision::F32)
    }

    /// An uninitialised texel matrix of `precision` (`rgba16float` for f16).
    pub(crate) fn new_in(
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        precision: Precision,
    ) -> Result<Self> {
        let shape = TexelShape::new(ctx, label, rows, cols)?;
        let format = precision.texel_format();
        let texture = ctx.device().create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: shape.width,
                height: shape.rows_per_layer.min(rows.max(1) as u32),
                depth_or_array_layers: shape.layers,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::COPY_DST
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor {
            label: Some(label),
            dimension: Some(wgpu::TextureViewDimension::D2Array),
            ..Default::default()
        });
        Ok(TexelRows {
            shape,
            precision,
            texture,
            view,
        })
    }

    /// An `rgba32float` texel matrix holding `data` (`[rows, cols]`, row-major), padded with
    /// zeros (kernel tests and benchmarks; the layer uploads through `with_data_in`).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn with_data(
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self> {
        Self::with_data_in(ctx, label, rows, cols, data, Precision::F32)
    }

    /// [`with_data`](Self::with_data) stored in `precision` (rounded to f16 for `F16`).
    pub(crate) fn with_data_in(
        ctx: &GpuContext,
        label: &str,
        rows: usize,
        cols: usize,
        data: &[f32],
        precision: Precision,
    ) -> Result<Self> {
        debug_assert_eq!(data.len(), rows * cols);
        let matrix = Self::new_in(ctx, label, rows, cols, precision)?;
        let shape = matrix.shape;
        let row_texels = shape.width as usize * 4;
        for layer in 0..shape.layers as usize {
            let first = layer * shape.rows_per_layer as usize;
            let count = (rows - first).min(shape.rows_per_layer as usize);
            let mut padded = vec![0.0f32; count * row_texels];
            for (r, out) in padded.chunks_exact_mut(row_texels).enumerate() {
                out[..cols].copy_from_slice(&data[(first + r) * cols..][..cols]);
            }
            ctx.queue().write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: &matrix.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: 0,
                        z: layer as u32,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                &precision.encode(&padded),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(shape.width * 4 * precision.bytes() as u32),
                    rows_per_image: Some(count as u32),
                },
                wgpu::Extent3d {
                    width: shape.width,
                    height: count as u32,
                    depth_or_array_layers: 1,
                },
            );
        }
        Ok(matrix)
    }

    /// Another handle to the same texture (wgpu handles are reference counted).
    #[cfg(feature = "bench")]
    pub(crate) fn share(&self) -> TexelRows {
        TexelRows {
            shape: self.shape,
            precision: self.precision,
            texture: self.texture.clone(),
            view: self.view.clone(),
        }
    }

    /// The texture (tests read it back).
    #[cfg(test)]
    pub(crate) fn texture(&self) -> &wgpu::Texture {
        &self.texture
    }

    /// The precision of its texels: `rgba32float` or `rgba16float`.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }

    /// The 2-D array view kernels bind.
    pub(crate) fn view(&self) -> &wgpu::TextureView {
        &self.view
    }

    /// A copy of the f32 matrix `m[row, col] = source[offset + row·stride + col]` into these
    /// texel rows by the copy engine (`copy_buffer_to_texture`, one copy per texture layer),
    /// or `None` where the copy engine cannot make it and `texture_copy.wgsl` must: an f16
    /// texture, no columns or `cols % 4 != 0` (the last texel's padding must be zero, and a
    /// copy would carry the next columns into it), rows overlapping (`stride < cols`, which a
    /// one-row operand may pass), an offset that is no whole texel, a row pitch that is no
    /// multiple of wgpu's 256-byte `COPY_BYTES_PER_ROW_ALIGNMENT`, a source without `COPY_SRC`,
    /// or one too short for the last row (wgpu would reject each of these copies).
    ///
    /// Why: on lavapipe the copy engine moves whole rows on the host, where the kernel runs an
    /// invocation per texel: a `[512, 1024]` matrix took 0.84–0.90 ms by copy against
    /// 3.3–4.6 ms by the kernel (BENCHMARKS.md, Training).
    pub(crate) fn upload(
        &self,
        source: &wgpu::Buffer,
        offset: usize,
        stride: usize,
    ) -> Option<TexelUpload> {
        let shape = self.shape;
        let pitch = stride.checked_mul(4)?;
        let last_row_end = (shape.rows.max(1) - 1)
            .checked_mul(stride)?
            .checked_add(offset)?
            .checked_add(shape.cols)?
            .checked_mul(4)?;
        let copyable = self.precision == Precision::F32
            && shape.cols.is_multiple_of(4)
            && shape.rows > 0
            && shape.cols > 0
            && stride >= shape.cols
            && offset.is_multiple_of(4)
            && pitch.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize)
            && u32::try_from(pitch).is_ok()
            && source.usage().contains(wgpu::BufferUsages::COPY_SRC)
            && last_row_end as u64 <= source.size();
        copyable.then(|| TexelUpload {
            source: source.clone(),
            offset: offset as u64 * 4,
            bytes_per_row: pitch as u32,
            texture: self.texture.clone(),
            shape,
        })
    }

    /// Bytes of GPU memory.
    pub(crate) fn bytes(&self) -> u64 {
        let size = self.texture.size();
        size.width as u64
            * size.height as u64
            * size.depth_or_array_layers as u64
            * 4
            * self.precision.bytes()
    }
}

/// A buffer-to-texel-rows copy made by [`TexelRows::upload`], recorded on a command encoder
/// between compute passes (`gpu::dispatch::Step`).
pub(crate) struct TexelUpload {
    source: wgpu::Buffer,
    /// Bytes to row 0 of the source.
    offset: u64,
    bytes_per_row: u32,
    texture: wgpu::Texture,
    shape: TexelShape,
}

impl TexelUpload {
    /// Records the copy: rows of each texture layer in one `copy_buffer_to_texture`.
    pub(crate) fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let shape = self.shape;
        let per_layer = shape.rows_per_layer as usize;
        for layer in 0..shape.layers {
            let first = layer as usize * per_layer;
            let count = (shape.rows - first).min(per_layer) as u32;
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.source,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: self.offset + first as u64 * self.bytes_per_row as u64,
                        bytes_per_row: Some(self.bytes_per_row),
                        rows_per_image: Some(count),
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: 0,
                        z: layer,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width: shape.width,
                    height: count,
                    depth_or_array_layers: 1,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_device::{context, download_texels};

    #[test]
    fn texel_rows_round_trip() {
        let ctx = context();
        for (rows, cols) in [(3, 5), (1, 1), (70, 16)] {
            let data: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
            let texels = {
                let _serial = pollster::block_on(ctx.serial());
                TexelRows::with_data(ctx, "round trip", rows, cols, &data).unwrap()
            };
            assert_eq!(download_texels(&texels), data, "{rows} x {cols}");
        }
    }
}
