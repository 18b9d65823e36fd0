//! Plain power iteration on J^T J with the anchor's stopping rule (Castin, Ablin, Peyre 2024):
//! stop when the Rayleigh quotient sigma^2 = <v, J^T J v> changes by less than `abs_tol`
//! (absolute), at most `max_iter` iterations. Kept for comparison with Lanczos.

use super::lanczos::{start_vector, TopSingular};
use super::vecops::{dot, norm, scale};
use crate::derivatives::LinearizedMap;
use crate::error::{check_at_least, check_positive, Error, Result};
use crate::scalar::Scalar;
use faer::MatRef;

#[derive(Clone, Debug)]
pub struct PowerOptions {
    pub abs_tol: f64,
    pub max_iter: usize,
    pub seed: u64,
}

impl Default for PowerOptions {
    fn default() -> Self {
        Self {
            abs_tol: 1e-4,
            max_iter: 100,
            seed: 0,
        }
    }
}

pub fn power_iteration<T: Scalar, L: LinearizedMap<T>>(
    lin: &L,
    opts: &PowerOptions,
    start: Option<MatRef<'_, T>>,
) -> Result<TopSingular<T>> {
    check_positive("power iteration: abs_tol", opts.abs_tol)?;
    check_at_least("power iteration: max_iter", opts.max_iter, 1)?;
    let mut v = start_vector(lin, opts.seed, start)?;
    let mut history = Vec::new();
    let mut prev: Option<f64> = None;
    let mut converged = false;
    let mut rel_error = f64::INFINITY;
    let mut best = None;
    for it in 1..=opts.max_iter {
        crate::cancel::check()?;
        let jv = lin.jvp(v.as_ref())?;
        let w = lin.vjp(jv.as_ref())?;
        // The Rayleigh quotient of the unit v, computed as ||J v||^2 so that it is attained by v.
        let rq = dot(&jv, &jv);
        let nw = norm(&w);
        if !rq.is_finite() || !nw.is_finite() {
            return Err(Error::Numerical(format!(
                "power iteration produced a non-finite value at step {it}"
            )));
        }
        history.push(rq.sqrt());
        // ||J^T J v - rq v|| bounds the distance of rq to some eigenvalue (an estimate for the top one).
        let resid = (nw * nw - rq * rq).max(0.0).sqrt();
        rel_error = if rq > 0.0 { resid / (2.0 * rq) } else { 0.0 };
        let mut left = jv;
        if rq > 0.0 {
            scale(&mut left, 1.0 / rq.sqrt());
        }
        best = Some((rq.sqrt(), v.clone(), left));
        let done = prev.is_some_and(|p| (rq - p).abs() < opts.abs_tol) || nw == 0.0;
        prev = Some(rq);
        if done {
            converged = true;
            break;
        }
        v = w;
        scale(&mut v, 1.0 / nw);
    }
    let (sigma, vector, left) = best.expect("at least one iteration");
    Ok(TopSingular {
        sigma,
        rel_error,
        iterations: history.len(),
        start_steps: 0,
        converged,
        history,
        vector,
        left,
    })
}
