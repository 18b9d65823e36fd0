//! The tensors of a checkpoint, whether in one `model.safetensors`, split into shards listed by
//! `model.safetensors.index.json` (how Hugging Face saves models above its shard size limit), or
//! handed over in memory by a program that holds the model already.

mod file;
mod memory;

use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use file::TensorFile;
use memory::MemoryTensors;
pub use memory::{NamedTensor, TensorData};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// How many tensor names an error message lists: enough to recognise a layout, short enough
/// to read.
const NAMES_IN_ERRORS: usize = 8;

/// One or more safetensors files, or tensors in memory, seen as a single name -> tensor map.
pub struct TensorStore {
    /// The single file or the index, or the label of the in-memory model, for error messages.
    origin: PathBuf,
    backend: Backend,
    names: Vec<String>,
}

enum Backend {
    Files {
        files: Vec<TensorFile>,
        /// Which file holds each tensor; for a single file every name maps to 0.
        location: HashMap<String, usize>,
    },
    Memory(MemoryTensors),
}

/// Where one tensor lives.
enum Entry<'a> {
    File(&'a TensorFile),
    Memory(&'a MemoryTensors, &'a NamedTensor),
}

impl TensorStore {
    /// `dir/model.safetensors` if present, else the shards named by
    /// `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_file(&single);
        }
        let index = dir.join(SHARD_INDEX);
        if index.is_file() {
            return Self::open_index(&index);
        }
        Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {SINGLE_FILE} nor {SHARD_INDEX} found in the model directory"),
            ),
        })
    }

    /// One safetensors file at `path`, whatever its name.
    pub fn open_file(path: &Path) -> Result<Self> {
        Ok(Self::from_file(TensorFile::open(path)?))
    }

    fn from_file(file: TensorFile) -> Self {
        let names = file.names().to_vec();
        let location = names.iter().map(|n| (n.clone(), 0)).collect();
        Self {
            origin: file.path().to_path_buf(),
            backend: Backend::Files {
                files: vec![file],
                location,
            },
            names,
        }
    }

    /// Tensors already in memory (row-major, as PyTorch holds them), under the names a
    /// checkpoint of the model would give them; `origin` names where they came from in error
    /// messages.
    pub fn from_tensors(origin: &str, tensors: Vec<NamedTensor>) -> Result<Self> {
        let memory = MemoryTensors::new(Path::new(origin), tensors)?;
        Ok(Self {
            origin: memory.origin().to_path_buf(),
            names: memory.names(),
            backend: Backend::Memory(memory),
        })
    }

    /// Reads the index's `weight_map` (tensor name -> shard file name, relative to the index)
    /// and every shard it names. The map is the authority, as in `transformers`; a name it lists
    /// that its shard lacks is an error now rather than a confusing "not found" later.
    pub fn open_index(index: &Path) -> Result<Self> {
        let fmt = |msg: String| Error::Format {
            path: index.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| fmt(format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| fmt("missing object 'weight_map'".into()))?;
        let base = index.parent().unwrap_or(Path::new("."));
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        let mut shard_names: Vec<String> = Vec::new();
        let mut location = HashMap::new();
        let mut names: Vec<(usize, String)> = Vec::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| fmt(format!("weight_map['{name}'] is not a file name")))?;
            // A shard name escaping the directory would read files the index has no business
            // pointing at.
            if Path::new(file).components().count() != 1 {
                return Err(fmt(format!(
                    "shard name '{file}' must be a plain file name in the index's directory"
                )));
            }
            let id = *shard_ids.entry(file.to_string()).or_insert_with(|| {
                shard_names.push(file.to_string());
                shard_names.len() - 1
            });
            location.insert(name.clone(), id);
            names.push((id, name.clone()));
        }
        if location.is_empty() {
            return Err(fmt("'weight_map' lists no tensors".into()));
        }
        let files = shard_names
            .iter()
            .map(|f| TensorFile::open(&base.join(f)))
            .collect::<Result<Vec<_>>>()?;
        for (name, &id) in &location {
            if !files[id].contains(name) {
                return Err(fmt(format!(
                    "tensor '{name}' is mapped to {} but that shard does not hold it ({})",
                    shard_names[id],
                    files[id].sample_names()
                )));
            }
        }
        // Shard order, then file order within a shard: the order a reader of the files sees.
        names.sort_by_key(|(id, n)| {
            let pos = files[*id].names().iter().position(|m| m == n);
            (*id, pos)
        });
        Ok(Self {
            origin: index.to_path_buf(),
            backend: Backend::Files { files, location },
            names: names.into_iter().map(|(_, n)| n).collect(),
        })
    }

    /// The single file or the shard index; for tensors in memory, the label they were given.
    pub fn path(&self) -> &Path {
        &self.origin
    }

    /// How many files hold the tensors (0 for tensors in memory).
    pub fn num_files(&self) -> usize {
        match &self.backend {
            Backend::Files { files, .. } => files.len(),
            Backend::Memory(_) => 0,
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Files { location, .. } => location.contains_key(name),
            Backend::Memory(m) => m.get(name).is_some(),
        }
    }

    /// A short listing of the names found, for error messages.
    pub fn sample_names(&self) -> String {
        sample_names(&self.names)
    }

    fn entry(&self, name: &str) -> Result<Entry<'_>> {
        let found = match &self.backend {
            Backend::Files { files, location } => {
                location.get(name).map(|&id| Entry::File(&files[id]))
            }
            Backend::Memory(m) => m.get(name).map(|t| Entry::Memory(m, t)),
        };
        found.ok_or_else(|| {
            Error::Model(format!(
                "{}: tensor '{name}' not found ({})",
                self.origin.display(),
                self.sample_names()
            ))
        })
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match self.entry(name)? {
            Entry::File(f) => f.shape(name),
            Entry::Memory(_, t) => Ok(t.shape.clone()),
        }
    }

    /// All elements of `name` in row-major order as f64, after checking its shape.
    pub fn read_f64(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f64>> {
        match self.entry(name)? {
            Entry::File(f) => f.read_f64(name, expected_shape),
            Entry::Memory(m, t) => m.read_f64(t, expected_shape),
        }
    }

    /// A rank-2 tensor stored row-major as rows x cols.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Mat<f64>> {
        let v = self.read_f64(name, &[rows, cols])?;
        self.nonempty(name, rows, cols)?;
        // Row-major rows x cols is column-major cols x rows: one tiled transpose.
        Ok(crate::linalg::layout::transposed(
            MatRef::from_column_major_slice(&v, cols, rows),
        ))
    }

    /// A rank-2 tensor stored as cols x rows, returned transposed (rows x cols). GPT-2's Conv1D
    /// keeps its weight as [in, out]; this turns it into the [out, in] Linear convention.
    pub fn matrix_transposed(&self, name: &str, rows: usize, cols: usize) -> Result<Mat<f64>> {
        let v = self.read_f64(name, &[cols, rows])?;
        self.nonempty(name, cols, rows)?;
        Ok(Mat::from_fn(rows, cols, |i, j| v[j * rows + i]))
    }

    /// A weight matrix has values: a header may claim [0, 2^63] for no bytes at all, and building
    /// a matrix of 2^63 empty columns never finished (found by tests/fuzz_parsers.rs).
    fn nonempty(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            let at = match self.entry(name)? {
                Entry::File(f) => f.path(),
                Entry::Memory(m, _) => m.origin(),
            };
            return Err(Error::Empty {
                what: format!("{}: tensor '{name}' (shape [{rows}, {cols}])", at.display()),
            });
        }
        Ok(())
    }

    /// A rank-1 tensor of length `len`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        self.read_f64(name, &[len])
    }
}

/// "N tensors, e.g. a, b, ..." for error messages: enough names to recognise a layout.
fn sample_names(names: &[String]) -> String {
    if names.is_empty() {
        return "no tensors".into();
    }
    let mut shown: Vec<&str> = names
        .iter()
        .take(NAMES_IN_ERRORS)
        .map(String::as_str)
        .collect();
    if names.len() > shown.len() {
        shown.push("...");
    }
    format!("{} tensors, e.g. {}", names.len(), shown.join(", "))
}
