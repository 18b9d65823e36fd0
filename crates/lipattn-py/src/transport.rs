//! `lipattn.transport`: exact (certified), sorted 1-D and entropic optimal transport.

use crate::convert::{json_to_py, matrix_f64, vec_to_numpy};
use crate::errors::{interruptible, IntoPyResult};
use crate::ints::PyInt;
use crate::measure::measure_arg;
use lipattn::ops::transport::{self, TransportInputs, TransportReport, TransportRequest};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Row indices, column indices and masses of a plan's nonzeros.
type SparsePlan<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
);

/// The result of ``lipattn.transport``: cost, distance, plan, potentials and, for exact
/// solvers, the optimality certificate recomputed from plan, potentials and cost alone.
#[pyclass(module = "lipattn", name = "Transport", frozen)]
pub struct PyTransport {
    report: TransportReport,
}

#[pymethods]
impl PyTransport {
    #[getter]
    fn method(&self) -> &'static str {
        self.report.method.name()
    }
    /// The ground exponent; None for a user cost matrix.
    #[getter]
    fn p(&self) -> Option<f64> {
        self.report.p
    }
    /// ``<P, C>``.
    #[getter]
    fn cost(&self) -> f64 {
        self.report.cost
    }
    /// ``W_p = cost^(1/p)``; the cost itself for a user cost matrix.
    #[getter]
    fn distance(&self) -> f64 {
        self.report.distance
    }
    #[getter]
    fn eps(&self) -> Option<f64> {
        self.report.eps
    }
    #[getter]
    fn iterations(&self) -> u64 {
        self.report.iterations
    }
    /// Exact solvers always converge; Sinkhorn says whether it met ``tol``.
    #[getter]
    fn converged(&self) -> bool {
        self.report.converged
    }
    /// Largest marginal violation of the plan (L1 row error for Sinkhorn).
    #[getter]
    fn marginal_error(&self) -> f64 {
        self.report.marginal_error
    }
    /// Wall time of the whole request, cost matrix included (``to_dict()['solver_seconds']``
    /// is the solver's alone).
    #[getter]
    fn seconds(&self) -> f64 {
        self.report.seconds
    }
    #[getter]
    fn n(&self) -> usize {
        self.report.n
    }
    #[getter]
    fn m(&self) -> usize {
        self.report.m
    }

    /// The plan as a dense (n, m) float64 array (built on access).
    #[getter]
    fn plan<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        let (n, m) = (self.report.n, self.report.m);
        Array2::from_shape_vec((n, m), self.report.plan.dense(n, m))
            .expect("n m entries")
            .into_pyarray(py)
    }

    /// The plan's nonzeros as ``(rows, cols, mass)`` arrays (int64, int64, float64).
    #[getter]
    fn plan_sparse<'py>(&self, py: Python<'py>) -> SparsePlan<'py> {
        let entries = self.report.plan.nonzeros();
        let rows: Vec<i64> = entries.iter().map(|e| e.0 as i64).collect();
        let cols: Vec<i64> = entries.iter().map(|e| e.1 as i64).collect();
        let mass: Vec<f64> = entries.iter().map(|e| e.2).collect();
        (
            vec_to_numpy(py, &rows),
            vec_to_numpy(py, &cols),
            vec_to_numpy(py, &mass),
        )
    }

    /// Dual potentials ``(u, v)``: ``u_i + v_j <= C_ij`` up to ``certificate['infeasibility']``
    /// for exact solvers; for Sinkhorn ``(f, g)`` with ``P_ij = exp((f_i + g_j - C_ij) / eps)``.
    #[getter]
    fn potentials<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>) {
        let (u, v) = &self.report.potentials;
        (vec_to_numpy(py, u), vec_to_numpy(py, v))
    }

    /// ``{'primal', 'dual', 'gap', 'relative_gap', 'infeasibility', 'marginal_error'}`` for
    /// exact solvers (by weak duality the plan is optimal within ``gap`` plus ``infeasibility``
    /// times the mass); None for Sinkhorn.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let r = &self.report;
        let (Some(gap), Some(rel), Some(inf)) = (r.gap, r.relative_gap, r.infeasibility) else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("primal", r.cost)?;
        d.set_item("dual", r.cost - gap)?;
        d.set_item("gap", gap)?;
        d.set_item("relative_gap", rel)?;
        d.set_item("infeasibility", inf)?;
        d.set_item("marginal_error", r.marginal_error)?;
        Ok(Some(d))
    }

    /// The scalar fields under the keys of ``lipattn transport --json``.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &lipattn::ops::to_json(&self.report).py_err()?)
    }

    fn __repr__(&self) -> String {
        let r = &self.report;
        format!(
            "Transport(method='{}', p={}, cost={:.10e}, distance={:.10e}, n={}, m={})",
            r.method,
            r.p.map_or("None".to_string(), |p| p.to_string()),
            r.cost,
            r.distance,
            r.n,
            r.m
        )
    }
}

