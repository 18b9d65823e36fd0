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
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| fmt(format!("not a valid .npy file ({e})")))?;
    if npy.order() != Order::C {
        return Err(fmt(
            "array is in Fortran order; save it in C order (np.ascontiguousarray)".into(),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let dtype = match npy.dtype() {
        DType::Plain(t) => t.to_string(),
        other => {
            return Err(fmt(format!(
                "structured dtype {other:?} is not supported; use float32 or float64"
            )))
        }
    };
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
    let expected: usize = shape.iter().product();
    if data.len() != expected {
        return Err(fmt(format!(
            "header shape {shape:?} needs {expected} values, file has {}",
            data.len()
        )));
    }
    Ok(NpyArray { shape, data, dtype })
}

/// Reads an (n, d) matrix; a 1-D array of length d is read as one row.
pub fn read_matrix(path: &Path) -> Result<Mat<f64>> {
    let a = read_npy(path)?;
    let (n, d) = match a.shape.as_slice() {
        [n, d] => (*n, *d),
        [d] => (1, *d),
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
}
