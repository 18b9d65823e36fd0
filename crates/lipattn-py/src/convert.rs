//! NumPy arrays in, faer matrices for the core, NumPy arrays out.
//!
//! Anything `numpy.asarray` accepts comes in (lists, views of any strides or order), and torch
//! tensors: detached, moved to the CPU, float16/bfloat16 widened to float32 (`lipattn._torch`),
//! then viewed as NumPy arrays without a copy. float64 stays float64, float32 stays float32 where
//! the core has an f32 path, integers and other real floats become float64. Complex, boolean,
//! object and string arrays are a TypeError rather than a silent cast.
//!
//! Inputs are copied once, into the core's owned column-major matrix, whatever their layout: the
//! computations run without the GIL on worker threads that keep their input, so they need their
//! own copy. The one exception is `matrix_in_place`, for calls that read their input during the
//! call only (the forward pass): a column-major (Fortran-ordered) float32/float64 array is the
//! core's layout already and is read where it lies, so the caller must not write to it from
//! another thread during the call. One copy of an (n, d) input is O(nd), against the O(n^2 d)
//! and more of every computation that reads it.

use faer::{Mat, MatRef};
use lipattn::Scalar;
use numpy::ndarray::{Array1, Array2, ArrayViewD};
use numpy::prelude::*;
use numpy::{Element, PyArray1, PyArray2, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many inputs were copied into owned matrices, for the tests of the in-place path
/// (`lipattn._lipattn._input_copies()`).
static COPIES: AtomicU64 = AtomicU64::new(0);

/// A real array in the precision the computation will run in.
pub enum Floats {
    F64(Mat<f64>),
    F32(Mat<f32>),
}

impl Floats {
    pub fn into_f64(self) -> Mat<f64> {
        match self {
            Floats::F64(m) => m,
            Floats::F32(m) => cast(m.as_ref()),
        }
    }
}

pub fn cast<T: Scalar, U: Scalar>(m: MatRef<'_, T>) -> Mat<U> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| U::of(m[(i, j)].f64()))
}

fn shape_of(arr: &Bound<'_, PyUntypedArray>) -> String {
    let s: Vec<String> = arr.shape().iter().map(|x| x.to_string()).collect();
    match s.len() {
        1 => format!("({},)", s[0]),
        _ => format!("({})", s.join(", ")),
    }
}

/// A torch.Tensor (or a subclass such as nn.Parameter), recognised without importing torch.
fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    for cls in obj.get_type().mro().iter() {
        let module: String = cls.getattr("__module__")?.extract().unwrap_or_default();
        let name: String = cls.getattr("__qualname__")?.extract().unwrap_or_default();
        if module == "torch" && name == "Tensor" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `obj` as an ndarray of float64, or float32 when `keep_f32` and it is float32.
fn float_array<'py>(
    obj: &Bound<'py, PyAny>,
    what: &str,
    keep_f32: bool,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = if obj.cast::<PyUntypedArray>().is_ok() {
        obj.clone()
    } else if is_torch_tensor(obj)? {
        py.import("lipattn._torch")?
            .call_method1("tensor_to_numpy", (obj,))
            .map_err(|e| {
                PyValueError::new_err(format!("{what}: not convertible to an array: {e}"))
            })?
    } else {
        np.call_method1("asarray", (obj,)).map_err(|e| {
            PyValueError::new_err(format!("{what}: not convertible to an array: {e}"))
        })?
    };
    let arr = arr.cast_into::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!("{what}: numpy.asarray did not return an ndarray"))
    })?;
    let dtype = arr.dtype();
    let (kind, size) = (dtype.kind(), dtype.itemsize());
    let target = match (kind, size) {
        (b'f', 8) => return Ok(arr),
        (b'f', 4) if keep_f32 => return Ok(arr),
        (b'f', _) | (b'i', _) | (b'u', _) => "float64",
        _ => {
            return Err(PyTypeError::new_err(format!(
                "{what}: arrays of dtype {} are not accepted (expected float32 or float64; integer arrays are converted to float64)",
                dtype.str()?
            )))
        }
    };
    Ok(arr
        .call_method1("astype", (target,))?
        .cast_into::<PyUntypedArray>()?)
}

