//! `lipattn.LocalConstant`: an attained ||J(X)||_2 with everything needed to check it.

use crate::convert::{json_to_py, to_numpy, vec_to_numpy};
use crate::errors::IntoPyResult;
use lipattn::ops::local::LocalReport;
use lipattn::Scalar;
use numpy::Element;
use pyo3::prelude::*;

/// ``||J(X)||_2`` attained at ``x`` by ``vector`` (an attained lower bound on the Lipschitz
/// constant over any domain containing ``x``; ``rel_error`` is an estimate, not a bound).
#[pyclass(module = "lipattn", name = "LocalConstant", frozen)]
pub struct PyLocalConstant {
    /// ``||J v||_F`` for the unit ``vector``.
    #[pyo3(get)]
    sigma: f64,
    /// Estimated relative error of ``sigma`` against ``||J(X)||_2``.
    #[pyo3(get)]
    rel_error: f64,
    #[pyo3(get)]
    converged: bool,
    /// Matvecs with ``J^T J`` (each one JVP and one VJP).
    #[pyo3(get)]
    iterations: usize,
    /// Wall time inside the library, linearisation included.
    #[pyo3(get)]
    seconds: f64,
    #[pyo3(get)]
    method: &'static str,
    #[pyo3(get)]
    tol: Option<f64>,
    /// ``sigma`` after each iteration (each attained, hence a lower bound too).
    #[pyo3(get)]
    history: Py<PyAny>,
    /// Top right singular vector, (n, d), unit Frobenius norm, dtype of the input.
    #[pyo3(get)]
    vector: Py<PyAny>,
    /// ``J v / sigma``, (n, d_out).
    #[pyo3(get)]
    left: Py<PyAny>,
    #[pyo3(get)]
    n: usize,
    #[pyo3(get)]
    d: usize,
    #[pyo3(get)]
    d_out: usize,
    /// Largest row norm of the input (the smallest R with ``x`` in ``(B_R)^n``).
    #[pyo3(get)]
    radius: f64,
    #[pyo3(get)]
    dtype: &'static str,
    #[pyo3(get)]
    causal: bool,
    /// 'uniform' or 'given'.
    #[pyo3(get)]
    weights: &'static str,
    #[pyo3(get)]
    head: Option<usize>,
    /// The report's JSON fields, as ``to_dict`` returns them.
    json: serde_json::Value,
}

pub fn local_constant_result<T: Scalar + Element>(
    py: Python<'_>,
    r: LocalReport<T>,
) -> PyResult<PyLocalConstant> {
    let json = lipattn::ops::to_json(&r).py_err()?;
    let t = &r.result.top;
    Ok(PyLocalConstant {
        sigma: r.sigma,
        rel_error: r.rel_error,
        converged: r.converged,
        iterations: r.iterations,
        seconds: r.seconds,
        method: r.method,
        tol: r.tol,
        history: vec_to_numpy(py, &t.history).into_any().unbind(),
        vector: to_numpy(py, t.vector.as_ref()).into_any().unbind(),
        left: to_numpy(py, t.left.as_ref()).into_any().unbind(),
        n: r.n,
        d: r.d,
        d_out: r.d_out,
        radius: r.radius,
        dtype: r.dtype,
        causal: r.causal,
        weights: r.weights,
        head: r.head,
        json,
    })
}

#[pymethods]
impl PyLocalConstant {
    /// The scalar fields under the keys of ``lipattn local --json`` (arrays left out).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.json)
    }

    fn __float__(&self) -> f64 {
        self.sigma
    }

    fn __repr__(&self) -> String {
        format!(
            "LocalConstant(sigma={:.10e}, rel_error={:.1e}, iterations={}, converged={}, method='{}', n={}, dtype={})",
            self.sigma,
            self.rel_error,
            self.iterations,
            if self.converged { "True" } else { "False" },
            self.method,
            self.n,
            self.dtype
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLocalConstant>()
}
