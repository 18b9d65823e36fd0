//! log|det(I + J_g(X))| for a residual block with certified Lip(g) <= c < 1
//! (docs/dynamics.md#d4): exactly from the dense Jacobian (n d JVPs, LU via faer) for small n d,
//! and by the Hutchinson estimator of the truncated series sum_k (-1)^{k+1} tr(J^k) / k for
//! large n d, with a certified truncation bound n d c^{K+1} / ((K + 1)(1 - c)) and an estimated
//! (not certified) statistical error.

use super::branch::Branch;
use crate::derivatives::LinearizedMap;
use crate::error::{check_at_least, check_positive, check_repeats, check_work};
use crate::error::{Error, Result};
use crate::estimation::SplitMix;
use faer::{Mat, MatRef};
use serde::Serialize;

/// Above this dimension n d the dense route is refused (n d JVPs and an (n d)^3 LU).
pub const EXACT_MAX_DIM: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct LogDetExact {
    /// log|det(I + J)|.
    pub logabsdet: f64,
    /// sign of det(I + J) (+1 whenever Lip(g) < 1).
    pub sign: f64,
    pub dim: usize,
}

/// The dense Jacobian of X -> g(X) at X, vec'ed row-major (entry (i, k) at i d + k).
pub fn dense_jacobian<B: Branch>(g: &B, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
    crate::derivatives::dense::dense_jacobian(&g.linearize(x)?)
}

/// log|det(I + J_g(X))| from the LU factorisation of the dense I + J.
pub fn logdet_exact<B: Branch>(g: &B, x: MatRef<'_, f64>) -> Result<LogDetExact> {
    super::certify::check_square(g)?;
    let dim = x.nrows() * x.ncols();
    if dim > EXACT_MAX_DIM {
        return Err(Error::invalid(format!(
            "exact log-determinant refused for n d = {dim} > {EXACT_MAX_DIM}; use the series estimator"
        )));
    }
    let mut a = dense_jacobian(g, x)?;
    for i in 0..dim {
        a[(i, i)] += 1.0;
    }
    let lu = a.partial_piv_lu();
    let u = lu.U();
    let mut logabsdet = 0.0;
    let mut sign = 1.0;
    for i in 0..dim {
        let v = u[(i, i)];
        if v == 0.0 {
            return Ok(LogDetExact {
                logabsdet: f64::NEG_INFINITY,
                sign: 0.0,
                dim,
            });
        }
        logabsdet += v.abs().ln();
        if v < 0.0 {
            sign = -sign;
        }
    }
    let (fwd, _) = lu.P().arrays();
    if permutation_is_odd(fwd) {
        sign = -sign;
    }
    Ok(LogDetExact {
        logabsdet,
        sign,
        dim,
    })
}

fn permutation_is_odd(p: &[usize]) -> bool {
    let mut seen = vec![false; p.len()];
    let mut odd = false;
    for s in 0..p.len() {
        if seen[s] {
            continue;
        }
        let mut len = 0;
        let mut i = s;
        while !seen[i] {
            seen[i] = true;
            i = p[i];
            len += 1;
        }
        if len % 2 == 0 {
            odd = !odd;
        }
    }
    odd
}

#[derive(Clone, Debug, Serialize)]
pub struct LogDetEstimate {
    /// Mean over probes of sum_{k <= K} (-1)^{k+1} v^T J^k v / k.
    pub estimate: f64,
    /// Standard error of the mean over probes (an estimate, not a certificate).
    pub std_error: f64,
    /// Certified: |series truncated at K - log det(I + J)| <= this.
    pub truncation_bound: f64,
    /// Series terms K and probes used.
    pub terms: usize,
    pub probes: usize,
    /// The certified Lip(g) the truncation bound rests on.
    pub lipschitz: f64,
    pub jvps: usize,
}

/// Smallest K with n d c^{K+1} / ((K + 1)(1 - c)) <= tol.
pub fn series_terms(dim: usize, c: f64, tol: f64) -> usize {
    let mut k = 1usize;
    while truncation_bound(dim, c, k) > tol && k < 100_000 {
        k += 1;
    }
    k
}

/// n d c^{K+1} / ((K + 1)(1 - c)).
pub fn truncation_bound(dim: usize, c: f64, terms: usize) -> f64 {
    dim as f64 * c.powi(terms as i32 + 1) / ((terms as f64 + 1.0) * (1.0 - c))
}

/// Hutchinson power-series estimate with Rademacher probes. `lipschitz` must be a certified
/// bound on |J_g(X)|_2 (a Frobenius Lipschitz constant of g on a neighbourhood of X), below 1;
/// `truncation_tol` fixes K.
pub fn logdet_series<B: Branch>(
    g: &B,
    x: MatRef<'_, f64>,
    lipschitz: f64,
    truncation_tol: f64,
    probes: usize,
    seed: u64,
) -> Result<LogDetEstimate> {
    super::certify::check_square(g)?;
    super::check_contraction_target("the Lipschitz constant of g", lipschitz)?;
    check_positive("truncation tolerance", truncation_tol)?;
    // Two probes at least: one gives no standard error.
    check_at_least("probes", probes, 2)?;
    check_repeats("`probes`", probes)?;
    let (n, d) = (x.nrows(), x.ncols());
    let dim = n * d;
    let terms = series_terms(dim, lipschitz, truncation_tol);
    check_work(&[
        ("`probes`", probes),
        ("the series terms `truncation_tol` asks for", terms),
    ])?;
    let lin = g.linearize(x)?;
    let mut rng = SplitMix::new(seed);
    let mut samples = Vec::with_capacity(probes);
    let mut jvps = 0;
    for _ in 0..probes {
        crate::cancel::check()?;
        let v = Mat::<f64>::from_fn(
            n,
            d,
            |_, _| {
                if rng.next_u64() & 1 == 0 {
                    1.0
                } else {
                    -1.0
                }
            },
        );
        let mut w = v.clone();
        let mut acc = 0.0;
        for k in 1..=terms {
            w = lin.jvp(w.as_ref())?;
            jvps += 1;
            let mut vw = 0.0;
            for j in 0..d {
                for i in 0..n {
                    vw += v[(i, j)] * w[(i, j)];
                }
            }
            let sgn = if k % 2 == 1 { 1.0 } else { -1.0 };
            acc += sgn * vw / k as f64;
        }
        samples.push(acc);
    }
    let mean = samples.iter().sum::<f64>() / probes as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (probes as f64 - 1.0);
    Ok(LogDetEstimate {
        estimate: mean,
        std_error: (var / probes as f64).sqrt(),
        truncation_bound: truncation_bound(dim, lipschitz, terms),
        terms,
        probes,
        lipschitz,
        jvps,
    })
}