fn view_to_mat<T: Element + Copy + faer::traits::ComplexField>(
    v: ArrayViewD<'_, T>,
    what: &str,
    allow_1d: bool,
    shape: &str,
) -> PyResult<Mat<T>> {
    COPIES.fetch_add(1, Ordering::Relaxed);
    match v.ndim() {
        2 => {
            let (n, d) = (v.shape()[0], v.shape()[1]);
            let v2 = v
                .into_dimensionality::<numpy::ndarray::Ix2>()
                .expect("ndim checked");
            Ok(Mat::from_fn(n, d, |i, j| v2[[i, j]]))
        }
        1 if allow_1d => {
            let n = v.shape()[0];
            Ok(Mat::from_fn(n, 1, |i, _| v[[i]]))
        }
        _ => Err(PyValueError::new_err(format!(
            "{what}: expected a 2-D array of shape {}, found shape {shape}",
            if allow_1d { "(n, d) or (n,)" } else { "(n, d)" }
        ))),
    }
}

fn to_floats(arr: &Bound<'_, PyUntypedArray>, what: &str, allow_1d: bool) -> PyResult<Floats> {
    let shape = shape_of(arr);
    if let Ok(a) = arr.cast::<PyArrayDyn<f64>>() {
        let ro = a
            .try_readonly()
            .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
        return Ok(Floats::F64(view_to_mat(
            ro.as_array(),
            what,
            allow_1d,
            &shape,
        )?));
    }
    let a = arr.cast::<PyArrayDyn<f32>>().map_err(|_| {
        PyTypeError::new_err(format!("{what}: expected a float32 or float64 array"))
    })?;
    let ro = a
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    Ok(Floats::F32(view_to_mat(
        ro.as_array(),
        what,
        allow_1d,
        &shape,
    )?))
}

/// A 2-D (n, d) array, kept in float32 when it is float32.
pub fn matrix(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Floats> {
    to_floats(&float_array(obj, what, true)?, what, false)
}

/// A 2-D input read where it lies (a column-major float32/float64 array) or copied.
pub enum MatrixInput<'py> {
    F64(PyReadonlyArrayDyn<'py, f64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    Copied(Floats),
}

/// The matrix of a `MatrixInput`, in its precision.
pub enum MatrixView<'a> {
    F64(MatRef<'a, f64>),
    F32(MatRef<'a, f32>),
}

impl MatrixInput<'_> {
    pub fn view(&self) -> PyResult<MatrixView<'_>> {
        fn column_major<'a, T: Element + faer::traits::ComplexField>(
            a: &'a PyReadonlyArrayDyn<'_, T>,
        ) -> PyResult<MatRef<'a, T>> {
            let (n, d) = (a.shape()[0], a.shape()[1]);
            let data = a
                .as_slice()
                .map_err(|e| PyValueError::new_err(format!("tokens: {e}")))?;
            Ok(MatRef::from_column_major_slice(data, n, d))
        }
        Ok(match self {
            MatrixInput::F64(a) => MatrixView::F64(column_major(a)?),
            MatrixInput::F32(a) => MatrixView::F32(column_major(a)?),
            MatrixInput::Copied(Floats::F64(m)) => MatrixView::F64(m.as_ref()),
            MatrixInput::Copied(Floats::F32(m)) => MatrixView::F32(m.as_ref()),
        })
    }
}

/// A 2-D (n, d) array as `matrix` reads it, without copying a Fortran-ordered float32/float64
/// array (see the module documentation for what the caller then promises).
pub fn matrix_in_place<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<MatrixInput<'py>> {
    let arr = float_array(obj, what, true)?;
    if arr.ndim() == 2 && arr.is_fortran_contiguous() {
        let busy = |e: numpy::BorrowError| PyValueError::new_err(format!("{what}: {e}"));
        if let Ok(a) = arr.cast::<PyArrayDyn<f64>>() {
            return Ok(MatrixInput::F64(a.try_readonly().map_err(busy)?));
        }
        if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
            return Ok(MatrixInput::F32(a.try_readonly().map_err(busy)?));
        }
    }
    Ok(MatrixInput::Copied(to_floats(&arr, what, false)?))
}

/// A 2-D float32/float64 input that a computation on a worker thread reads where it lies. A
/// C-contiguous (row-major) or Fortran-contiguous array is shared, not copied: the worker holds
/// a reference to the array, so its buffer lives as long as the computation (even one abandoned
/// by Ctrl-C), and reads it through a faer view with the array's strides. As for
/// `matrix_in_place`, the caller must not write to the array during the call. Anything else
/// (other layouts, dtypes, lists, tensors converted to new arrays) is copied once.
pub enum SharedMatrix {
    F64(SharedArray<f64>),
    F32(SharedArray<f32>),
    Copied(Floats),
}

pub struct SharedArray<T> {
    /// Keeps the array, hence its buffer, alive.
    _owner: Py<PyAny>,
    data: *const T,
    n: usize,
    d: usize,
    row_major: bool,
}

