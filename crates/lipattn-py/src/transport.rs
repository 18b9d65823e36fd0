//! `lipattn.transport`: exact (certified), sorted 1-D and entropic optimal transport.

use crate::convert::{json_to_py, matrix_f64, vec_to_numpy};
use crate::errors::{interruptible, IntoPyResult};
use crate::measure::measure_arg;
use lipattn::transport::{self, CostMatrix, SinkhornOptions};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::json;

/// Row indices, column indices and masses of a plan's nonzeros.
type SparsePlan<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
);

enum Plan {
    /// Nonzeros (i, j, mass) of an exact plan, sorted by (i, j).
    Sparse(Vec<(usize, usize, f64)>),
    /// An entropic plan, row-major n x m: every entry is positive.
    Dense(Vec<f64>),
}

/// The result of ``lipattn.transport``: cost, distance, plan, potentials and, for exact
/// solvers, the optimality certificate recomputed from plan, potentials and cost alone.
#[pyclass(module = "lipattn", name = "Transport", frozen)]
pub struct PyTransport {
    #[pyo3(get)]
    method: &'static str,
    /// The ground exponent; None for a user cost matrix.
    #[pyo3(get)]
    p: Option<f64>,
    /// ``<P, C>``.
    #[pyo3(get)]
    cost: f64,
    /// ``W_p = cost^(1/p)``; the cost itself for a user cost matrix.
    #[pyo3(get)]
    distance: f64,
    #[pyo3(get)]
    eps: Option<f64>,
    #[pyo3(get)]
    iterations: u64,
    /// Exact solvers always converge; Sinkhorn says whether it met ``tol``.
    #[pyo3(get)]
    converged: bool,
    /// Largest marginal violation of the plan (L1 row error for Sinkhorn).
    #[pyo3(get)]
    marginal_error: f64,
    #[pyo3(get)]
    seconds: f64,
    #[pyo3(get)]
    n: usize,
    #[pyo3(get)]
    m: usize,
    plan: Plan,
    u: Vec<f64>,
    v: Vec<f64>,
    /// gap, relative_gap, infeasibility; None for Sinkhorn (no exactness claim).
    certificate: Option<(f64, f64, f64)>,
}

#[pymethods]
impl PyTransport {
    /// The plan as a dense (n, m) float64 array (built on access).
    #[getter]
    fn plan<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        let (n, m) = (self.n, self.m);
        let dense = match &self.plan {
            Plan::Sparse(e) => {
                let mut a = Array2::<f64>::zeros((n, m));
                for &(i, j, f) in e {
                    a[[i, j]] += f;
                }
                a
            }
            Plan::Dense(v) => Array2::from_shape_vec((n, m), v.clone()).expect("n m entries"),
        };
        dense.into_pyarray(py)
    }

    /// The plan's nonzeros as ``(rows, cols, mass)`` arrays (int64, int64, float64).
    #[getter]
    fn plan_sparse<'py>(&self, py: Python<'py>) -> SparsePlan<'py> {
        let entries: Vec<(usize, usize, f64)> = match &self.plan {
            Plan::Sparse(e) => e.clone(),
            Plan::Dense(v) => v
                .iter()
                .enumerate()
                .filter(|(_, &f)| f != 0.0)
                .map(|(k, &f)| (k / self.m, k % self.m, f))
                .collect(),
        };
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
        (vec_to_numpy(py, &self.u), vec_to_numpy(py, &self.v))
    }

    /// ``{'primal', 'dual', 'gap', 'relative_gap', 'infeasibility', 'marginal_error'}`` for
    /// exact solvers (by weak duality the plan is optimal within ``gap`` plus ``infeasibility``
    /// times the mass); None for Sinkhorn.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((gap, rel, inf)) = self.certificate else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("primal", self.cost)?;
        d.set_item("dual", self.cost - gap)?;
        d.set_item("gap", gap)?;
        d.set_item("relative_gap", rel)?;
        d.set_item("infeasibility", inf)?;
        d.set_item("marginal_error", self.marginal_error)?;
        Ok(Some(d))
    }

    /// The scalar fields under the keys of ``lipattn transport --json``.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (gap, rel, inf) = match self.certificate {
            Some((g, r, i)) => (Some(g), Some(r), Some(i)),
            None => (None, None, None),
        };
        let nnz = match &self.plan {
            Plan::Sparse(e) => e.len(),
            Plan::Dense(v) => v.iter().filter(|&&f| f != 0.0).count(),
        };
        let out = json!({
            "method": self.method,
            "n": self.n,
            "m": self.m,
            "p": self.p,
            "eps": self.eps,
            "cost": self.cost,
            "distance": self.distance,
            "gap": gap,
            "relative_gap": rel,
            "infeasibility": inf,
            "marginal_error": self.marginal_error,
            "converged": self.converged,
            "iterations": self.iterations,
            "plan_nonzeros": nnz,
            "solver_seconds": self.seconds,
        });
        json_to_py(py, &out)
    }

    fn __repr__(&self) -> String {
        format!(
            "Transport(method='{}', p={}, cost={:.10e}, distance={:.10e}, n={}, m={})",
            self.method,
            self.p.map_or("None".to_string(), |p| p.to_string()),
            self.cost,
            self.distance,
            self.n,
            self.m
        )
    }
}

fn integer_p(p: f64) -> PyResult<u32> {
    if p == 1.0 || p == 2.0 {
        Ok(p as u32)
    } else {
        Err(PyValueError::new_err(format!(
            "p = {p} is not supported by this method: use 1 or 2 (or method='sorted' for other p >= 1 in d = 1)"
        )))
    }
}

