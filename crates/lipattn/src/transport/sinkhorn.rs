//! Entropic transport, `min <P, C> - eps H(P)` over couplings of `a` and `b`, by Sinkhorn's
//! alternating projections in the log domain (stable for small `eps`, where the kernel
//! `exp(-C / eps)` underflows). The plan is `P_ij = exp((f_i + g_j - C_ij) / eps)`.

use super::{check_masses, check_p, ground_cost, CostMatrix};
use crate::error::{check_at_least, check_positive, Error, Result};
use crate::measure::Measure;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct SinkhornOptions {
    /// Entropic regularisation, in the units of the cost (as POT's `reg`).
    pub eps: f64,
    /// Stop when the L1 error of the row marginal (the column marginal is exact after each
    /// sweep) is at most `tol`.
    pub tol: f64,
    pub max_iter: usize,
}

impl Default for SinkhornOptions {
    fn default() -> Self {
        Self {
            eps: 0.05,
            tol: 1e-9,
            max_iter: 10_000,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Entropic {
    /// `<P, C>` of the entropic plan (what POT's `ot.sinkhorn2` returns).
    pub cost: f64,
    /// `cost^(1/p)`; for a user cost matrix, the cost itself.
    pub distance: f64,
    pub p: Option<f64>,
    pub eps: f64,
    /// Dual potentials; `P_ij = exp((f_i + g_j - C_ij) / eps)`.
    pub f: Vec<f64>,
    pub g: Vec<f64>,
    /// L1 error of the row marginal at the last iterate.
    pub marginal_error: f64,
    pub iterations: usize,
    pub converged: bool,
    pub seconds: f64,
}

/// Entropic transport between two measures for the cost `||x - y||^p`, p in {1, 2}.
pub fn sinkhorn(a: &Measure, b: &Measure, p: u32, opts: &SinkhornOptions) -> Result<Entropic> {
    let start = Instant::now();
    check_p(p)?;
    check_options(opts)?;
    let cost = ground_cost(a, b, p)?;
    let mut e = sinkhorn_with_cost(a.weights(), b.weights(), &cost, opts)?;
    e.p = Some(p as f64);
    e.distance = if p == 1 {
        e.cost
    } else {
        e.cost.max(0.0).sqrt()
    };
    e.seconds = start.elapsed().as_secs_f64();
    Ok(e)
}

fn check_options(opts: &SinkhornOptions) -> Result<()> {
    check_positive("sinkhorn: eps", opts.eps)?;
    check_positive("sinkhorn: tol", opts.tol)?;
    check_at_least("sinkhorn: max_iter", opts.max_iter, 1)?;
    Ok(())
}

/// `-eps log sum_k exp((w_k - c_k) / eps)`, stabilised by the maximum.
#[inline]
fn soft_min(w: &[f64], c: &[f64], eps: f64) -> f64 {
    let inv = 1.0 / eps;
    let mx = w
        .iter()
        .zip(c)
        .fold(f64::NEG_INFINITY, |acc, (&s, &t)| acc.max((s - t) * inv));
    let s: f64 = w
        .iter()
        .zip(c)
        .map(|(&s, &t)| ((s - t) * inv - mx).exp())
        .sum();
    -eps * (mx + s.ln())
}

/// Entropic transport for a cost matrix; weights strictly positive with equal totals.
pub fn sinkhorn_with_cost(
    wa: &[f64],
    wb: &[f64],
    cost: &CostMatrix,
    opts: &SinkhornOptions,
) -> Result<Entropic> {
    let start = Instant::now();
    check_options(opts)?;
    let (n, m) = (cost.nrows(), cost.ncols());
    check_masses(wa, wb, n, m)?;
    if let Some(i) = wa.iter().chain(wb).position(|&w| w == 0.0) {
        return Err(Error::invalid(format!(
            "sinkhorn: weight {i} (counting source then target atoms) is zero; entropic transport needs positive weights (drop empty atoms)"
        )));
    }
    let eps = opts.eps;
    let c = cost.as_slice();
    if let Some(Iterate {
        f,
        g,
        err,
        iterations,
        converged,
    }) = kernel_sinkhorn(wa, wb, cost, opts)
    {
        return finish(c, wa, n, m, f, g, err, iterations, converged, eps, start);
    }
    let ct = cost.transposed();
    let ct = ct.as_slice();
    let la: Vec<f64> = wa.iter().map(|w| eps * w.ln()).collect();
    let lb: Vec<f64> = wb.iter().map(|w| eps * w.ln()).collect();
    let mut f = vec![0.0; n];
    let mut g = vec![0.0; m];
    let mut err = f64::INFINITY;
    let mut iterations = 0;
    let mut converged = false;
    // Below this size a sweep takes microseconds and thread hand-off would dominate.
    let parallel = n * m >= 1 << 16;
    while iterations < opts.max_iter {
        crate::cancel::check()?;
        // f-update; the row marginal of the previous iterate comes for free from the same soft-min.
        let row_update = |i: usize| {
            let sm = soft_min(&g, &c[i * m..(i + 1) * m], eps);
            let mass = ((f[i] - sm) / eps).exp();
            (la[i] + sm, (mass - wa[i]).abs())
        };
        let row: Vec<(f64, f64)> = if parallel {
            (0..n).into_par_iter().map(row_update).collect()
        } else {
            (0..n).map(row_update).collect()
        };
        if iterations > 0 {
            err = row.iter().map(|r| r.1).sum();
            if err <= opts.tol {
                converged = true;
                break;
            }
        }
        f.iter_mut().zip(&row).for_each(|(fi, r)| *fi = r.0);
        let col_update = |j: usize| lb[j] + soft_min(&f, &ct[j * n..(j + 1) * n], eps);
        if parallel {
            g.par_iter_mut()
                .enumerate()
                .for_each(|(j, gj)| *gj = col_update(j));
        } else {
            g.iter_mut()
                .enumerate()
                .for_each(|(j, gj)| *gj = col_update(j));
        }
        iterations += 1;
    }
    finish(c, wa, n, m, f, g, err, iterations, converged, eps, start)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    c: &[f64],
    wa: &[f64],
    n: usize,
    m: usize,
    f: Vec<f64>,
    g: Vec<f64>,
    err: f64,
    iterations: usize,
    converged: bool,
    eps: f64,
    start: Instant,
) -> Result<Entropic> {
    let total: f64 = (0..n)
        .into_par_iter()
        .map(|i| {
            let r = &c[i * m..(i + 1) * m];
            super::certificate::compensated_sum(
                r.iter()
                    .zip(&g)
                    .map(|(&cij, &gj)| ((f[i] + gj - cij) / eps).exp() * cij),
            )
        })
        .collect::<Vec<f64>>()
        .into_iter()
        .sum();
    if !total.is_finite() {
        return Err(Error::Numerical(format!(
            "sinkhorn: cost is {} (eps = {} too small for this cost scale?)",
            crate::fmt::compact(total),
            crate::fmt::exact(eps)
        )));
    }
    // The loop measures the row error one half-sweep behind (and not at all after a single
    // sweep); a run that stopped on `max_iter` reports the error of the plan it returns.
    let err = if converged {
        err
    } else {
        (0..n)
            .map(|i| {
                let r = &c[i * m..(i + 1) * m];
                let mass: f64 = r
                    .iter()
                    .zip(&g)
                    .map(|(&cij, &gj)| ((f[i] + gj - cij) / eps).exp())
                    .sum();
                (mass - wa[i]).abs()
            })
            .sum()
    };
    Ok(Entropic {
        cost: total,
        distance: total,
        p: None,
        eps,
        f,
        g,
        marginal_error: err,
        iterations,
        converged,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Potentials and convergence state handed from an iteration to [`finish`].
struct Iterate {
    f: Vec<f64>,
    g: Vec<f64>,
    err: f64,
    iterations: usize,
    converged: bool,
}

/// Largest cost spread, in units of eps, for which the scaling (kernel) iteration is used: the
/// shifted kernel `exp(-(C - min C) / eps)` then stays above 1e-261, far from underflow.
const KERNEL_SPREAD: f64 = 600.0;

/// The classical scaling form `u = a / (K v)`, `v = b / (K^T u)`: two matrix-vector products per
/// sweep instead of `2 n m` exponentials, and the same iterates as the log domain
/// (`f = eps ln u + min C`, `g = eps ln v`). Returns `None` (caller falls back to the log domain)
/// when the spread is too large or a scaling leaves the floating-point range.
fn kernel_sinkhorn(
    wa: &[f64],
    wb: &[f64],
    cost: &CostMatrix,
    opts: &SinkhornOptions,
) -> Option<Iterate> {
    let (n, m, eps) = (cost.nrows(), cost.ncols(), opts.eps);
    let c = cost.as_slice();
    let cmin = c.iter().copied().fold(f64::INFINITY, f64::min);
    let cmax = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (cmax - cmin) / eps > KERNEL_SPREAD {
        return None;
    }
    let k: Vec<f64> = c.iter().map(|&x| (-(x - cmin) / eps).exp()).collect();
    let parallel = n * m >= 1 << 16;
    let (mut u, mut v) = (vec![1.0; n], vec![1.0; m]);
    let mut kv = vec![0.0; n];
    let mut ktu = vec![0.0; m];
    let (mut err, mut iterations, mut converged) = (f64::INFINITY, 0, false);
    let ok = |x: &[f64]| x.iter().all(|&t| t.is_finite() && t > 0.0);
    while iterations < opts.max_iter {
        // Abandoned (Ctrl-C in Python): the log-domain fallback reports the cancellation.
        if crate::cancel::check().is_err() {
            return None;
        }
        let dot = |i: usize| {
            k[i * m..(i + 1) * m]
                .iter()
                .zip(&v)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        if parallel {
            kv.par_iter_mut().enumerate().for_each(|(i, x)| *x = dot(i));
        } else {
            kv.iter_mut().enumerate().for_each(|(i, x)| *x = dot(i));
        }
        if iterations > 0 {
            err = kv
                .iter()
                .zip(&u)
                .zip(wa)
                .map(|((s, t), w)| (s * t - w).abs())
                .sum();
            if err <= opts.tol {
                converged = true;
                break;
            }
        }
        u.iter_mut()
            .zip(&kv)
            .zip(wa)
            .for_each(|((x, s), w)| *x = w / s);
        ktu.iter_mut().for_each(|x| *x = 0.0);
        for (i, &ui) in u.iter().enumerate() {
            ktu.iter_mut()
                .zip(&k[i * m..(i + 1) * m])
                .for_each(|(x, kij)| *x += ui * kij);
        }
        v.iter_mut()
            .zip(&ktu)
            .zip(wb)
            .for_each(|((x, s), w)| *x = w / s);
        if !(ok(&u) && ok(&v)) {
            return None;
        }
        iterations += 1;
    }
    let f = u.iter().map(|x| eps * x.ln() + cmin).collect();
    let g = v.iter().map(|x| eps * x.ln()).collect();
    Some(Iterate {
        f,
        g,
        err,
        iterations,
        converged,
    })
}
