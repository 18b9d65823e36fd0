//! Tensors handed over in memory, the backend of `TensorStore` for a model that is already
//! loaded somewhere else (Python's `Model.from_transformers`): the same names and shapes a
//! checkpoint would hold, so that the loader resolves them exactly as it resolves a file's.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tensor's values in row-major order (PyTorch's layout), in one of the precisions the
/// loader reads. Half precisions have no variant: they convert to f32 without loss before they
/// are handed over.
#[derive(Clone, Debug)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One named tensor of a checkpoint, as a safetensors file would hold it.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub(super) struct MemoryTensors {
    origin: PathBuf,
    tensors: Vec<NamedTensor>,
    index: HashMap<String, usize>,
}

impl MemoryTensors {
    /// Checks what a safetensors header check would: unique names, and as many values as each
    /// shape holds.
    pub(super) fn new(origin: &Path, tensors: Vec<NamedTensor>) -> Result<Self> {
        let fmt = |msg: String| Error::Format {
            path: origin.to_path_buf(),
            msg,
        };
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(fmt(format!("tensor '{}' is given twice", t.name)));
            }
            let count = t
                .shape
                .iter()
                .try_fold(1usize, |acc, &s| acc.checked_mul(s));
            if count != Some(t.data.len()) {
                return Err(fmt(format!(
                    "tensor '{}': shape {:?} but {} values",
                    t.name,
                    t.shape,
                    t.data.len()
                )));
            }
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            tensors,
            index,
        })
    }

    /// Names in the order they were given.
    pub(super) fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    pub(super) fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub(super) fn origin(&self) -> &Path {
        &self.origin
    }

    /// All elements of `name` in row-major order as f64 (f32 widens exactly, as it does from a
    /// file), after checking its shape.
    pub(super) fn read_f64(&self, t: &NamedTensor, expected_shape: &[usize]) -> Result<Vec<f64>> {
        if t.shape != expected_shape {
            return Err(Error::shape(
                format!("{}: tensor '{}'", self.origin.display(), t.name),
                format!("{expected_shape:?}"),
                format!("{:?}", t.shape),
            ));
        }
        Ok(match &t.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F64(v) => v.clone(),
        })
    }
}