/// Optimal transport between ``a`` and ``b`` (Measures, or point arrays with weights ``wa``,
/// ``wb``; uniform when absent) for the ground cost ``||x - y||^p`` or a user ``cost`` matrix.
///
/// ``method``: 'exact' (network simplex, p in {1, 2}, certified), 'sorted' (d = 1, any p >= 1)
/// or 'sinkhorn' (entropic, needs ``eps``; ``tol`` on the L1 marginal error, ``max_iter``).
/// ``normalise`` rescales given weights instead of rejecting them.
#[pyfunction(name = "transport")]
#[pyo3(signature = (a, b, *, wa=None, wb=None, p=1.0, method="exact", eps=None, tol=1e-9, max_iter=10_000, cost=None, normalise=false))]
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
    max_iter: usize,
    cost: Option<&Bound<'_, PyAny>>,
    normalise: bool,
) -> PyResult<PyTransport> {
    let method: &'static str = match method {
        "exact" => "exact",
        "sorted" => "sorted",
        "sinkhorn" => "sinkhorn",
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown method '{other}' (expected 'exact', 'sorted' or 'sinkhorn')"
            )))
        }
    };
    let ma = measure_arg(a, wa, normalise, "source")?;
    let mb = measure_arg(b, wb, normalise, "target")?;
    let user_cost = match cost.filter(|c| !c.is_none()) {
        None => None,
        Some(c) => {
            if method == "sorted" {
                return Err(PyValueError::new_err(
                    "cost cannot be used with method='sorted' (its cost is |x - y|^p on the line)",
                ));
            }
            let c = matrix_f64(c, "cost matrix")?;
            if c.nrows() != ma.len() || c.ncols() != mb.len() {
                return Err(PyValueError::new_err(format!(
                    "cost matrix is {} x {}, expected {} x {} (source atoms x target atoms)",
                    c.nrows(),
                    c.ncols(),
                    ma.len(),
                    mb.len()
                )));
            }
            Some(CostMatrix::from_mat(c.as_ref()).py_err()?)
        }
    };
    if eps.is_some() && method != "sinkhorn" {
        return Err(PyValueError::new_err(
            "eps only applies to method='sinkhorn'",
        ));
    }
    let (n, m) = (ma.len(), mb.len());
    if method == "sinkhorn" {
        let Some(eps) = eps else {
            return Err(PyValueError::new_err(
                "method='sinkhorn' needs eps (the entropic regularisation, in cost units)",
            ));
        };
        let opts = SinkhornOptions { eps, tol, max_iter };
        let pint = if user_cost.is_none() {
            Some(integer_p(p)?)
        } else {
            None
        };
        let (e, plan) = interruptible(py, move || {
            let c = match user_cost {
                Some(c) => c,
                None => transport::ground_cost(&ma, &mb, pint.expect("set without cost"))?,
            };
            let e = transport::sinkhorn_with_cost(ma.weights(), mb.weights(), &c, &opts)?;
            let mut plan = vec![0.0; n * m];
            for i in 0..n {
                for j in 0..m {
                    plan[i * m + j] = ((e.f[i] + e.g[j] - c.get(i, j)) / e.eps).exp();
                }
            }
            Ok((e, plan))
        })?;
        // The distance as `transport::sinkhorn` defines it: cost^(1/p) for a ground cost.
        let distance = match pint {
            Some(2) => e.cost.max(0.0).sqrt(),
            _ => e.cost,
        };
        return Ok(PyTransport {
            method,
            p: pint.map(f64::from),
            cost: e.cost,
            distance,
            eps: Some(e.eps),
            iterations: e.iterations as u64,
            converged: e.converged,
            marginal_error: e.marginal_error,
            seconds: e.seconds,
            n,
            m,
            plan: Plan::Dense(plan),
            u: e.f,
            v: e.g,
            certificate: None,
        });
    }
    let pint = if method == "exact" && user_cost.is_none() {
        Some(integer_p(p)?)
    } else {
        None
    };
    let t = interruptible(py, move || match (method, &user_cost) {
        ("sorted", _) => transport::sorted_1d(&ma, &mb, p),
        (_, Some(c)) => transport::exact_with_cost_matrix(ma.weights(), mb.weights(), c),
        _ => transport::exact(&ma, &mb, pint.expect("set without cost")),
    })?;
    Ok(PyTransport {
        method,
        p: t.p,
        cost: t.cost,
        distance: t.distance,
        eps: None,
        iterations: t.iterations,
        converged: true,
        marginal_error: t.marginal_error,
        seconds: t.seconds,
        n,
        m,
        plan: Plan::Sparse(t.plan),
        u: t.u,
        v: t.v,
        certificate: Some((t.gap, t.relative_gap, t.infeasibility)),
    })
}

/// The ground cost matrix ``C_ij = ||x_i - y_j||^p`` (p in {1, 2}) between the atoms of two
/// Measures or point arrays, (n, m) float64.
#[pyfunction]
#[pyo3(signature = (a, b, p=1))]
pub fn ground_cost<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    p: u32,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let ma = measure_arg(a, None, false, "source")?;
    let mb = measure_arg(b, None, false, "target")?;
    let c = py.detach(|| transport::ground_cost(&ma, &mb, p)).py_err()?;
    Ok(crate::convert::to_numpy(py, c.to_mat().as_ref()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTransport>()?;
    m.add_function(wrap_pyfunction!(transport_py, m)?)?;
    m.add_function(wrap_pyfunction!(ground_cost, m)?)?;
    Ok(())
}
