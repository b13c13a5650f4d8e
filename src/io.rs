//! Reading and writing safetensors files: the tensor conversions that weights and inputs share.
//!
//! Weights exported from PyTorch are usually `F32`, but trained checkpoints are often stored in
//! `F16`, `BF16` or `F64`; all four are widened (or narrowed) to `f32` on load, the precision the
//! kernels compute in. Masks are `U8` or `BOOL` (`1` = the key may be attended), as the PyTorch
//! reference cases store them.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Name of the input tensor `[b, n, dim]` in a case file.
pub const INPUT: &str = "input";
/// Name of the key mask `[b, n]` in a case file.
pub const MASK: &str = "mask";
/// Name of the output tensor `[b, n, dim]` in a case file.
pub const OUTPUT: &str = "output";
/// Name of a gradient case's `dL/dy [b, n, dim]` (`tests/golden-grad/`).
pub const GRAD_OUTPUT: &str = "grad_output";
/// Name of a gradient case's `dL/dx [b, n, dim]`.
pub const GRAD_INPUT: &str = "grad_input";
/// Prefix of a gradient case's parameter gradients: `grad.<state_dict name>`.
pub const GRAD_PREFIX: &str = "grad.";
/// A cross-attention case's key (and value) input, `[b, n_kv, kdim]`.
pub const MEMORY: &str = "memory";
/// A cross-attention case's separate value input, `[b, n_kv, vdim]`.
pub const VALUE_INPUT: &str = "value_input";

/// Whether `name` (in an unprefixed file) is one of a reference case's tensors beside the
/// parameters: `input`, `mask`, `output`, a gradient case's `grad_output`, `grad_input` and
/// `grad.<name>`, and a cross-attention case's `memory` and `value_input`.
pub fn is_case_tensor(name: &str) -> bool {
    [
        INPUT,
        MASK,
        OUTPUT,
        GRAD_OUTPUT,
        GRAD_INPUT,
        MEMORY,
        VALUE_INPUT,
    ]
    .contains(&name)
        || name.starts_with(GRAD_PREFIX)
}

/// Reads a whole file, naming the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a whole file, naming the path in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// Converts a floating-point tensor to `f32`, whatever its stored precision.
pub fn tensor_to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    // The f32 copy may be twice the file's bytes (f16, bf16): reserved fallibly, so a tensor
    // this machine cannot widen is Error::HostMemory, not an abort.
    let widen = |width: usize, convert: &dyn Fn(&[u8]) -> f32| -> Result<Vec<f32>> {
        let mut values = crate::host_memory::try_with_capacity(name, data.len() / width)?;
        values.extend(data.chunks_exact(width).map(convert));
        Ok(values)
    };
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => widen(4, &|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))?,
        Dtype::F64 => widen(8, &|b| {
            f64::from_le_bytes(b.try_into().expect("chunk of 8")) as f32
        })?,
        Dtype::F16 => widen(2, &|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())?,
        Dtype::BF16 => widen(2, &|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())?,
        other => {
            return Err(Error::Dtype {
                name: name.to_string(),
                expected: "F32, F64, F16 or BF16",
                found: format!("{other:?}"),
            });
        }
    };
    check_finite(name, &values)?;
    Ok(values)
}

/// Converts a `U8` or `BOOL` mask tensor (`1` = may be attended) to booleans.
pub fn tensor_to_mask(name: &str, view: &TensorView<'_>) -> Result<Vec<bool>> {
    match view.dtype() {
        Dtype::U8 | Dtype::BOOL => {}
        other => {
            return Err(Error::Dtype {
                name: name.to_string(),
                expected: "U8 or BOOL",
                found: format!("{other:?}"),
            });
        }
    }
    view.data()
        .iter()
        .enumerate()
        .map(|(index, &byte)| match byte {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::InvalidMask {
                name: name.to_string(),
                index,
                value,
            }),
        })
        .collect()
}

/// Fails with [`Error::NonFinite`] at the first NaN or infinity: the kernels assume finite
/// inputs (WGSL lets implementations assume it), so one bad value must not pass silently.
pub fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            name: name.to_string(),
            index,
        }),
        None => Ok(()),
    }
}

/// A plain `f32` tensor ready for `safetensors::serialize`.
pub struct F32Tensor<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl<'a> F32Tensor<'a> {
    /// Wraps `data` (row-major) with its shape.
    pub fn new(shape: Vec<usize>, data: &'a [f32]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        F32Tensor { shape, data }
    }
}

impl safetensors::View for F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
    }

    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

/// The input of one forward call: `x [batch, seq, dim]` and an optional key mask `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Batch size `b`.
    pub batch: usize,
    /// Sequence length `n`.
    pub seq: usize,
    /// Model width.
    pub dim: usize,
    /// Row-major `[batch, seq, dim]`.
    pub x: Vec<f32>,
    /// Row-major `[batch, seq]`, `true` = the key may be attended; `None` = every key may be.
    pub mask: Option<Vec<bool>>,
}

