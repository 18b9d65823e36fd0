//! One driver for the fixed-point solvers (Picard, Anderson, Broyden) on any map T with a
//! metric, and the certificates of docs/dynamics.md#d1 when T is a certified contraction:
//! the a-priori step count and the a-posteriori error bound |x - x*| <= (r + delta) / (1 - L),
//! valid for every iterate x in the certified domain whatever solver produced it.

use super::anderson::Anderson;
use super::broyden::Broyden;
use super::{dist2, norm2, EPS};
use crate::error::{check_at_least, check_in, check_nonnegative, check_positive, Interval};
use crate::error::{Error, Result};
use serde::Serialize;
use std::time::Instant;

/// A map T whose fixed point x* = T(x*) is sought, on flat vectors.
pub trait FixedPointMap {
    fn dim(&self) -> usize;
    fn apply(&self, x: &[f64]) -> Result<Vec<f64>>;
    /// The metric residuals, errors and the contraction are stated in (Euclidean by default).
    fn distance(&self, a: &[f64], b: &[f64]) -> Result<f64> {
        Ok(dist2(a, b))
    }
    /// The size relative residuals are taken against (the norm of T(x) by default).
    fn size(&self, fx: &[f64]) -> f64 {
        norm2(fx)
    }
    /// A certified constant L < 1 with d(T x, T y) <= L d(x, y) on the certified domain.
    fn contraction(&self) -> Option<f64>;
    /// Whether x lies in the domain where the contraction constant holds (and which T maps
    /// into itself).
    fn in_domain(&self, x: &[f64]) -> bool;
    /// An allowance for the floating-point error of evaluating d(x, T x), added to the
    /// computed residual in the a-posteriori bound (argued in docs/dynamics.md#d1, not proven).
    fn evaluation_allowance(&self, x: &[f64], fx: &[f64]) -> f64 {
        64.0 * (self.dim() as f64).sqrt() * EPS * (norm2(x) + norm2(fx))
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Solver {
    /// x_{k+1} = T(x_k).
    Picard,
    /// Anderson acceleration (type II) with `memory` past residuals, Tikhonov regularisation
    /// `regularisation` (relative to the Gram matrix's scale) and mixing `mixing` in (0, 1].
    Anderson {
        memory: usize,
        regularisation: f64,
        mixing: f64,
    },
    /// Good Broyden on G(x) = T(x) - x with a limited-memory inverse-Jacobian estimate started
    /// at -I (so its first step is a Picard step), restarted when `memory` updates are stored.
    Broyden { memory: usize },
}

impl Solver {
    pub fn name(&self) -> &'static str {
        match self {
            Solver::Picard => "picard",
            Solver::Anderson { .. } => "anderson",
            Solver::Broyden { .. } => "broyden",
        }
    }

    /// torchdeq's Anderson defaults: memory 6, regularisation 1e-4, no damping.
    pub fn anderson() -> Self {
        Solver::Anderson {
            memory: 6,
            regularisation: 1e-4,
            mixing: 1.0,
        }
    }

    pub fn broyden() -> Self {
        Solver::Broyden { memory: 30 }
    }

    fn check(&self) -> Result<()> {
        match *self {
            Solver::Picard => Ok(()),
            Solver::Anderson {
                memory,
                regularisation,
                mixing,
            } => {
                check_at_least("Anderson memory", memory, 1)?;
                check_nonnegative("Anderson regularisation", regularisation)?;
                check_in("Anderson mixing", mixing, Interval::open_closed(0.0, 1.0))?;
                Ok(())
            }
            Solver::Broyden { memory } => {
                check_at_least("Broyden memory", memory, 1)?;
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for Solver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "picard" | "fixed-point" => Ok(Solver::Picard),
            "anderson" => Ok(Solver::anderson()),
            "broyden" => Ok(Solver::broyden()),
            other => Err(Error::invalid(format!(
                "unknown solver '{other}' (expected picard, anderson or broyden)"
            ))),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SolveOptions {
    /// Stop when d(x, T x) <= atol (absolute residual)...
    pub atol: f64,
    /// ...or when d(x, T x) <= rtol * size(T x) (0 disables the relative test).
    pub rtol: f64,
    /// At most this many evaluations of T.
    pub max_evals: usize,
    /// Declared divergent when a residual exceeds this factor times the first one, or is not
    /// finite.
    pub divergence_factor: f64,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            atol: 1e-10,
            rtol: 0.0,
            max_evals: 1000,
            divergence_factor: 1e4,
        }
    }
}

impl SolveOptions {
    pub fn check(&self) -> Result<()> {
        check_positive("absolute tolerance atol", self.atol)?;
        check_nonnegative("relative tolerance rtol", self.rtol)?;
        check_at_least("max_evals", self.max_evals, 1)?;
        check_in(
            "divergence_factor",
            self.divergence_factor,
            Interval::above(1.0),
        )?;
        Ok(())
    }
}

/// A converged solve. `x` is the lowest-residual iterate (the one the residual and the bounds
/// refer to).
#[derive(Clone, Debug, Serialize)]
pub struct Solution {
    pub solver: String,
    #[serde(skip)]
    pub x: Vec<f64>,
    /// Index of `x` among the iterates (x_0 is the start).
    pub step: usize,
    /// Evaluations of T in all.
    pub evaluations: usize,
    /// d(x, T x) at the returned iterate.
    pub residual: f64,
    pub relative_residual: f64,
    /// d(x_k, T x_k) for every iterate, in order.
    pub abs_trace: Vec<f64>,
    pub rel_trace: Vec<f64>,
    /// The certified contraction constant L of T, when one exists.
    pub contraction: Option<f64>,
    /// Certified: d(x, x*) <= (residual + allowance) / (1 - L), when x is in the certified domain.
    pub error_bound: Option<f64>,
    /// The evaluation allowance inside `error_bound`.
    pub allowance: Option<f64>,
    /// Certified: Picard from x_0 reaches residual <= atol within this many steps
    /// (L^k d(x_0, T x_0) <= atol); None without a certified contraction, or beyond
    /// `A_PRIORI_MAX_STEPS`.
    pub a_priori_steps: Option<usize>,
    /// Certified: Picard from x_0 reaches d(x_k, x*) <= atol within this many steps
    /// (L^k d(x_0, T x_0) / (1 - L) <= atol).
    pub a_priori_steps_error: Option<usize>,
    pub seconds: f64,
}

/// The most steps an a-priori count reports: past 2^53 consecutive integers are no longer
/// exact in f64, so a larger count could not be checked, and no run would take that long.
pub const A_PRIORI_MAX_STEPS: u64 = 1 << 53;

/// Smallest k >= 0 with L^k r0 <= tol, for 0 <= L < 1; None when that k exceeds
/// `A_PRIORI_MAX_STEPS` (L within rounding of 1), or when L is not below 1.
pub fn a_priori_steps(l: f64, r0: f64, tol: f64) -> Option<usize> {
    if r0.is_nan() || tol.is_nan() {
        return None;
    }
    if r0 <= tol {
        return Some(0);
    }
    if l <= 0.0 {
        return Some(1);
    }
    if l.is_nan() || l >= 1.0 {
        return None;
    }
    // In log space and in f64: the quotient can be astronomically large when L is close to 1,
    // and an integer power (powi takes an i32) of such a k would wrap around and never settle.
    let q = ((tol / r0).ln() / l.ln()).ceil().max(0.0);
    let cap = A_PRIORI_MAX_STEPS as f64;
    if q.is_nan() || q > cap {
        return None;
    }
    let mut k = q;
    // ceil of a rounded quotient can land a step short; L^k is decreasing in k, so this settles
    // within a few steps.
    while l.powf(k) * r0 > tol {
        k += 1.0;
        if k > cap {
            return None;
        }
    }
    usize::try_from(k as u64).ok()
}

struct Trace {
    abs: Vec<f64>,
    rel: Vec<f64>,
    best: usize,
    best_x: Vec<f64>,
    best_fx: Vec<f64>,
}

/// Solves x = T(x) from `x0`.
pub fn solve<M: FixedPointMap + ?Sized>(
    map: &M,
    x0: &[f64],
    solver: &Solver,
    opts: &SolveOptions,
) -> Result<Solution> {
    let start = Instant::now();
    opts.check()?;
    solver.check()?;
    if x0.len() != map.dim() {
        return Err(Error::shape(
            "starting point",
            map.dim().to_string(),
            x0.len().to_string(),
        ));
    }
    crate::error::check_finite("starting point", x0.iter().copied())?;
    let contraction = map.contraction().filter(|l| *l < 1.0);
    let mut anderson = match *solver {
        Solver::Anderson {
            memory,
            regularisation,
            mixing,
        } => Some(Anderson::new(memory, regularisation, mixing)),
        _ => None,
    };
    let mut broyden = match *solver {
        Solver::Broyden { memory } => Some(Broyden::new(memory)),
        _ => None,
    };
    let mut x = x0.to_vec();
    let mut trace = Trace {
        abs: vec![],
        rel: vec![],
        best: 0,
        best_x: vec![],
        best_fx: vec![],
    };
    let mut evals = 0;
    let fail = |reason: String, trace: &Trace| Error::NoConvergence {
        solver: solver.name().into(),
        reason,
        steps: trace.abs.len().saturating_sub(1),
        best_residual: trace.abs.get(trace.best).copied().unwrap_or(f64::NAN),
        best_step: trace.best,
        residuals: trace.abs.clone(),
    };
    loop {
        crate::cancel::check()?;
        let fx = map.apply(&x)?;
        evals += 1;
        let r = map.distance(&x, &fx)?;
        let rel = r / map.size(&fx).max(f64::MIN_POSITIVE);
        let k = trace.abs.len();
        trace.abs.push(r);
        trace.rel.push(rel);
        if !r.is_finite() || fx.iter().any(|v| !v.is_finite()) {
            return Err(fail(format!("non-finite residual at step {k}"), &trace));
        }
        if k == 0 || r < trace.abs[trace.best] {
            trace.best = k;
            trace.best_x = x.clone();
            trace.best_fx = fx.clone();
        }
        if r > opts.divergence_factor * trace.abs[0] && trace.abs[0] > 0.0 {
            return Err(fail(
                format!(
                    "diverging: residual {} exceeds {} times the first ({})",
                    crate::fmt::compact(r),
                    crate::fmt::exact(opts.divergence_factor),
                    crate::fmt::compact(trace.abs[0])
                ),
                &trace,
            ));
        }
        if r <= opts.atol || (opts.rtol > 0.0 && rel <= opts.rtol) {
            break;
        }
        if evals >= opts.max_evals {
            return Err(fail(
                format!("iteration limit of {} evaluations reached", opts.max_evals),
                &trace,
            ));
        }
        x = match (&mut anderson, &mut broyden) {
            (Some(a), _) => a.step(&x, &fx),
            (_, Some(b)) => b.step(&x, &fx),
            _ => fx,
        };
    }
    let Trace {
        abs,
        rel,
        best,
        best_x,
        best_fx,
    } = trace;
    let residual = abs[best];
    let (error_bound, allowance) = match contraction {
        Some(l) if map.in_domain(&best_x) => {
            let delta = map.evaluation_allowance(&best_x, &best_fx);
            (Some((residual + delta) / (1.0 - l)), Some(delta))
        }
        _ => (None, None),
    };
    let start_in_domain = map.in_domain(x0);
    let a_priori = |tol: f64| {
        contraction
            .filter(|_| start_in_domain)
            .and_then(|l| a_priori_steps(l, abs[0], tol))
    };
    Ok(Solution {
        solver: solver.name().into(),
        x: best_x,
        step: best,
        evaluations: evals,
        residual,
        relative_residual: rel[best],
        a_priori_steps: a_priori(opts.atol),
        a_priori_steps_error: contraction
            .filter(|_| start_in_domain)
            .and_then(|l| a_priori_steps(l, abs[0] / (1.0 - l), opts.atol)),
        abs_trace: abs,
        rel_trace: rel,
        contraction,
        error_bound,
        allowance,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod a_priori_tests {
    use super::*;

    #[test]
    fn counts_are_exact_and_never_hang() {
        // 0.5^k * 1 <= 1e-3 first at k = 10.
        assert_eq!(a_priori_steps(0.5, 1.0, 1e-3), Some(10));
        assert_eq!(a_priori_steps(0.5, 1e-4, 1e-3), Some(0));
        assert_eq!(a_priori_steps(0.0, 1.0, 1e-3), Some(1));
        // About 2.1e10 steps: past i32, where powi used to wrap and spin.
        let k = a_priori_steps(0.999_999_999, 1.0, 1e-9).unwrap();
        assert!((2.0e10..2.1e10).contains(&(k as f64)), "{k}");
        assert!(0.999_999_999f64.powf(k as f64) <= 1e-9);
        assert!(0.999_999_999f64.powf((k - 1) as f64) > 1e-9);
        // Within rounding of 1 and at 1: no count, at once.
        assert_eq!(a_priori_steps(1.0 - f64::EPSILON, 1.0, 1e-300), None);
        assert_eq!(a_priori_steps(1.0, 1.0, 1e-3), None);
        assert_eq!(a_priori_steps(f64::NAN, 1.0, 1e-3), None);
        assert_eq!(a_priori_steps(0.5, f64::NAN, 1e-3), None);
        assert_eq!(a_priori_steps(0.5, f64::INFINITY, 1e-3), None);
    }
}
