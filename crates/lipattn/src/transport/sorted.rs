//! Exact transport on the line: for a convex cost `h(x - y) = |x - y|^p`, p >= 1, the cost matrix
//! of sorted atoms is Monge, so the monotone (north-west corner) coupling of the sorted atoms is
//! optimal, and the potentials of its staircase basis are dual feasible. `O((n + m) log(n + m))`.

use super::certificate::{certify, marginal_error};
use super::Transport;
use crate::error::{Error, Result};
use crate::measure::Measure;
use std::time::Instant;

/// Above this many pairs the all-pairs dual feasibility check is skipped (infeasibility = NaN);
/// the gap and marginals are still certified.
pub const SORTED_CHECK_PAIRS: usize = 50_000_000;

/// Exact `W_p` between two measures on the real line (d = 1), any real `p >= 1`.
pub fn sorted_1d(a: &Measure, b: &Measure, p: f64) -> Result<Transport> {
    let start = Instant::now();
    if !(p.is_finite() && p >= 1.0) {
        return Err(Error::invalid(format!(
            "sorted 1-D transport needs a finite exponent p >= 1 (the cost must be convex), got p = {}",
            crate::fmt::exact(p)
        )));
    }
    if a.dim() != 1 || b.dim() != 1 {
        return Err(Error::shape(
            "sorted 1-D transport (points)",
            "d = 1 for both measures",
            format!("d = {} and d = {}", a.dim(), b.dim()),
        ));
    }
    let x: Vec<f64> = (0..a.len()).map(|i| a.points()[(i, 0)]).collect();
    let y: Vec<f64> = (0..b.len()).map(|j| b.points()[(j, 0)]).collect();
    let (wa, wb) = (a.weights(), b.weights());
    let c = |s: f64, t: f64| {
        if p == 1.0 {
            (s - t).abs()
        } else {
            (s - t).abs().powf(p)
        }
    };

    let mut ia: Vec<usize> = (0..x.len()).collect();
    let mut ib: Vec<usize> = (0..y.len()).collect();
    ia.sort_by(|&s, &t| x[s].total_cmp(&x[t]));
    ib.sort_by(|&s, &t| y[s].total_cmp(&y[t]));
    // Coupling by quantiles: cell (i, j) gets the overlap of the i-th and j-th CDF steps. Working
    // with cumulative sums keeps every entry accurate to one rounding of the CDFs.
    let cum = |w: &[f64], idx: &[usize]| {
        let mut s = 0.0;
        idx.iter()
            .map(|&k| {
                s += w[k];
                s
            })
            .collect::<Vec<f64>>()
    };
    let (mut ca, mut cb) = (cum(wa, &ia), cum(wb, &ib));
    // Both CDFs must end at the same level, or the last atoms keep an unmatched sliver.
    let total = 0.5 * (ca[ca.len() - 1] + cb[cb.len() - 1]);
    *ca.last_mut().expect("nonempty") = total;
    *cb.last_mut().expect("nonempty") = total;

    let (n, m) = (x.len(), y.len());
    let mut plan = Vec::with_capacity(n + m);
    let mut u = vec![f64::NAN; n];
    let mut v = vec![f64::NAN; m];
    let (mut i, mut j, mut level) = (0usize, 0usize, 0.0f64);
    // The staircase visits n + m - 1 cells; each new cell brings one new row or column, whose
    // potential follows from C_ij = u_i + v_j (complementary slackness on the basis).
    u[ia[0]] = 0.0;
    v[ib[0]] = c(x[ia[0]], y[ib[0]]);
    loop {
        let (si, sj) = (ia[i], ib[j]);
        let next = ca[i].min(cb[j]);
        if next > level {
            plan.push((si, sj, next - level));
            level = next;
        }
        let (adv_i, adv_j) = (ca[i] <= next && i + 1 < n, cb[j] <= next && j + 1 < m);
        if adv_i {
            i += 1;
            u[ia[i]] = c(x[ia[i]], y[sj]) - v[sj];
        } else if adv_j {
            j += 1;
            v[ib[j]] = c(x[si], y[ib[j]]) - u[si];
        } else {
            break;
        }
        // On a tie both advance; doing it as two steps through the degenerate cell (i + 1, j)
        // keeps the basis a spanning tree.
    }
    plan.sort_unstable_by_key(|&(i, j, _)| (i, j));
    let costf = |i: usize, j: usize| c(x[i], y[j]);
    let (gap, relative_gap, infeasibility, primal, me);
    if n.saturating_mul(m) <= SORTED_CHECK_PAIRS {
        let cert = certify(wa, wb, &plan, &u, &v, costf);
        (gap, relative_gap, infeasibility, primal, me) = (
            cert.gap,
            cert.relative_gap,
            cert.infeasibility,
            cert.primal,
            cert.marginal_error,
        );
    } else {
        // Same quantities without the all-pairs pass.
        let cert = certify(wa, wb, &plan, &u[..0], &v[..0], costf);
        let dual = super::certificate::compensated_sum(
            wa.iter()
                .zip(&u)
                .map(|(w, s)| w * s)
                .chain(wb.iter().zip(&v).map(|(w, t)| w * t)),
        );
        primal = cert.primal;
        gap = primal - dual;
        let denom = primal.abs().max(dual.abs());
        relative_gap = if denom > 0.0 {
            gap.abs() / denom
        } else {
            gap.abs()
        };
        infeasibility = f64::NAN;
        me = marginal_error(wa, wb, &plan);
    }
    Ok(Transport {
        cost: primal,
        distance: primal.max(0.0).powf(1.0 / p),
        p: Some(p),
        plan,
        u,
        v,
        gap,
        relative_gap,
        infeasibility,
        marginal_error: me,
        iterations: 0,
        seconds: start.elapsed().as_secs_f64(),
    })
}