impl Input {
    /// Reads `input` (and `mask`, if present) from a safetensors file's bytes; in a file with a
    /// `memory`, `mask` is the memory's ([`MemoryInput`]) and the input has none.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Input> {
        let file = SafeTensors::deserialize(bytes)?;
        let view = file.tensor(INPUT).map_err(|_| Error::MissingTensor {
            name: INPUT.into(),
            context: Some("the input file must hold `input` [batch, seq, dim] as F32".into()),
        })?;
        let &[batch, seq, dim] = view.shape() else {
            return Err(Error::shape(INPUT, &[0, 0, 0], view.shape()));
        };
        let x = tensor_to_f32(INPUT, &view)?;
        // With a memory (cross-attention), `mask` is the memory's ([`MemoryInput`]).
        let mask = match file.tensor(MASK) {
            Ok(_) if file.tensor(MEMORY).is_ok() => None,
            Ok(view) => {
                if view.shape() != [batch, seq] {
                    return Err(Error::shape(MASK, &[batch, seq], view.shape()));
                }
                Some(tensor_to_mask(MASK, &view)?)
            }
            Err(_) => None,
        };
        Ok(Input {
            batch,
            seq,
            dim,
            x,
            mask,
        })
    }

    /// Reads `input` and `mask` from a safetensors file.
    pub fn load(path: impl AsRef<Path>) -> Result<Input> {
        Self::from_safetensors(&read_file(path.as_ref())?)
    }
}

/// The memory of a cross-attention input file: `memory [batch, memory_seq, kdim]`, optionally
/// `value_input [batch, memory_seq, vdim]` (separate key and value inputs), and `mask [batch,
/// memory_seq]` on the memory (U8/BOOL, 1 = may be attended).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryInput {
    /// Batch size.
    pub batch: usize,
    /// Memory positions per sequence.
    pub seq: usize,
    /// The key input's width (`kdim`).
    pub key_dim: usize,
    /// Row-major `[batch, seq, key_dim]`.
    pub keys: Vec<f32>,
    /// `value_input`, row-major `[batch, seq, vdim]`, with its width; `None`: the keys' input.
    pub values: Option<(Vec<f32>, usize)>,
    /// Row-major `[batch, seq]`, `true` = the position may be attended.
    pub mask: Option<Vec<bool>>,
}

impl MemoryInput {
    /// Reads `memory`, `value_input` and the memory's `mask` from a safetensors file's bytes;
    /// `None` if the file holds no `memory`.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Option<MemoryInput>> {
        let file = SafeTensors::deserialize(bytes)?;
        let Ok(view) = file.tensor(MEMORY) else {
            return Ok(None);
        };
        let &[batch, seq, key_dim] = view.shape() else {
            return Err(Error::shape(MEMORY, &[0, 0, 0], view.shape()));
        };
        let keys = tensor_to_f32(MEMORY, &view)?;
        let values = match file.tensor(VALUE_INPUT) {
            Ok(view) => match *view.shape() {
                [b, n, value_dim] if (b, n) == (batch, seq) => {
                    Some((tensor_to_f32(VALUE_INPUT, &view)?, value_dim))
                }
                _ => return Err(Error::shape(VALUE_INPUT, &[batch, seq, 0], view.shape())),
            },
            Err(_) => None,
        };
        let mask = match file.tensor(MASK) {
            Ok(view) => {
                if view.shape() != [batch, seq] {
                    return Err(Error::shape(
                        "mask (on the memory)",
                        &[batch, seq],
                        view.shape(),
                    ));
                }
                Some(tensor_to_mask(MASK, &view)?)
            }
            Err(_) => None,
        };
        Ok(Some(MemoryInput {
            batch,
            seq,
            key_dim,
            keys,
            values,
            mask,
        }))
    }
}

/// Reads the `output` tensor of a reference case, if the file has one.
pub fn read_output(bytes: &[u8]) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    read_tensor(bytes, OUTPUT)
}

/// Reads the tensor `name` of a reference case (`output`, `grad_output`, `grad.<name>`, ...)
/// as f32 with its shape, if the file has one.
pub fn read_tensor(bytes: &[u8], name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let file = SafeTensors::deserialize(bytes)?;
    match file.tensor(name) {
        Ok(view) => Ok(Some((view.shape().to_vec(), tensor_to_f32(name, &view)?))),
        Err(_) => Ok(None),
    }
}

/// Serialises `output [batch, seq, dim]` as a safetensors file's bytes.
pub fn output_to_safetensors(batch: usize, seq: usize, dim: usize, y: &[f32]) -> Result<Vec<u8>> {
    let tensor = F32Tensor::new(vec![batch, seq, dim], y);
    Ok(safetensors::serialize([(OUTPUT, tensor)], None)?)
}
