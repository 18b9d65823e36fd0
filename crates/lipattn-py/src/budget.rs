//! The memory budget (`lipattn::budget`) from Python: every request is checked against it
//! before allocating, and one beyond it raises MemoryError naming the sizes.

use crate::errors::IntoPyResult;
use crate::ints::{PyInt, Unsigned};
use pyo3::prelude::*;

/// Sets the memory budget for this process: bytes as an int, a string such as ``"8G"`` or
/// ``"512M"``, or None to go back to ``LIPATTN_MAX_MEMORY`` or half the available memory.
#[pyfunction]
#[pyo3(signature = (limit))]
fn set_max_memory(limit: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let bytes = match limit.filter(|l| !l.is_none()) {
        None => None,
        Some(l) => Some(match l.extract::<String>() {
            Ok(s) => lipattn::budget::parse_bytes(&s)
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("limit: {e}")))?,
            Err(_) => {
                let b: u64 = l.extract::<PyInt>()?.unsigned("limit")?;
                if b == 0 {
                    return Err(pyo3::exceptions::PyValueError::new_err(
                        "limit must be a positive number of bytes, got 0",
                    ));
                }
                b
            }
        }),
    };
    lipattn::budget::set_max_memory(bytes);
    Ok(())
}

/// The budget in force: ``(bytes, where it comes from)``.
#[pyfunction]
fn max_memory() -> PyResult<(u64, &'static str)> {
    lipattn::budget::max_memory().py_err()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_max_memory, m)?)?;
    m.add_function(wrap_pyfunction!(max_memory, m)?)?;
    Ok(())
}
