//! The parameters of a checkpoint by name, taken one by one by a reader: whatever no reader
//! takes is an unexpected tensor, named in the error.

use std::collections::BTreeMap;

use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::io;

/// One tensor: its shape and row-major f32 values.
pub(crate) struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The tensors of a checkpoint not taken yet, by name (the prefix removed).
pub(crate) struct Tensors {
    map: BTreeMap<String, Tensor>,
    prefix: String,
}

impl Tensors {
    /// Every tensor under `prefix` (the case tensors `input`, `mask`, `output` of an unprefixed
    /// file are left out), converted to f32 and checked finite.
    pub(crate) fn from_safetensors(file: &SafeTensors<'_>, prefix: &str) -> Result<Tensors> {
        let mut map = BTreeMap::new();
        for (name, view) in file.iter() {
            let Some(local) = name.strip_prefix(prefix) else {
                continue;
            };
            if prefix.is_empty() && io::is_case_tensor(local) {
                continue;
            }
            // Widened to f32 and checked finite.
            let data = io::tensor_to_f32(name, &view)?;
            map.insert(
                local.to_string(),
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Tensors {
            map,
            prefix: prefix.to_string(),
        })
    }

    /// Tensors already read (a Keras `.weights.h5`), by name.
    pub(crate) fn from_map(map: BTreeMap<String, Tensor>) -> Tensors {
        Tensors {
            map,
            prefix: String::new(),
        }
    }

    /// Whether `name` is present (not taken yet).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Takes `name`, which must be present and of rank `rank`.
    pub(crate) fn take(&mut self, name: &str, rank: usize, why: &str) -> Result<Tensor> {
        let tensor = self.map.remove(name).ok_or_else(|| Error::MissingTensor {
            name: format!("{}{name}", self.prefix),
            context: Some(why.to_string()),
        })?;
        if tensor.shape.len() != rank {
            return Err(Error::ConfigMismatch(format!(
                "{}{name} has shape {:?}; it must have {rank} dimension(s)",
                self.prefix, tensor.shape
            )));
        }
        Ok(tensor)
    }

    /// Takes `name` if present.
    pub(crate) fn take_optional(&mut self, name: &str, rank: usize) -> Result<Option<Tensor>> {
        match self.has(name) {
            true => self.take(name, rank, "").map(Some),
            false => Ok(None),
        }
    }

    /// Fails if any tensor was not taken: the checkpoint has parameters this form lacks.
    pub(crate) fn finish(self, known: &str) -> Result<()> {
        match self.map.keys().next() {
            Some(name) => Err(Error::UnexpectedTensor {
                name: format!("{}{name}", self.prefix),
                known: known.to_string(),
            }),
            None => Ok(()),
        }
    }
}
