//! Optimality certificate of a transport plan, recomputed from the plan, the potentials and the
//! cost alone. Weak duality: for any dual-feasible `(u, v)` (`u_i + v_j <= C_ij` for all pairs)
//! the dual value `sum a_i u_i + sum b_j v_j` is a lower bound on every plan's cost, so a plan
//! that meets its marginals with `cost - dual <= gap` is optimal to within `gap`; an infeasibility
//! `eps` weakens the bound by at most `eps` times the total mass.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Certificate {
    /// `sum pi_ij C_ij`.
    pub primal: f64,
    /// `sum a_i u_i + sum b_j v_j`.
    pub dual: f64,
    /// `primal - dual`; nonnegative up to rounding when the potentials are feasible.
    pub gap: f64,
    /// `|gap| / max(|primal|, |dual|)`, 0 when both vanish.
    pub relative_gap: f64,
    /// `max_ij max(u_i + v_j - C_ij, 0)` over all pairs.
    pub infeasibility: f64,
    /// Largest `|row_i - a_i|` or `|col_j - b_j|`, and a negative plan entry's magnitude if any.
    pub marginal_error: f64,
}

/// Neumaier-compensated sum: cost and dual are sums of up to `n + m` terms of both signs whose
/// difference is the quantity certified, so plain summation error would pollute the gap.
pub(crate) fn compensated_sum(terms: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in terms {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

/// Certifies `plan` against potentials `(u, v)` for the cost `cost(i, j)` (evaluated on all
/// `n m` pairs for the infeasibility).
pub fn certify(
    a: &[f64],
    b: &[f64],
    plan: &[(usize, usize, f64)],
    u: &[f64],
    v: &[f64],
    cost: impl Fn(usize, usize) -> f64,
) -> Certificate {
    let primal = compensated_sum(plan.iter().map(|&(i, j, f)| f * cost(i, j)));
    let dual = compensated_sum(
        a.iter()
            .zip(u)
            .map(|(w, x)| w * x)
            .chain(b.iter().zip(v).map(|(w, y)| w * y)),
    );
    let mut infeasibility = 0.0f64;
    for (i, &ui) in u.iter().enumerate() {
        for (j, &vj) in v.iter().enumerate() {
            infeasibility = infeasibility.max(ui + vj - cost(i, j));
        }
    }
    let marginal_error = marginal_error(a, b, plan);
    let gap = primal - dual;
    let denom = primal.abs().max(dual.abs());
    let relative_gap = if denom > 0.0 {
        gap.abs() / denom
    } else {
        gap.abs()
    };
    Certificate {
        primal,
        dual,
        gap,
        relative_gap,
        infeasibility,
        marginal_error,
    }
}

/// Largest marginal violation of a sparse plan (negative entries count as violations).
pub fn marginal_error(a: &[f64], b: &[f64], plan: &[(usize, usize, f64)]) -> f64 {
    let mut rows = vec![Vec::new(); a.len()];
    let mut cols = vec![Vec::new(); b.len()];
    let mut worst = 0.0f64;
    for &(i, j, f) in plan {
        rows[i].push(f);
        cols[j].push(f);
        worst = worst.max(-f);
    }
    for (w, r) in a.iter().zip(rows).chain(b.iter().zip(cols)) {
        worst = worst.max((compensated_sum(r) - w).abs());
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_infeasible_potentials_and_bad_marginals() {
        let a = [0.5, 0.5];
        let b = [0.5, 0.5];
        let c = |i: usize, j: usize| if i == j { 0.0 } else { 1.0 };
        let plan = [(0, 0, 0.5), (1, 1, 0.5)];
        let ok = certify(&a, &b, &plan, &[0.0, 0.0], &[0.0, 0.0], c);
        assert_eq!(
            (ok.primal, ok.gap, ok.infeasibility, ok.marginal_error),
            (0.0, 0.0, 0.0, 0.0)
        );
        let bad = certify(&a, &b, &plan, &[1.0, 0.0], &[0.0, 0.0], c);
        assert_eq!(bad.infeasibility, 1.0);
        assert_eq!(bad.gap, -0.5);
        let short = certify(&a, &b, &plan[..1], &[0.0, 0.0], &[0.0, 0.0], c);
        assert_eq!(short.marginal_error, 0.5);
    }

    #[test]
    fn compensated_sum_cancels() {
        assert_eq!(compensated_sum([1e16, 1.0, -1e16]), 1.0);
    }
}
