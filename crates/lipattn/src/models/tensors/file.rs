//! One `.safetensors` file, the backend of `TensorStore` (which callers use, whether the
//! weights are in one file or sharded), read as f64.
//!
//! The whole file is read into memory rather than memory-mapped: the checkpoints this crate
//! targets are small (MiniLM is 90 MB), and a plain read keeps the crate free of `unsafe` and of
//! a memory-mapping dependency. Every tensor is converted to f64 on access, because the
//! certified bounds downstream are computed in f64 whatever the storage precision was.

use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// A safetensors file held in memory with its validated header.
pub(super) struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    header_len: usize,
    metadata: Metadata,
    /// Names in file order, so that error messages list them reproducibly.
    names: Vec<String>,
}

impl TensorFile {
    /// Reads and validates the whole file (header JSON, offsets covering the buffer exactly).
    pub(super) fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                msg: format!("not a valid safetensors file: {e}"),
            })?;
        let names = metadata.offset_keys();
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            header_len,
            metadata,
            names,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in the order their data appears in the file.
    pub(super) fn names(&self) -> &[String] {
        &self.names
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// A short listing of the names found, for error messages.
    pub(super) fn sample_names(&self) -> String {
        super::sample_names(&self.names)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.metadata.info(name).ok_or_else(|| {
            Error::Model(format!(
                "{}: tensor '{name}' not found ({})",
                self.path.display(),
                self.sample_names()
            ))
        })
    }

    /// The shape recorded in the header for `name`.
    pub(super) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    /// All elements of `name` in row-major order, converted to f64, after checking its shape.
    pub(super) fn read_f64(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f64>> {
        let info = self.info(name)?;
        if info.shape != expected_shape {
            return Err(Error::shape(
                format!("{}: tensor '{name}'", self.path.display()),
                format!("{expected_shape:?}"),
                format!("{:?}", info.shape),
            ));
        }
        let start = 8 + self.header_len;
        let (a, b) = info.data_offsets;
        // read_metadata already proved the offsets lie inside the buffer and match the shape;
        // `get` keeps a violated invariant an error instead of a panic.
        let raw = self
            .bytes
            .get(start + a..start + b)
            .ok_or_else(|| Error::Format {
                path: self.path.clone(),
                msg: format!("tensor '{name}': data offsets {a}..{b} outside the file"),
            })?;
        decode(raw, info.dtype).ok_or_else(|| {
            Error::Model(format!(
                "{}: tensor '{name}' has dtype {:?}; only F32, F16, BF16 and F64 are supported",
                self.path.display(),
                info.dtype
            ))
        })
    }
}

/// Little-endian decoding, on the rayon pool (the order of the values is kept); `None` for a
/// dtype that is not a real float type we accept.
fn decode(raw: &[u8], dtype: Dtype) -> Option<Vec<f64>> {
    fn chunks<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f64 + Sync + Send) -> Vec<f64> {
        raw.par_chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F64 => chunks::<8>(raw, f64::from_le_bytes),
        Dtype::F32 => chunks::<4>(raw, |a| f32::from_le_bytes(a) as f64),
        Dtype::F16 => chunks::<2>(raw, |a| half::f16::from_le_bytes(a).to_f64()),
        Dtype::BF16 => chunks::<2>(raw, |a| half::bf16::from_le_bytes(a).to_f64()),
        _ => return None,
    })
}
