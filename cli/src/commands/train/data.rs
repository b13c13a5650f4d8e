//! The training set of `compattn train`: `input [m, n, dim]`, `target [m, n, dim]` and an
//! optional key mask `[m, n]` read from one safetensors file, every shape checked against the
//! others and the layer's `dim` from the file's header before any tensor is converted, and the
//! batches cut from it in order.

use std::path::Path;

use compositional_attention::host_memory::{self, bytes_of};
use compositional_attention::io::{self, INPUT, MASK};
use compositional_attention::{Error, host_memory::try_with_capacity};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Name of the regression target `[m, n, dim]` in a training set.
pub const TARGET: &str = "target";

/// What a training set must hold, for the missing-tensor message.
const LAYOUT: &str =
    "a training set holds `input` [m, n, dim], `target` [m, n, dim] and optionally `mask` [m, n]";

/// [`Error::Shape`] for the tensor `name`.
fn shape_error(name: String, expected: &[usize], found: &[usize]) -> Error {
    Error::Shape {
        name,
        expected: expected.to_vec(),
        found: found.to_vec(),
    }
}

/// The shapes of a training set, read from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataShape {
    /// Sequences `m`.
    pub sequences: usize,
    /// Tokens per sequence `n`.
    pub seq: usize,
    pub dim: usize,
    pub masked: bool,
}

impl DataShape {
    /// Host bytes the converted set takes: input and target in f32, the mask in bytes.
    pub fn host_bytes(&self) -> u64 {
        let tensor = bytes_of(&[self.sequences, self.seq, self.dim], 4);
        let mask = if self.masked {
            bytes_of(&[self.sequences, self.seq], 1)
        } else {
            0
        };
        tensor.saturating_mul(2).saturating_add(mask)
    }
}

/// A training set in memory, row-major.
pub struct TrainingData {
    pub shape: DataShape,
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    pub mask: Option<Vec<bool>>,
}

/// The parsed file, its shapes checked.
pub struct DataFile<'a> {
    file: SafeTensors<'a>,
    pub shape: DataShape,
}

impl<'a> DataFile<'a> {
    /// Parses `bytes` (the file at `path`) and checks the tensors' presence and shapes against
    /// each other and the layer's `dim`; converts nothing.
    pub fn parse(bytes: &'a [u8], path: &Path, dim: usize) -> Result<DataFile<'a>, Error> {
        let file = SafeTensors::deserialize(bytes)?;
        let named = |name: &str| format!("{}: {name}", path.display());
        let missing = |name: &str| Error::MissingTensor {
            name: name.into(),
            context: Some(format!("in {}; {LAYOUT}", path.display())),
        };
        let input = file.tensor(INPUT).map_err(|_| missing(INPUT))?;
        let &[sequences, seq, found_dim] = input.shape() else {
            return Err(shape_error(named(INPUT), &[0, 0, dim], input.shape()));
        };
        if found_dim != dim {
            return Err(Error::Shape {
                name: format!("{} (the layer's dim is {dim})", named(INPUT)),
                expected: vec![sequences, seq, dim],
                found: input.shape().to_vec(),
            });
        }
        if sequences == 0 || seq == 0 {
            return Err(Error::InvalidConfig {
                field: INPUT,
                value: format!("{} of shape {:?}", path.display(), input.shape()),
                reason: "the training set is empty: it needs at least one sequence (m ≥ 1) of at \
                         least one token (n ≥ 1)",
            });
        }
        let target = file.tensor(TARGET).map_err(|_| missing(TARGET))?;
        if target.shape() != input.shape() {
            return Err(shape_error(named(TARGET), input.shape(), target.shape()));
        }
        let masked = match file.tensor(MASK) {
            Ok(mask) if mask.shape() != [sequences, seq] => {
                return Err(shape_error(named(MASK), &[sequences, seq], mask.shape()));
            }
            Ok(_) => true,
            Err(_) => false,
        };
        let shape = DataShape {
            sequences,
            seq,
            dim,
            masked,
        };
        Ok(DataFile { file, shape })
    }

    /// Converts the tensors (f32; the mask to booleans), refusing NaN and infinity in `input`
    /// and `target` and mask values other than 0 and 1.
    pub fn read(&self) -> Result<TrainingData, Error> {
        let tensor = |name: &str| {
            let view = self.file.tensor(name)?;
            io::tensor_to_f32(name, &view)
        };
        let mask = match self.shape.masked {
            true => Some(read_mask(&self.file.tensor(MASK)?)?),
            false => None,
        };
        Ok(TrainingData {
            shape: self.shape,
            input: tensor(INPUT)?,
            target: tensor(TARGET)?,
            mask,
        })
    }
}

/// A key mask of `U8`/`BOOL` (the crate's reader) or any integer type, `1` = may be attended.
fn read_mask(view: &TensorView<'_>) -> Result<Vec<bool>, Error> {
    let width = match view.dtype() {
        Dtype::U8 | Dtype::BOOL => return io::tensor_to_mask(MASK, view),
        Dtype::I8 => 1,
        Dtype::I16 | Dtype::U16 => 2,
        Dtype::I32 | Dtype::U32 => 4,
        Dtype::I64 | Dtype::U64 => 8,
        other => {
            return Err(Error::Dtype {
                name: MASK.into(),
                expected: "U8, BOOL or an integer type",
                found: format!("{other:?}"),
            });
        }
    };
    let data = view.data();
    let mut mask = try_with_capacity(MASK, data.len() / width)?;
    for (index, element) in data.chunks_exact(width).enumerate() {
        // Little-endian: a 0 or a 1 has every byte but the first zero, whatever the sign.
        let (first, rest) = (element[0], &element[1..]);
        match (first, rest.iter().all(|&b| b == 0)) {
            (0, true) => mask.push(false),
            (1, true) => mask.push(true),
            _ => {
                return Err(Error::InvalidMask {
                    name: MASK.into(),
                    index,
                    // The low byte, or 0xff where it alone would read as 0 or 1.
                    value: if first <= 1 { 0xff } else { first },
                });
            }
        }
    }
    Ok(mask)
}

/// The sequences of step `step` at `batch` per step: `(step·batch + i) mod m` for `i` in
/// `0..batch`, so the steps walk through the set in order and wrap around.
pub fn batch_rows(step: u64, batch: usize, sequences: usize) -> impl Iterator<Item = usize> {
    let start = (u128::from(step) * batch as u128 % sequences as u128) as usize;
    (0..batch).map(move |i| (start + i) % sequences)
}

/// Reusable buffers of one batch: `batch × n × dim` input and target, `batch × n` mask.
pub struct Batch {
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    pub mask: Option<Vec<bool>>,
}

impl Batch {
    /// Buffers for `batch` sequences of `data`, reserved fallibly.
    pub fn new(data: &DataShape, batch: usize) -> Result<Batch, Error> {
        let len = host_memory::element_count("a batch", &[batch, data.seq, data.dim], 4)?;
        let mask = match data.masked {
            true => Some(try_with_capacity(
                "a batch's mask",
                batch.saturating_mul(data.seq),
            )?),
            false => None,
        };
        Ok(Batch {
            input: try_with_capacity("a batch's input", len)?,
            target: try_with_capacity("a batch's target", len)?,
            mask,
        })
    }

