//! `lipattn.LocalConstant`: an attained ||J(X)||_2 with everything needed to check it.

use crate::convert::{to_numpy, vec_to_numpy};
use lipattn::estimation::{LanczosOptions, LocalNorm, Method, PowerOptions};
use lipattn::Scalar;
use numpy::Element;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The CLI's defaults: 300 Lanczos steps, 100 power steps; power iteration keeps the anchor's
/// absolute stopping rule whatever `tol` says (as `lipattn local` documents).
pub fn method_of(name: &str, tol: f64, max_iter: Option<usize>, seed: u64) -> PyResult<Method> {
    match name {
        "lanczos" => Ok(Method::Lanczos(LanczosOptions {
            tol,
            max_iter: max_iter.unwrap_or(300),
            seed,
        })),
        "power" => Ok(Method::Power(PowerOptions {
            max_iter: max_iter.unwrap_or(100),
            seed,
            ..Default::default()
        })),
        other => Err(PyValueError::new_err(format!(
            "unknown method '{other}' (expected 'lanczos' or 'power')"
        ))),
    }
}

/// ``||J(X)||_2`` attained at ``x`` by ``vector`` (an attained lower bound on the Lipschitz
/// constant over any domain containing ``x``; ``rel_error`` is an estimate, not a bound).
#[pyclass(module = "lipattn", name = "LocalConstant", frozen, get_all)]
pub struct PyLocalConstant {
    /// ``||J v||_F`` for the unit ``vector``.
    sigma: f64,
    /// Estimated relative error of ``sigma`` against ``||J(X)||_2``.
    rel_error: f64,
    converged: bool,
    /// Matvecs with ``J^T J`` (each one JVP and one VJP).
    iterations: usize,
    /// Wall time inside the library, linearisation included.
    seconds: f64,
    method: &'static str,
    tol: Option<f64>,
    /// ``sigma`` after each iteration (each attained, hence a lower bound too).
    history: Py<PyAny>,
    /// Top right singular vector, (n, d), unit Frobenius norm, dtype of the input.
    vector: Py<PyAny>,
    /// ``J v / sigma``, (n, d_out).
    left: Py<PyAny>,
    n: usize,
    d: usize,
    d_out: usize,
    /// Largest row norm of the input (the smallest R with ``x`` in ``(B_R)^n``).
    radius: f64,
    dtype: &'static str,
    causal: bool,
    /// 'uniform' or 'given'.
    weights: &'static str,
}

pub fn local_constant_result<T: Scalar + Element>(
    py: Python<'_>,
    r: LocalNorm<T>,
    d_out: usize,
    causal: bool,
    tol: Option<f64>,
    weighted: bool,
) -> PyResult<PyLocalConstant> {
    let x = &r.x;
    // Row norms in f64 whatever the dtype, as the CLI computes them from the f64 input.
    let radius = (0..x.nrows())
        .map(|i| {
            (0..x.ncols())
                .map(|k| x[(i, k)].f64().powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .fold(0.0, f64::max);
    let t = &r.top;
    Ok(PyLocalConstant {
        sigma: t.sigma,
        rel_error: t.rel_error,
        converged: t.converged,
        iterations: t.iterations,
        seconds: r.seconds,
        method: r.method,
        tol,
        history: vec_to_numpy(py, &t.history).into_any().unbind(),
        vector: to_numpy(py, t.vector.as_ref()).into_any().unbind(),
        left: to_numpy(py, t.left.as_ref()).into_any().unbind(),
        n: x.nrows(),
        d: x.ncols(),
        d_out,
        radius,
        dtype: if T::NAME == "f32" { "f32" } else { "f64" },
        causal,
        weights: if weighted { "given" } else { "uniform" },
    })
}

#[pymethods]
impl PyLocalConstant {
    /// The scalar fields under the keys of ``lipattn local --json`` (arrays left out).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("kind", "attained_lower_bound")?;
        d.set_item("quantity", "local_lipschitz")?;
        d.set_item("sigma", self.sigma)?;
        d.set_item("rel_error", self.rel_error)?;
        d.set_item("rel_error_is", "estimate")?;
        d.set_item("converged", self.converged)?;
        d.set_item("iterations", self.iterations)?;
        d.set_item("seconds", self.seconds)?;
        d.set_item("method", self.method)?;
        d.set_item("tol", self.tol)?;
        d.set_item("norm", "frobenius")?;
        d.set_item("n", self.n)?;
        d.set_item("d", self.d)?;
        d.set_item("d_out", self.d_out)?;
        d.set_item("radius", self.radius)?;
        d.set_item("dtype", self.dtype)?;
        d.set_item("causal", self.causal)?;
        d.set_item("weights", self.weights)?;
        Ok(d)
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
