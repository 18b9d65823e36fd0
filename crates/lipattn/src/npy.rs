//! NumPy .npy reading and writing: f32 or f64, C order, 1-D or 2-D, converted to f64.

use crate::error::{Error, Result};
use faer::Mat;
use npyz::{DType, Order, TypeStr, WriterBuilder};
use std::path::Path;

/// A numeric array read from .npy, in f64, with its shape and original dtype.
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    pub dtype: String,
}

pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let fmt = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    if let Some(problem) = header_problem(&bytes) {
        return Err(fmt(problem));
    }
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| fmt(format!("not a valid .npy file ({e})")))?;
    if npy.order() != Order::C {
        return Err(fmt(
            "array is in Fortran order; save it in C order (np.ascontiguousarray)".into(),
        ));
    }
    let shape = npy
        .shape()
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            fmt(format!(
                "header shape {:?} does not fit in memory",
                npy.shape()
            ))
        })?;
    let dtype = match npy.dtype() {
        DType::Plain(t) => t.to_string(),
        other => {
            return Err(fmt(format!(
                "structured dtype {other:?} is not supported; use float32 or float64"
            )))
        }
    };
    // The header alone decides how much is allocated: check its size against the file before
    // trusting it, with overflow-checked arithmetic (a wrapped product once passed as 0 values).
    let item = if dtype.ends_with('4') { 4 } else { 8 };
    let values = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| {
            fmt(format!(
                "header shape {shape:?}: its number of values overflows"
            ))
        })?;
    if values.saturating_mul(item) > bytes.len() {
        return Err(fmt(format!(
            "header shape {shape:?} needs {values} values ({} bytes), but the file has {} bytes",
            values.saturating_mul(item),
            bytes.len()
        )));
    }
    let data: Vec<f64> = match dtype.as_str() {
        "<f8" | ">f8" => npy
            .into_vec::<f64>()
            .map_err(|e| fmt(format!("reading f64 data: {e}")))?,
        "<f4" | ">f4" => npy
            .into_vec::<f32>()
            .map_err(|e| fmt(format!("reading f32 data: {e}")))?
            .into_iter()
            .map(f64::from)
            .collect(),
        other => {
            return Err(fmt(format!(
                "dtype {other} is not supported; use float32 (<f4) or float64 (<f8)"
            )))
        }
    };
    if data.len() != values {
        return Err(fmt(format!(
            "header shape {shape:?} needs {values} values, file has {}",
            data.len()
        )));
    }
    Ok(NpyArray { shape, data, dtype })
}

/// What is wrong with a .npy header that `npyz` would not report safely, checked before it reads
/// the file: `npyz` allocates the header's length as given (a 12-byte file claiming a 3 GB header
/// allocated 3 GB; found by the `npy` target of fuzz/) and multiplies the shape without overflow
/// checks, which panics in a build with them (any debug build) on a shape such as (2^33, 2^32)
/// (found by tests/fuzz_parsers.rs). None when nothing is wrong here or the header is not
/// readable here; `npyz` then reports what is wrong with it.
fn header_problem(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(b"\x93NUMPY") {
        return None;
    }
    let (start, len): (usize, usize) = match bytes.get(6)? {
        1 => (
            10,
            usize::from(u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?])),
        ),
        2 | 3 => (
            12,
            u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize,
        ),
        _ => return None,
    };
    let Some(header) = bytes.get(start..start.saturating_add(len)) else {
        return Some(format!(
            "the header claims {len} bytes, past the end of the file ({} bytes)",
            bytes.len()
        ));
    };
    let header = std::str::from_utf8(header).ok()?;
    let after = &header[header
        .find("'shape'")
        .or_else(|| header.find("\"shape\""))?..];
    let tuple = &after[after.find('(')? + 1..];
    let tuple = &tuple[..tuple.find(')')?];
    let shape = tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    shape
        .iter()
        .try_fold(1u64, |a, &s| a.checked_mul(s))
        .is_none()
        .then(|| format!("header shape {shape:?}: its number of values overflows"))
}

/// Reads an (n, d) matrix; a 1-D array of length d is read as one row.
pub fn read_matrix(path: &Path) -> Result<Mat<f64>> {
    let a = read_npy(path)?;
    let (n, d) = match a.shape.as_slice() {
        // A zero-width matrix with many rows holds no values but would size everything that
        // scales with n (an n x n score matrix per head).
        [n, d] if *n > 0 && *d > 0 => (*n, *d),
        [d] if *d > 0 => (1, *d),
        [_, _] | [_] => {
            return Err(Error::Empty {
                what: format!("{}: the array (shape {:?})", path.display(), a.shape),
            })
        }
        s => {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("expected a 2-D array (n tokens, d features), found shape {s:?}"),
            })
        }
    };
    Ok(Mat::from_fn(n, d, |i, k| a.data[i * d + k]))
}

