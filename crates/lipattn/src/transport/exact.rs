//! Exact transport by the network simplex, certified from the plan, the potentials and the cost
//! alone.

use super::cost::{ground_cost, CostMatrix};
use super::masses::check_masses;
use super::{certificate, network_simplex};
use crate::error::Result;
use crate::measure::Measure;
use faer::MatRef;
use serde::Serialize;
use std::time::Instant;

/// The result of an exact solver, with its certificate.
#[derive(Clone, Debug, Serialize)]
pub struct Transport {
    /// `sum_ij pi_ij C_ij`.
    pub cost: f64,
    /// `W_p = cost^(1/p)`; for a user cost matrix, the cost itself.
    pub distance: f64,
    /// The ground exponent, `None` for a user cost matrix.
    pub p: Option<f64>,
    /// Nonzero entries `(i, j, pi_ij)`, sorted by `(i, j)`.
    pub plan: Vec<(usize, usize, f64)>,
    /// Dual potentials: `u_i + v_j <= C_ij` on all pairs, up to [`Transport::infeasibility`].
    pub u: Vec<f64>,
    pub v: Vec<f64>,
    /// `cost - (sum a_i u_i + sum b_j v_j)`, recomputed by [`certificate::certify`].
    pub gap: f64,
    /// `|gap| / max(|primal|, |dual|)` (0 when both vanish).
    pub relative_gap: f64,
    /// `max_ij max(u_i + v_j - C_ij, 0)`; NaN where not computed (see [`sorted_1d`]).
    pub infeasibility: f64,
    /// Largest violation of a row or column marginal by the plan.
    pub marginal_error: f64,
    /// Simplex pivots (0 for the sorted solver).
    pub iterations: u64,
    /// Wall time of the call, including the ground cost and the certificate.
    pub seconds: f64,
}

/// Exact transport between two measures for the cost `||x - y||^p`, p in {1, 2}.
pub fn exact(a: &Measure, b: &Measure, p: u32) -> Result<Transport> {
    let start = Instant::now();
    let cost = ground_cost(a, b, p)?;
    let mut t = solve_exact(a.weights(), b.weights(), &cost)?;
    t.p = Some(p as f64);
    t.distance = if p == 1 {
        t.cost
    } else {
        t.cost.max(0.0).sqrt()
    };
    t.seconds = start.elapsed().as_secs_f64();
    Ok(t)
}

/// Exact transport for a user cost matrix (`n x m`, finite, any sign). Weights must be
/// nonnegative with equal totals (relative tolerance [`MASS_TOL`]); they need not sum to 1.
pub fn exact_with_cost(wa: &[f64], wb: &[f64], cost: MatRef<'_, f64>) -> Result<Transport> {
    let start = Instant::now();
    let cost = CostMatrix::from_mat(cost)?;
    let mut t = exact_with_cost_matrix(wa, wb, &cost)?;
    t.seconds = start.elapsed().as_secs_f64();
    Ok(t)
}

/// As [`exact_with_cost`], for a cost already in row-major form (no copy).
pub fn exact_with_cost_matrix(wa: &[f64], wb: &[f64], cost: &CostMatrix) -> Result<Transport> {
    let start = Instant::now();
    let mut t = solve_exact(wa, wb, cost)?;
    t.seconds = start.elapsed().as_secs_f64();
    Ok(t)
}

fn solve_exact(wa: &[f64], wb: &[f64], cost: &CostMatrix) -> Result<Transport> {
    check_masses(wa, wb, cost.nrows(), cost.ncols())?;
    let sol = network_simplex::solve(wa, wb, cost, network_simplex::DEFAULT_MAX_PIVOTS)?;
    let cert = certificate::certify(wa, wb, &sol.plan, &sol.u, &sol.v, |i, j| cost.get(i, j));
    Ok(Transport {
        cost: cert.primal,
        distance: cert.primal,
        p: None,
        plan: sol.plan,
        u: sol.u,
        v: sol.v,
        gap: cert.gap,
        relative_gap: cert.relative_gap,
        infeasibility: cert.infeasibility,
        marginal_error: cert.marginal_error,
        iterations: sol.iterations,
        seconds: 0.0,
    })
}
