//! Optimal transport between weighted discrete measures, with a certificate for every exact answer.
//!
//! * [`exact`] / [`exact_with_cost`]: network simplex on the complete bipartite graph, ground
//!   cost `||x - y||^p` (p = 1 or 2) or a user cost matrix.
//! * [`sorted_1d`]: the monotone coupling on the line, exact for any convex cost `|x - y|^p`, p >= 1.
//! * [`sinkhorn`]: entropic transport in the log domain.
//!
//! Exact solvers return dual potentials `(u, v)`; [`certificate::certify`] recomputes from the
//! plan, the potentials and the cost alone (never from solver internals) the primal-dual gap, the
//! largest dual infeasibility `max(u_i + v_j - C_ij, 0)` over all pairs and the marginal error.

pub mod certificate;
mod network_simplex;
pub mod sinkhorn;
pub mod sorted;

pub use certificate::Certificate;
pub use sinkhorn::{sinkhorn, sinkhorn_with_cost, Entropic, SinkhornOptions};
pub use sorted::sorted_1d;

use crate::error::{check_finite, Error, Result};
use crate::measure::Measure;
use faer::{Mat, MatRef};
use serde::Serialize;
use std::time::Instant;

/// Relative tolerance on `|sum a - sum b|` accepted by the cost-matrix entry points.
pub const MASS_TOL: f64 = 1e-9;

/// A dense ground-cost matrix stored row-major (`data[i * m + j] = C_ij`), the layout the
/// simplex scans: one row of a source atom is contiguous.
#[derive(Clone, Debug)]
pub struct CostMatrix {
    n: usize,
    m: usize,
    data: Vec<f64>,
}

impl CostMatrix {
    /// Validates shape and finiteness.
    pub fn from_row_major(n: usize, m: usize, data: Vec<f64>) -> Result<Self> {
        if n == 0 || m == 0 {
            return Err(Error::Empty {
                what: format!("cost matrix ({n} x {m})"),
            });
        }
        if data.len() != n * m {
            return Err(Error::shape(
                "cost matrix",
                format!("{n} x {m} = {} entries", n * m),
                data.len().to_string(),
            ));
        }
        check_finite("cost matrix (row-major index)", data.iter().copied())?;
        Ok(Self { n, m, data })
    }

    pub fn from_mat(cost: MatRef<'_, f64>) -> Result<Self> {
        let (n, m) = (cost.nrows(), cost.ncols());
        let data = (0..n)
            .flat_map(|i| (0..m).map(move |j| cost[(i, j)]))
            .collect();
        Self::from_row_major(n, m, data)
    }

    pub fn nrows(&self) -> usize {
        self.n
    }

    pub fn ncols(&self) -> usize {
        self.m
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.m + j]
    }

    pub fn to_mat(&self) -> Mat<f64> {
        Mat::from_fn(self.n, self.m, |i, j| self.get(i, j))
    }

    fn transposed(&self) -> CostMatrix {
        let mut data = vec![0.0; self.n * self.m];
        for i in 0..self.n {
            for j in 0..self.m {
                data[j * self.n + i] = self.data[i * self.m + j];
            }
        }
        CostMatrix {
            n: self.m,
            m: self.n,
            data,
        }
    }

    fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0f64, |acc, c| acc.max(c.abs()))
    }
}

/// Checks that `p` is a supported Euclidean exponent for the general solvers.
pub fn check_p(p: u32) -> Result<()> {
    if p == 1 || p == 2 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ground cost exponent p = {p} is not supported; the general solvers take p = 1 (||x - y||) or p = 2 (||x - y||^2); the 1-D sorted solver takes any real p >= 1"
        )))
    }
}

fn check_same_dim(a: &Measure, b: &Measure) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(Error::shape(
            "second measure (dimension must match the first)",
            format!("d = {}", a.dim()),
            format!("d = {}", b.dim()),
        ));
    }
    Ok(())
}

/// The ground cost `C_ij = ||x_i - y_j||^p` (p = 1 or 2) between the atoms of two measures.
///
/// Large dimensions go through the Gram matrix (one matrix product) for speed; because
/// `|x|^2 + |y|^2 - 2 x.y` loses all accuracy for nearby points, entries that are small relative
/// to `|x|^2 + |y|^2` are recomputed from coordinate differences, so duplicate points get an
/// exact zero and every entry keeps near full relative accuracy.
pub fn ground_cost(a: &Measure, b: &Measure, p: u32) -> Result<CostMatrix> {
    check_p(p)?;
    check_same_dim(a, b)?;
    let (x, y) = (a.points(), b.points());
    let (n, m, d) = (x.nrows(), y.nrows(), x.ncols());
    let xr: Vec<f64> = (0..n)
        .flat_map(|i| (0..d).map(move |k| x[(i, k)]))
        .collect();
    let yr: Vec<f64> = (0..m)
        .flat_map(|j| (0..d).map(move |k| y[(j, k)]))
        .collect();
    let direct = |i: usize, j: usize| -> f64 {
        let (xi, yj) = (&xr[i * d..(i + 1) * d], &yr[j * d..(j + 1) * d]);
        xi.iter().zip(yj).map(|(s, t)| (s - t) * (s - t)).sum()
    };
    let mut data = vec![0.0; n * m];
    if d <= 16 {
        for i in 0..n {
            for j in 0..m {
                data[i * m + j] = direct(i, j);
            }
        }
    } else {
        let nx: Vec<f64> = (0..n)
            .map(|i| xr[i * d..(i + 1) * d].iter().map(|v| v * v).sum())
            .collect();
        let ny: Vec<f64> = (0..m)
            .map(|j| yr[j * d..(j + 1) * d].iter().map(|v| v * v).sum())
            .collect();
        // y x^T is m x n column-major, i.e. x y^T in row-major order.
        let g: Mat<f64> = y * x.transpose();
        for i in 0..n {
            let gi = g.col_as_slice(i);
            for j in 0..m {
                let scale = nx[i] + ny[j];
                let r = scale - 2.0 * gi[j];
                data[i * m + j] = if r < 1e-4 * scale { direct(i, j) } else { r };
            }
        }
    }
    if p == 1 {
        data.iter_mut().for_each(|c| *c = c.sqrt());
    }
    CostMatrix::from_row_major(n, m, data)
}

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

pub(crate) fn check_weights(what: &str, w: &[f64], n: usize) -> Result<f64> {
    if w.len() != n {
        return Err(Error::shape(
            what,
            format!("[{n}]"),
            format!("[{}]", w.len()),
        ));
    }
    if n == 0 {
        return Err(Error::Empty { what: what.into() });
    }
    check_finite(what, w.iter().copied())?;
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, &x)| x < 0.0) {
        return Err(Error::NegativeWeight {
            what: what.into(),
            index,
            value,
        });
    }
    let sum: f64 = w.iter().sum();
    if sum <= 0.0 {
        return Err(Error::Invalid(format!(
            "{what}: total mass is {sum}; it must be positive"
        )));
    }
    Ok(sum)
}

pub(crate) fn check_masses(wa: &[f64], wb: &[f64], n: usize, m: usize) -> Result<()> {
    let sa = check_weights("source weights", wa, n)?;
    let sb = check_weights("target weights", wb, m)?;
    if (sa - sb).abs() > MASS_TOL * sa.max(sb) {
        return Err(Error::Invalid(format!(
            "the measures have different total mass ({sa:.17} vs {sb:.17}); balanced transport needs equal masses (normalise the weights)"
        )));
    }
    Ok(())
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