/// Reads a 1-D vector (e.g. weights).
pub fn read_vector(path: &Path) -> Result<Vec<f64>> {
    let a = read_npy(path)?;
    match a.shape.as_slice() {
        [_] => Ok(a.data),
        [1, _] | [_, 1] => Ok(a.data),
        s => Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("expected a 1-D array, found shape {s:?}"),
        }),
    }
}

fn write_f64(path: &Path, shape: &[u64], data: impl IntoIterator<Item = f64>) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let dtype = DType::Plain("<f8".parse::<TypeStr>().expect("valid type string"));
    let mut w = npyz::WriteOptions::<f64>::new()
        .dtype(dtype)
        .shape(shape)
        .writer(file)
        .begin_nd()
        .map_err(io)?;
    for v in data {
        w.push(&v).map_err(io)?;
    }
    w.finish().map_err(io)
}

/// Writes an (n, d) f64 matrix in C order.
pub fn write_matrix(path: &Path, m: faer::MatRef<'_, f64>) -> Result<()> {
    let (n, d) = (m.nrows(), m.ncols());
    write_f64(
        path,
        &[n as u64, d as u64],
        (0..n).flat_map(|i| (0..d).map(move |k| m[(i, k)])),
    )
}

pub fn write_vector(path: &Path, v: &[f64]) -> Result<()> {
    write_f64(path, &[v.len() as u64], v.iter().copied())
}

/// Writes token ids as an int64 vector (NumPy's default integer type), so they index arrays
/// on the Python side without a cast.
pub fn write_ids(path: &Path, ids: &[u32]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let dtype = DType::Plain("<i8".parse::<TypeStr>().expect("valid type string"));
    let mut w = npyz::WriteOptions::<i64>::new()
        .dtype(dtype)
        .shape(&[ids.len() as u64])
        .writer(file)
        .begin_nd()
        .map_err(io)?;
    for &v in ids {
        w.push(&i64::from(v)).map_err(io)?;
    }
    w.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("lipattn-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Mat::from_fn(3, 4, |i, k| i as f64 * 10.0 + k as f64 + 0.5);
        let p = dir.join("m.npy");
        write_matrix(&p, m.as_ref()).unwrap();
        let r = read_matrix(&p).unwrap();
        assert_eq!(r, m);
        write_vector(&dir.join("v.npy"), &[1.0, 2.0]).unwrap();
        assert_eq!(read_vector(&dir.join("v.npy")).unwrap(), vec![1.0, 2.0]);
        std::fs::write(dir.join("bad.npy"), b"not numpy").unwrap();
        let e = read_matrix(&dir.join("bad.npy")).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains("not a valid"), "{e}");
        let e = read_matrix(&dir.join("missing.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.npy"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A .npy header with any shape, followed by `payload`.
    fn raw_npy(path: &Path, shape: &str, payload: &[u8]) {
        let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn headers_that_lie_about_their_size_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("lipattn-npy-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.npy");
        for (shape, needle) in [
            // 2^65 values: the product wraps to 0 in unchecked arithmetic.
            ("(8589934592, 4294967296)", "overflows"),
            ("(9223372036854775808, 2)", "overflows"),
            ("(1000000, 1000000)", "but the file has"),
            ("(3, 0)", "is empty"),
            ("(0, 3)", "is empty"),
            ("(8589934592, 0)", "is empty"),
        ] {
            raw_npy(&p, shape, &[0u8; 16]);
            let e = read_matrix(&p).unwrap_err().to_string();
            assert!(e.contains("h.npy") && e.contains(needle), "{shape}: {e}");
        }
        raw_npy(&p, "(2,)", &[0u8; 16]);
        assert_eq!(read_vector(&p).unwrap(), vec![0.0, 0.0]);
        // Version 3 with a header length of 3.3 GB in a 12-byte file (fuzz/ npy target).
        std::fs::write(&p, b"\x93NUMPY\x03\x00\x00\x00\x50\xc2").unwrap();
        let e = read_matrix(&p).unwrap_err().to_string();
        assert!(e.contains("claims 3260022784 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