    /// Fills the buffers with `rows` of `data`.
    pub fn fill(&mut self, data: &TrainingData, rows: impl Iterator<Item = usize>) {
        let (n, dim) = (data.shape.seq, data.shape.dim);
        self.input.clear();
        self.target.clear();
        if let Some(mask) = &mut self.mask {
            mask.clear();
        }
        for row in rows {
            let tokens = row * n * dim..(row + 1) * n * dim;
            self.input.extend_from_slice(&data.input[tokens.clone()]);
            self.target.extend_from_slice(&data.target[tokens]);
            if let (Some(mask), Some(all)) = (&mut self.mask, &data.mask) {
                mask.extend_from_slice(&all[row * n..(row + 1) * n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_masks_read_as_booleans_and_other_values_are_refused() {
        let bytes: Vec<u8> = [1i32, 0, 1, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::I32, vec![2, 2], &bytes).unwrap();
        assert_eq!(read_mask(&view).unwrap(), [true, false, true, true]);
        let bytes: Vec<u8> = [1i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::I64, vec![1, 2], &bytes).unwrap();
        let err = read_mask(&view).unwrap_err();
        assert!(err.to_string().contains("mask[1] = 255"), "{err}");
        let bytes: Vec<u8> = [256u16, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::U16, vec![1, 2], &bytes).unwrap();
        assert!(matches!(
            read_mask(&view),
            Err(Error::InvalidMask { index: 0, .. })
        ));
        let view = TensorView::new(Dtype::F32, vec![1, 1], &[0, 0, 128, 63]).unwrap();
        assert!(matches!(read_mask(&view), Err(Error::Dtype { .. })));
    }

    #[test]
    fn batches_walk_the_set_in_order_and_wrap() {
        let rows = |step, batch, m| batch_rows(step, batch, m).collect::<Vec<_>>();
        assert_eq!(rows(0, 2, 5), [0, 1]);
        assert_eq!(rows(1, 2, 5), [2, 3]);
        assert_eq!(rows(2, 2, 5), [4, 0]);
        assert_eq!(rows(3, 2, 5), [1, 2]);
        assert_eq!(rows(7, 3, 3), [0, 1, 2]);
        // A step count past u32 and m that does not divide it.
        let step = 1u64 << 40;
        let expected = ((step as u128 * 4) % 7) as usize;
        assert_eq!(rows(step, 4, 7)[0], expected);
    }
}