/// Optimal transport between ``a`` and ``b`` (Measures, or point arrays with weights ``wa``,
/// ``wb``; uniform when absent) for the ground cost ``||x - y||^p`` or a user ``cost`` matrix.
///
/// ``method``: 'exact' (network simplex, p in {1, 2}, certified), 'sorted' (d = 1, any p >= 1)
/// or 'sinkhorn' (entropic, needs ``eps``; ``tol`` on the L1 marginal error, ``max_iter``).
/// ``normalise`` rescales given weights instead of rejecting them. A Sinkhorn run that does not
/// reach ``tol`` raises NoConvergenceError unless ``accept_unconverged`` (then
/// ``converged`` is False on the result).
#[pyfunction(name = "transport")]
#[pyo3(signature = (a, b, *, wa=None, wb=None, p=TransportRequest::default().p, method=TransportRequest::default().method.name(), eps=None, tol=TransportRequest::default().tol, max_iter=crate::ints::PyInt::Fits(TransportRequest::default().max_iter as i128), cost=None, normalise=false, accept_unconverged=false))]
#[allow(clippy::too_many_arguments)]
pub fn transport_py(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    wa: Option<&Bound<'_, PyAny>>,
    wb: Option<&Bound<'_, PyAny>>,
    p: f64,
    method: &str,
    eps: Option<f64>,
    tol: f64,
    max_iter: PyInt,
    cost: Option<&Bound<'_, PyAny>>,
    normalise: bool,
    accept_unconverged: bool,
) -> PyResult<PyTransport> {
    crate::ints::unsigned!(max_iter);
    let req = TransportRequest {
        method: method.parse().py_err()?,
        p,
        eps,
        tol,
        max_iter,
        normalise,
        accept_unconverged,
    };
    let inputs = TransportInputs {
        source: measure_arg(a, wa, normalise, "source")?,
        target: measure_arg(b, wb, normalise, "target")?,
        cost: cost
            .filter(|c| !c.is_none())
            .map(|c| matrix_f64(c, "cost matrix"))
            .transpose()?,
    };
    let report = interruptible(py, move || {
        transport::run(&req, inputs, &mut lipattn::ops::silent)
    })?;
    Ok(PyTransport { report })
}

/// The ground cost matrix ``C_ij = ||x_i - y_j||^p`` (p in {1, 2}) between the atoms of two
/// Measures or point arrays, (n, m) float64.
#[pyfunction]
#[pyo3(signature = (a, b, p=crate::ints::PyInt::Fits(1)))]
pub fn ground_cost<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    p: PyInt,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    crate::ints::unsigned!(p);
    let ma = measure_arg(a, None, false, "source")?;
    let mb = measure_arg(b, None, false, "target")?;
    let c = py
        .detach(|| lipattn::transport::ground_cost(&ma, &mb, p))
        .py_err()?;
    Ok(crate::convert::to_numpy(py, c.to_mat().as_ref()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTransport>()?;
    m.add_function(wrap_pyfunction!(transport_py, m)?)?;
    m.add_function(wrap_pyfunction!(ground_cost, m)?)?;
    Ok(())
}