// SAFETY: the buffer is only read, and `_owner` keeps it alive wherever the struct goes; numpy
// arrays cannot be resized while another reference (this one) exists.
unsafe impl<T: Sync> Send for SharedArray<T> {}

impl<T: faer::traits::ComplexField> SharedArray<T> {
    pub fn view(&self) -> MatRef<'_, T> {
        // SAFETY: `data` points at n * d contiguous elements of the array `_owner` holds
        // (checked in `matrix_shared`: 2-D, contiguous, non-empty).
        let data = unsafe { std::slice::from_raw_parts(self.data, self.n * self.d) };
        if self.row_major {
            MatRef::from_row_major_slice(data, self.n, self.d)
        } else {
            MatRef::from_column_major_slice(data, self.n, self.d)
        }
    }
}

fn shared<T: Element>(a: &Bound<'_, PyArrayDyn<T>>) -> Option<SharedArray<T>> {
    let (n, d) = (a.shape()[0], a.shape()[1]);
    let row_major = a.is_c_contiguous();
    (n > 0 && d > 0 && (row_major || a.is_fortran_contiguous())).then(|| SharedArray {
        _owner: a.clone().into_any().unbind(),
        data: a.data() as *const T,
        n,
        d,
        row_major,
    })
}

/// An (n, d) array as `matrix` reads it, shared instead of copied where its layout allows (see
/// `SharedMatrix`).
pub fn matrix_shared(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<SharedMatrix> {
    let arr = float_array(obj, what, true)?;
    if arr.ndim() == 2 {
        if let Ok(a) = arr.cast::<PyArrayDyn<f64>>() {
            if let Some(s) = shared(a) {
                return Ok(SharedMatrix::F64(s));
            }
        }
        if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
            if let Some(s) = shared(a) {
                return Ok(SharedMatrix::F32(s));
            }
        }
    }
    Ok(SharedMatrix::Copied(to_floats(&arr, what, false)?))
}

#[pyfunction]
fn _input_copies() -> u64 {
    COPIES.load(Ordering::Relaxed)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_input_copies, m)?)
}

/// A 2-D array in float64.
pub fn matrix_f64(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Mat<f64>> {
    Ok(to_floats(&float_array(obj, what, false)?, what, false)?.into_f64())
}

/// Points of a measure: (n, d), or (n,) read as n atoms on the line (as the CLI reads .npy).
pub fn points_f64(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Mat<f64>> {
    Ok(to_floats(&float_array(obj, what, false)?, what, true)?.into_f64())
}

/// A 1-D array in float64.
pub fn vector_f64(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f64>> {
    let arr = float_array(obj, what, false)?;
    let shape = shape_of(&arr);
    let a = arr.cast::<PyArrayDyn<f64>>()?;
    let ro = a
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    let v = ro.as_array();
    if v.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "{what}: expected a 1-D array, found shape {shape}"
        )));
    }
    Ok(v.iter().copied().collect())
}

pub fn optional_vector(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<f64>>> {
    obj.filter(|o| !o.is_none())
        .map(|o| vector_f64(o, what))
        .transpose()
}

/// A C-ordered NumPy array holding a copy of `m`.
pub fn to_numpy<'py, T: Element + Copy>(
    py: Python<'py>,
    m: MatRef<'_, T>,
) -> Bound<'py, PyArray2<T>> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)]).into_pyarray(py)
}

pub fn vec_to_numpy<'py, T: Element + Copy>(py: Python<'py>, v: &[T]) -> Bound<'py, PyArray1<T>> {
    Array1::from_vec(v.to_vec()).into_pyarray(py)
}

/// A report as the dict its CLI command prints in JSON, plus named arrays (None where absent).
pub fn report_dict<'py, R: serde::Serialize>(
    py: Python<'py>,
    report: &R,
    arrays: &[(&str, Option<MatRef<'_, f64>>)],
) -> PyResult<Bound<'py, PyAny>> {
    use crate::errors::IntoPyResult;
    let json = lipattn::ops::to_json(report).py_err()?;
    let out = json_to_py(py, &json)?;
    let dict = out.cast::<pyo3::types::PyDict>()?;
    for (name, m) in arrays {
        match m {
            Some(m) => dict.set_item(name, to_numpy(py, *m))?,
            None => dict.set_item(name, py.None())?,
        }
    }
    Ok(out)
}

/// A JSON value as plain Python objects (dict, list, float, int, str, bool, None).
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into_pyobject(py)?.into_any(),
            (None, Some(i)) => i.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(a) => {
            let list = PyList::empty(py);
            for x in a {
                list.append(json_to_py(py, x)?)?;
            }
            list.into_any()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}
