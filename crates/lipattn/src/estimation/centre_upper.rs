//! A probabilistic upper bound on ||J(X)||_2 at one input from Lanczos with a random start
//! (docs/estimation.md#probabilistic-upper-bound): Lanczos gives a lower bound, and with the start
//! drawn uniformly from the sphere its top Ritz value is also within a factor of the top
//! eigenvalue of J^T J except with a probability this module states.
//!
//! Lemma P (ours; proof in the docs): for A = J^T J on R^N (N >= 3), a start b uniform on the
//! unit sphere and theta_k the top Ritz value of the Krylov space of dimension k,
//! P(theta_k < (1 - eps) lambda_max) <= sqrt(2 (N - 1) / (pi eps)) (1 - eps)^(k - 1/2).
//! So ||J||_2 <= sqrt(theta_k / (1 - eps)) except with at most that probability.

use super::lanczos::{lanczos, start_vector, LanczosOptions};
use crate::derivatives::LinearizedMap;
use crate::error::{check_at_least, check_in, Error, Interval, Result};
use serde::Serialize;

/// Relative allowance added to the computed top Ritz value for rounding. Lemma P is about exact
/// arithmetic; with full reorthogonalisation the computed Ritz values are accurate to a small
/// multiple of the unit roundoff times ||A||. This allowance is a stated assumption, not a proof.
pub const RITZ_ROUNDING_ALLOWANCE: f64 = 1e-10;

/// The most power steps that complete a Lanczos run stopped early.
pub const POWER_STEPS_CAP: usize = 2000;

/// The bound with everything needed to check it.
#[derive(Clone, Debug, Serialize)]
pub struct CentreUpper {
    /// Upper bound on ||J(X)||_2 (Frobenius norms), holding except with `failure_probability`.
    pub value: f64,
    pub kind: &'static str,
    /// The probability (over the random start) that `value` is below ||J(X)||_2, at most.
    pub failure_probability: f64,
    /// Lemma P's eps: value = sqrt(theta / (1 - eps)) with theta the top Ritz value.
    pub epsilon: f64,
    /// sqrt of the top Ritz value: ||J y||_2 at the unit Ritz vector y, an attained value (a
    /// lower bound on ||J(X)||_2, like any Lanczos estimate).
    pub ritz_sigma: f64,
    /// k of Lemma P: the Krylov dimension the bound uses.
    pub krylov_dimension: usize,
    /// 0, or k where Lanczos stopped early and the bound reads the power method's A^(k-1) b
    /// from the same start instead (docs/estimation.md#probabilistic-upper-bound).
    pub power_steps: usize,
    /// N = n d.
    pub dimension: usize,
    pub theorem: &'static str,
    /// What the bound takes for granted.
    pub assumptions: &'static str,
}

/// log of Lemma P's failure bound.
fn log_failure(dim: usize, k: usize, eps: f64) -> f64 {
    0.5 * (2.0 * (dim as f64 - 1.0) / std::f64::consts::PI).ln() - 0.5 * eps.ln()
        + (k as f64 - 0.5) * (-eps).ln_1p()
}

