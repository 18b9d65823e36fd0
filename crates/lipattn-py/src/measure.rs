//! `lipattn.Measure`: a validated discrete probability measure.

use crate::convert::{optional_vector, points_f64, to_numpy, vec_to_numpy, vector_f64};
use crate::errors::IntoPyResult;
use lipattn::Measure;
use numpy::{PyArray1, PyArray2};
use pyo3::prelude::*;

/// A discrete probability measure ``sum_j w_j delta_{x_j}`` on R^d.
///
/// ``Measure(points, weights=None, *, tol=1e-9)`` validates and never rescales: points must be
/// finite, weights positive and summing to 1 within ``tol`` (uniform when ``weights`` is None).
/// ``Measure.normalised(points, weights)`` is the only constructor that rescales. Points of
/// shape ``(n,)`` are n atoms on the line.
#[pyclass(module = "lipattn", name = "Measure", frozen)]
#[derive(Clone)]
pub struct PyMeasure {
    pub inner: Measure,
}

#[pymethods]
impl PyMeasure {
    #[new]
    #[pyo3(signature = (points, weights=None, *, tol=lipattn::measure::WEIGHT_SUM_TOL))]
    fn new(
        points: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        tol: f64,
    ) -> PyResult<Self> {
        let x = points_f64(points, "measure points")?;
        let inner = match optional_vector(weights, "measure weights")? {
            None => Measure::uniform(x),
            Some(w) => Measure::with_tolerance(x, w, tol),
        }
        .py_err()?;
        Ok(Self { inner })
    }

    /// Rescales positive weights to sum to 1.
    #[staticmethod]
    fn normalised(points: &Bound<'_, PyAny>, weights: &Bound<'_, PyAny>) -> PyResult<Self> {
        let x = points_f64(points, "measure points")?;
        let w = vector_f64(weights, "measure weights")?;
        Ok(Self {
            inner: Measure::normalised(x, w).py_err()?,
        })
    }

    /// The empirical measure of the rows: weight 1/n each.
    #[staticmethod]
    fn uniform(points: &Bound<'_, PyAny>) -> PyResult<Self> {
        let x = points_f64(points, "tokens")?;
        Ok(Self {
            inner: Measure::uniform(x).py_err()?,
        })
    }

    /// Atoms, an (n, d) float64 array (a copy).
    #[getter]
    fn points<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        to_numpy(py, self.inner.points())
    }

    /// Masses, an (n,) float64 array summing to 1 (a copy).
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        vec_to_numpy(py, self.inner.weights())
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Atoms at identical coordinates merged, their weights summed (first-appearance order).
    fn merge_duplicates(&self) -> Self {
        Self {
            inner: self.inner.merge_duplicates(),
        }
    }

    fn __repr__(&self) -> String {
        format!("Measure(n={}, d={})", self.inner.len(), self.inner.dim())
    }
}

/// A Measure, or points (with optional weights, uniform when absent) to build one from.
pub fn measure_arg(
    obj: &Bound<'_, PyAny>,
    weights: Option<&Bound<'_, PyAny>>,
    normalise: bool,
    what: &str,
) -> PyResult<Measure> {
    if let Ok(m) = obj.cast::<PyMeasure>() {
        if weights.is_some_and(|w| !w.is_none()) {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "the {what} is already a Measure with its own weights; pass points to give weights separately"
            )));
        }
        return Ok(m.get().inner.clone());
    }
    let x = points_f64(obj, &format!("{what} points"))?;
    let w = optional_vector(weights, &format!("{what} weights"))?;
    Measure::with_weights(x, w, normalise).py_err()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMeasure>()
}
