//! A live model's weights, as NumPy arrays from `lipattn._torch.model_parts`, copied into the
//! core's in-memory tensors (the core owns them: the model outlives the call, and its runs
//! release the GIL).

use crate::errors::IntoPyResult;
use lipattn::models::{NamedTensor, TensorData};
use numpy::prelude::*;
use numpy::{PyArrayDyn, PyUntypedArray};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// The named arrays (float32 or float64, any layout) as tensors, after checking that copying
/// them fits the memory budget.
pub fn named_tensors(
    origin: &str,
    arrays: Vec<(String, Bound<'_, PyAny>)>,
) -> PyResult<Vec<NamedTensor>> {
    let mut need = Some(0u64);
    for (name, a) in &arrays {
        let a = a.cast::<PyUntypedArray>().map_err(|_| {
            PyTypeError::new_err(format!("{origin}: tensor '{name}' is not a NumPy array"))
        })?;
        let each = a.dtype().itemsize() as u64;
        need = lipattn::budget::total(&[need, lipattn::budget::bytes_of(a.shape(), each)]);
    }
    lipattn::budget::check(
        || format!("a copy of the {} tensors of {origin}", arrays.len()),
        need,
    )
    .py_err()?;
    arrays
        .into_iter()
        .map(|(name, a)| {
            let data = if let Ok(x) = a.cast::<PyArrayDyn<f64>>() {
                TensorData::F64(values(&x.try_readonly().map_err(busy(&name))?))
            } else if let Ok(x) = a.cast::<PyArrayDyn<f32>>() {
                TensorData::F32(values(&x.try_readonly().map_err(busy(&name))?))
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{origin}: tensor '{name}' is not float32 or float64"
                )));
            };
            let shape = a.cast::<PyUntypedArray>()?.shape().to_vec();
            Ok(NamedTensor { name, shape, data })
        })
        .collect()
}

/// Row-major values, whatever the array's strides.
fn values<T: numpy::Element + Copy>(a: &numpy::PyReadonlyArrayDyn<'_, T>) -> Vec<T> {
    a.as_array().iter().copied().collect()
}

fn busy(name: &str) -> impl FnOnce(numpy::BorrowError) -> PyErr + '_ {
    move |e| pyo3::exceptions::PyValueError::new_err(format!("tensor '{name}': {e}"))
}