/// The smallest eps in (0, 1) (up to bisection, rounded up) with Lemma P's failure bound at
/// most `delta`, for dimension `dim` and Krylov dimension `k`.
pub fn lemma_p_epsilon(dim: usize, k: usize, delta: f64) -> f64 {
    let target = delta.ln();
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // The bound decreases in eps on (0, 1) (both factors do) and tends to 0 at 1, so bisection
    // keeps hi feasible.
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if log_failure(dim, k, mid) <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Lanczos for `steps` steps (fewer where the Krylov space becomes numerically invariant or
/// fills the whole space; the bound then uses the dimension reached) from a random start with `seed`, and the Lemma P bound with failure
/// probability `delta`.
pub fn centre_upper<L: LinearizedMap<f64>>(
    lin: &L,
    steps: usize,
    delta: f64,
    seed: u64,
) -> Result<CentreUpper> {
    check_at_least("upper_steps", steps, 2)?;
    check_in("upper_failure_probability", delta, Interval::open(0.0, 1.0))?;
    let dim = lin.n() * lin.d_in();
    if dim < 3 {
        return Err(Error::invalid(format!(
            "the probabilistic upper bound needs n d >= 3 (here {dim}): Lemma P uses the density of a coordinate on the sphere in dimension >= 3"
        )));
    }
    let top = lanczos(
        lin,
        &LanczosOptions {
            tol: f64::MIN_POSITIVE,
            max_iter: steps,
            seed,
        },
        None,
    )?;
    // k is the Krylov dimension actually built. An early stop is a numerical breakdown: the
    // space is invariant only up to rounding, for a perturbation that depends on the start, so
    // Lemma P (a statement about one fixed matrix) is not extended past the steps taken.
    let mut k = top.iterations;
    let mut theta = top.history.iter().fold(0.0f64, |m, &s| m.max(s * s));
    let mut power_steps = 0;
    if k < steps.min(dim) {
        // Lemma P's proof reads only y = A^(k-1) b: the power method from the same start takes
        // the full number of steps where Lanczos stopped on a numerical breakdown (a spectrum
        // with a wide top gap), and the bound holds for its Rayleigh quotient with that k.
        // Capped: past a few thousand steps Lemma P's factor is within 1% anyway, and the power
        // method, unlike Lanczos, does not stop at the dimension.
        let kp = steps.min(POWER_STEPS_CAP);
        let rayleigh = power_rayleigh(lin, seed, kp)?;
        k = kp.max(k);
        power_steps = kp;
        // Lanczos' theta is at least as large in exact arithmetic; either is a Ritz value.
        theta = theta.max(rayleigh);
    }
    let eps = lemma_p_epsilon(dim, k, delta);
    let value = (theta * (1.0 + RITZ_ROUNDING_ALLOWANCE) / (1.0 - eps)).sqrt();
    Ok(CentreUpper {
        value: value.next_up(),
        kind: "probabilistic",
        failure_probability: delta,
        epsilon: eps,
        ritz_sigma: theta.sqrt(),
        krylov_dimension: k,
        power_steps,
        dimension: dim,
        theorem: "Lemma P, docs/estimation.md#probabilistic-upper-bound (Lanczos from a start uniform on the sphere)",
        assumptions: "exact-arithmetic Lanczos, with a 1e-10 relative allowance for rounding; the start is the seeded pseudo-random Gaussian direction, taken as uniform on the sphere",
    })
}

/// The Rayleigh quotient of A^(k-1) b for A = J^T J and the start b Lanczos draws with `seed`
/// (normalised after each product, which leaves the quotient unchanged).
fn power_rayleigh<L: LinearizedMap<f64>>(lin: &L, seed: u64, k: usize) -> Result<f64> {
    let data = lin.normal_data();
    let mut y = start_vector(lin, seed, None)?;
    let norm = |m: &faer::Mat<f64>| crate::linalg::frobenius(m.as_ref());
    for _ in 1..k {
        crate::cancel::check()?;
        let (_, w) = lin.normal_step(&data, y.as_ref())?;
        let nw = norm(&w);
        if !(nw.is_finite() && nw > 0.0) {
            // A^j b = 0: the start has no component outside the kernel, so neither had it any
            // along the top eigenvector unless A = 0 (then 0 is the exact answer).
            return Ok(0.0);
        }
        y = w * (1.0 / nw);
    }
    let (_, w) = lin.normal_step(&data, y.as_ref())?;
    let num: f64 = (0..y.ncols())
        .map(|j| {
            y.col_as_slice(j)
                .iter()
                .zip(w.col_as_slice(j))
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum();
    let den = norm(&y).powi(2);
    Ok((num / den).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_meets_the_failure_bound_and_shrinks_with_steps() {
        for &(dim, k, delta) in &[(12_288, 100, 1e-6), (12_288, 300, 1e-6), (100, 20, 1e-3)] {
            let eps = lemma_p_epsilon(dim, k, delta);
            assert!(eps > 0.0 && eps < 1.0);
            assert!(log_failure(dim, k, eps) <= delta.ln());
            assert!(log_failure(dim, k, eps * 0.999) > delta.ln());
        }
        assert!(lemma_p_epsilon(12_288, 300, 1e-6) < lemma_p_epsilon(12_288, 100, 1e-6));
    }

    /// Against the dense Jacobian's largest singular value on random layers and inputs, several
    /// scales of tokens (sharp and flat softmax) and seeds: never below it, and within the
    /// factor 1 / sqrt(1 - eps) above it.
    #[test]
    fn upper_bound_holds_against_the_dense_svd() {
        use crate::attention::Kernel;
        use crate::derivatives::dense::dense_jacobian;
        use crate::derivatives::Linearization;
        use crate::dynamics::synthetic::random_layer;
        use crate::linalg::SplitMix;
        let mut worst: f64 = 0.0;
        for case in 0..24u64 {
            let layer = random_layer(6, 2, Kernel::Dot, 0.3, case).expect("layer");
            let scale = [0.3, 1.0, 3.0][case as usize % 3];
            let x = SplitMix::new(100 + case).gauss_mat::<f64>(4, 6) * scale;
            let lin = Linearization::new(&layer, x.as_ref(), None, case % 2 == 0).expect("lin");
            let exact = dense_jacobian(&lin)
                .expect("dense")
                .singular_values()
                .expect("svd")
                .into_iter()
                .fold(0.0f64, f64::max);
            let u = centre_upper(&lin, 12, 1e-3, case).expect("upper");
            assert!(u.value >= exact, "case {case}: {} < {exact}", u.value);
            assert!(
                u.value <= exact / (1.0 - u.epsilon).sqrt() * (1.0 + 1e-9),
                "case {case}"
            );
            worst = worst.max(u.value / exact);
        }
        assert!(worst > 1.0);
    }

    #[test]
    fn bad_requests_are_refused() {
        use crate::attention::Kernel;
        use crate::derivatives::Linearization;
        use crate::dynamics::synthetic::random_layer;
        let layer = random_layer(4, 1, Kernel::Dot, 0.0, 1).expect("layer");
        let x = faer::Mat::<f64>::from_fn(3, 4, |i, k| (i + k) as f64 * 0.1);
        let lin = Linearization::new(&layer, x.as_ref(), None, false).expect("lin");
        assert!(centre_upper(&lin, 1, 1e-3, 0).is_err());
        for delta in [0.0, 1.0, f64::NAN, -1e-3] {
            assert!(centre_upper(&lin, 10, delta, 0).is_err());
        }
    }
}
