//! `transport`: optimal transport between two weighted point clouds, one dispatch over the exact
//! (network simplex, certified), sorted 1-D and entropic (Sinkhorn) solvers, one report shape.

use super::OnProgress;
use crate::error::{Error, Result};
use crate::measure::Measure;
use crate::named_enum;
use crate::transport::{self, CostMatrix, SinkhornOptions};
use faer::Mat;
use serde::{Deserialize, Serialize};
use std::time::Instant;

named_enum! {
    /// The solver of a transport request.
    pub enum TransportMethod as "method" {
        /// Network simplex, with an optimality certificate.
        Exact = "exact",
        /// Monotone coupling of sorted atoms (d = 1 only; any p >= 1).
        Sorted = "sorted",
        /// Entropic transport (log-domain Sinkhorn); needs `eps`.
        Sinkhorn = "sinkhorn",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportRequest {
    pub method: TransportMethod,
    /// Ground cost exponent: ||x - y||^p. 1 or 2 for exact and sinkhorn; any p >= 1 for sorted.
    pub p: f64,
    /// Entropic regularisation for sinkhorn, in cost units (required there, refused elsewhere).
    pub eps: Option<f64>,
    /// Sinkhorn stopping tolerance on the L1 marginal error.
    pub tol: f64,
    /// Sinkhorn iteration limit.
    pub max_iter: usize,
    /// Rescale given weights to sum to 1 instead of rejecting them.
    pub normalise: bool,
    /// Return a Sinkhorn plan that did not meet `tol` within `max_iter` (flagged
    /// `converged: false`) instead of failing.
    pub accept_unconverged: bool,
}

impl Default for TransportRequest {
    fn default() -> Self {
        let sinkhorn = SinkhornOptions::default();
        Self {
            method: TransportMethod::Exact,
            p: 1.0,
            eps: None,
            tol: sinkhorn.tol,
            max_iter: sinkhorn.max_iter,
            normalise: false,
            accept_unconverged: false,
        }
    }
}

impl TransportRequest {
    /// A measure of this request: `points` with `weights` (uniform when absent), rescaled when
    /// the request says `normalise`.
    pub fn measure(&self, points: Mat<f64>, weights: Option<Vec<f64>>) -> Result<Measure> {
        Measure::with_weights(points, weights, self.normalise)
    }

    fn integer_p(&self) -> Result<u32> {
        if self.p == 1.0 || self.p == 2.0 {
            Ok(self.p as u32)
        } else {
            Err(Error::Option(format!(
                "`p` = {} is not supported by this method: use 1 or 2 (or `method` sorted for other p >= 1 in d = 1)",
                crate::fmt::exact(self.p)
            )))
        }
    }
}

/// What a transport request runs on.
pub struct TransportInputs {
    pub source: Measure,
    pub target: Measure,
    /// A user cost matrix (source atoms x target atoms) replacing ||x - y||^p.
    pub cost: Option<Mat<f64>>,
}

/// The optimal (or entropic) plan, kept out of the JSON.
pub enum Plan {
    /// Nonzeros (i, j, mass) of an exact plan, sorted by (i, j).
    Sparse(Vec<(usize, usize, f64)>),
    /// An entropic plan `P_ij = exp((f_i + g_j - C_ij) / eps)`, every entry positive unless it
    /// underflows; stored through its potentials and cost.
    Entropic {
        cost: CostMatrix,
        f: Vec<f64>,
        g: Vec<f64>,
        eps: f64,
    },
}

impl Plan {
    fn entropic_entry(
        cost: &CostMatrix,
        f: &[f64],
        g: &[f64],
        eps: f64,
        i: usize,
        j: usize,
    ) -> f64 {
        ((f[i] + g[j] - cost.get(i, j)) / eps).exp()
    }

    /// The plan as a dense row-major n x m array.
    pub fn dense(&self, n: usize, m: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * m];
        match self {
            Plan::Sparse(e) => e.iter().for_each(|&(i, j, f)| out[i * m + j] += f),
            Plan::Entropic { cost, f, g, eps } => {
                for i in 0..n {
                    for j in 0..m {
                        out[i * m + j] = Self::entropic_entry(cost, f, g, *eps, i, j);
                    }
                }
            }
        }
        out
    }

    /// The nonzero entries (i, j, mass), row by row.
    pub fn nonzeros(&self) -> Vec<(usize, usize, f64)> {
        match self {
            Plan::Sparse(e) => e.clone(),
            Plan::Entropic { cost, f, g, eps } => (0..cost.nrows())
                .flat_map(|i| (0..cost.ncols()).map(move |j| (i, j)))
                .map(|(i, j)| (i, j, Self::entropic_entry(cost, f, g, *eps, i, j)))
                .filter(|e| e.2 != 0.0)
                .collect(),
        }
    }

    fn count_nonzeros(&self) -> usize {
        match self {
            Plan::Sparse(e) => e.len(),
            Plan::Entropic { cost, f, g, eps } => (0..cost.nrows())
                .map(|i| {
                    (0..cost.ncols())
                        .filter(|&j| Self::entropic_entry(cost, f, g, *eps, i, j) != 0.0)
                        .count()
                })
                .sum(),
        }
    }
}

/// The result of one transport request; the serialised fields are the command's JSON.
#[derive(Serialize)]
pub struct TransportReport {
    pub method: TransportMethod,
    pub n: usize,
    pub m: usize,
    pub d: usize,
    /// The ground exponent; None for a user cost matrix.
    pub p: Option<f64>,
    pub eps: Option<f64>,
    /// `<P, C>`.
    pub cost: f64,
    /// `W_p = cost^(1/p)`; the cost itself for a user cost matrix.
    pub distance: f64,
    /// The optimality certificate of the exact solvers (primal - dual, relative, dual
    /// infeasibility); None for Sinkhorn, which makes no exactness claim.
    pub gap: Option<f64>,
    pub relative_gap: Option<f64>,
    pub infeasibility: Option<f64>,
    /// Largest marginal violation of the plan (L1 row error for Sinkhorn).
    pub marginal_error: f64,
    /// Exact solvers always converge; Sinkhorn says whether it met `tol`.
    pub converged: bool,
    pub iterations: u64,
    pub plan_nonzeros: usize,
    /// The solver's own time.
    pub solver_seconds: f64,
    /// The whole request, cost matrix included.
    pub seconds: f64,
    #[serde(skip)]
    pub plan: Plan,
    /// Dual potentials: `u_i + v_j <= C_ij` up to `infeasibility` for exact solvers; Sinkhorn's
    /// `(f, g)`.
    #[serde(skip)]
    pub potentials: (Vec<f64>, Vec<f64>),
}

/// Checks the request against its inputs and solves it.
pub fn run(
    req: &TransportRequest,
    inputs: TransportInputs,
    on_progress: OnProgress,
) -> Result<TransportReport> {
    let start = Instant::now();
    let TransportInputs {
        source: a,
        target: b,
        cost,
    } = inputs;
    let user_cost = match cost {
        None => None,
        Some(c) => {
            if req.method == TransportMethod::Sorted {
                return Err(Error::Option(
                    "`cost` cannot be used with `method` sorted (its cost is |x - y|^p on the line)"
                        .into(),
                ));
            }
            if c.nrows() != a.len() || c.ncols() != b.len() {
                return Err(Error::Option(format!(
                    "cost matrix is {} x {}, expected {} x {} (source atoms x target atoms)",
                    c.nrows(),
                    c.ncols(),
                    a.len(),
                    b.len()
                )));
            }
            Some(CostMatrix::from_mat(c.as_ref())?)
        }
    };
    if req.eps.is_some() && req.method != TransportMethod::Sinkhorn {
        return Err(Error::Option(
            "`eps` only applies to `method` sinkhorn".into(),
        ));
    }
    let (n, m, d) = (a.len(), b.len(), a.dim());
    if req.method != TransportMethod::Sorted {
        // A dense n x m cost matrix, and the solver's arrays over all n m arcs (network simplex:
        // costs, flows, states and tree links) or the dense entropic plan.
        crate::budget::check(
            || {
                format!(
                "{} transport between {n} and {m} atoms (the n x m cost matrix and solver state)",
                req.method.name()
            )
            },
            crate::budget::bytes_of(&[6, n, m], 8),
        )?;
    }
    let stage = req.method.name();
    on_progress(&super::Progress {
        stage,
        done: 0,
        total: 1,
    });
    let mut report = match req.method {
        TransportMethod::Exact | TransportMethod::Sorted => {
            let t = match (req.method, &user_cost) {
                (TransportMethod::Sorted, _) => transport::sorted_1d(&a, &b, req.p)?,
                (_, Some(c)) => transport::exact_with_cost_matrix(a.weights(), b.weights(), c)?,
                (_, None) => transport::exact(&a, &b, req.integer_p()?)?,
            };
            let plan = Plan::Sparse(t.plan);
            TransportReport {
                method: req.method,
                n,
                m,
                d,
                p: t.p,
                eps: None,
                cost: t.cost,
                distance: t.distance,
                gap: Some(t.gap),
                relative_gap: Some(t.relative_gap),
                infeasibility: Some(t.infeasibility),
                marginal_error: t.marginal_error,
                converged: true,
                iterations: t.iterations,
                plan_nonzeros: plan.count_nonzeros(),
                solver_seconds: t.seconds,
                seconds: 0.0,
                plan,
                potentials: (t.u, t.v),
            }
        }
        TransportMethod::Sinkhorn => {
            let Some(eps) = req.eps else {
                return Err(Error::Option(
                    "`method` sinkhorn needs `eps` (the entropic regularisation, in cost units)"
                        .into(),
                ));
            };
            let opts = SinkhornOptions {
                eps,
                tol: req.tol,
                max_iter: req.max_iter,
            };
            let (cost, p) = match user_cost {
                Some(c) => (c, None),
                None => {
                    let p = req.integer_p()?;
                    (transport::ground_cost(&a, &b, p)?, Some(p))
                }
            };
            let e = transport::sinkhorn_with_cost(a.weights(), b.weights(), &cost, &opts)?;
            // A plan whose marginals are off by more than `tol` is not the entropic plan it
            // claims to be; its cost is no answer unless the caller asked for it as it is.
            if !e.converged && !req.accept_unconverged {
                return Err(Error::NoConvergence {
                    solver: "sinkhorn".into(),
                    reason: format!(
                        "L1 marginal error {} above `tol` {}; raise `max_iter` or `eps`, or \
                         set `accept_unconverged` to take the plan as it is",
                        crate::fmt::compact(e.marginal_error),
                        crate::fmt::exact(req.tol)
                    ),
                    steps: e.iterations,
                    best_residual: e.marginal_error,
                    best_step: e.iterations,
                    residuals: vec![],
                });
            }
            // The distance as `transport::sinkhorn` defines it: cost^(1/p) for a ground cost.
            let distance = match p {
                Some(2) => e.cost.max(0.0).sqrt(),
                _ => e.cost,
            };
            let plan = Plan::Entropic {
                cost,
                f: e.f.clone(),
                g: e.g.clone(),
                eps: e.eps,
            };
            TransportReport {
                method: req.method,
                n,
                m,
                d,
                p: p.map(f64::from),
                eps: Some(e.eps),
                cost: e.cost,
                distance,
                gap: None,
                relative_gap: None,
                infeasibility: None,
                marginal_error: e.marginal_error,
                converged: e.converged,
                iterations: e.iterations as u64,
                plan_nonzeros: plan.count_nonzeros(),
                solver_seconds: e.seconds,
                seconds: 0.0,
                plan,
                potentials: (e.f, e.g),
            }
        }
    };
    on_progress(&super::Progress {
        stage,
        done: 1,
        total: 1,
    });
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
