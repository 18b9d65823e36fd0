//! Regularity put to work (docs/background.md#dynamics; proofs in docs/dynamics.md): residual
//! blocks whose attention branch is a certified contraction and their inverses, log-determinants of
//! their Jacobians, weight-tied attention of infinite depth (fixed points in token and measure
//! space) and continuous-depth attention flows.
//!
//! Every number called certified here is proven in docs/dynamics.md from the bounds of
//! docs/bounds.md (B1, B2, B4, B5); everything else (traces, attained constants, stochastic
//! estimates) is reported as measured or estimated.

pub mod anderson;
pub mod broyden;
pub mod certify;
pub mod fixed_point;
pub mod flow;
pub mod invertible;
pub mod logdet;
pub mod solver;
pub mod synthetic;

pub use certify::{Certificate, CertifiedDomain};
pub use fixed_point::{MeasureFixedPoint, TokenFixedPoint, Variant};
pub use flow::{FlowOptions, Integrator, Projection, Trajectory};
pub use invertible::{Inversion, InvertibleBlock};
pub use logdet::{logdet_exact, logdet_series, LogDetEstimate, LogDetExact};
pub use solver::{solve, FixedPointMap, Solution, SolveOptions, Solver};

use crate::error::{Error, Result};
use faer::{Mat, MatRef};

/// f64 unit roundoff.
pub(crate) const EPS: f64 = f64::EPSILON / 2.0;

pub(crate) fn check_tol(what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Invalid(format!(
            "{what} must be positive and finite, got {v}"
        )));
    }
    Ok(())
}

pub(crate) fn check_contraction_target(c: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0 && c < 1.0) {
        return Err(Error::Invalid(format!(
            "the contraction constant c must lie in (0, 1), got {c}"
        )));
    }
    Ok(())
}

pub(crate) fn flatten(x: MatRef<'_, f64>) -> Vec<f64> {
    let (n, d) = (x.nrows(), x.ncols());
    let mut v = Vec::with_capacity(n * d);
    for i in 0..n {
        for k in 0..d {
            v.push(x[(i, k)]);
        }
    }
    v
}

pub(crate) fn unflatten(v: &[f64], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, k| v[i * d + k])
}

pub(crate) fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

pub(crate) fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

pub use crate::linalg::{frobenius, max_row_norm};
