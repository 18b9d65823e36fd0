//! The scalar constants of B5 (docs/bounds.md#b5-tied-l2-attention): Lemmas K1 and K2 and the
//! Lipschitz constant of the unit L2 map, and Kim et al.'s stated bounds for comparison.

use crate::linalg::rounding::{add_up, down, exp_down, exp_up, mul_up, sqrt_up};

/// The principal branch W0 of the Lambert function on [0, inf): w e^w = x.
pub fn lambert_w0(x: f64) -> f64 {
    assert!(x >= 0.0 && x.is_finite());
    if x == 0.0 {
        return 0.0;
    }
    let mut w = if x < 1.0 {
        x / (1.0 + x)
    } else {
        x.ln() - x.ln().max(1e-300).ln().max(0.0)
    };
    w = w.max(1e-300);
    for _ in 0..100 {
        // Halley's iteration.
        let ew = w.exp();
        let f = w * ew - x;
        let wn = w - f / (ew * (w + 1.0) - (w + 2.0) * f / (2.0 * w + 2.0));
        if (wn - w).abs() <= 1e-15 * wn.abs().max(1e-300) {
            return wn;
        }
        w = wn;
    }
    w
}

/// Lemma K1 of docs/bounds.md: with t_j >= 0, t_i = 0 and P_ij proportional to w_j e^{-t_j},
/// sum_j P_ij t_j <= W0(rho / e), rho = (1 - w_i) / w_i <= (1 - w_min) / w_min. Returns a lambda
/// with lambda e^lambda >= rho / e verified in outward-rounded arithmetic (so lambda >= W0(rho / e),
/// which is all Lemma K1 needs): Halley's value, raised until the check passes.
pub fn first_moment_bound(rho: f64) -> f64 {
    let target = mul_up(rho, exp_up(-1.0)); // >= rho / e
    let mut w = lambert_w0(rho / std::f64::consts::E);
    while down(w * exp_down(w)) < target {
        w = w.max(f64::MIN_POSITIVE) * (1.0 + 1.0 / 1_099_511_627_776.0); // 1 + 2^-40
    }
    w
}

/// Lemma K2: sum_j P_ij t_j^2 <= the least lambda with rho 2 t* e^{-t*} <= lambda,
/// t* = 1 + sqrt(1 + lambda); found by bisection and returned from the feasible side, with
/// feasibility checked in outward-rounded arithmetic: t e^{-t} decreases for t > 1, so it is
/// bounded above at a lower bound t_lo > 1 of t*.
pub fn second_moment_bound(rho: f64) -> f64 {
    let feasible = |l: f64| {
        let t_lo = down(1.0 + down(down(1.0 + l).sqrt()));
        mul_up(mul_up(mul_up(rho, 2.0), t_lo), exp_up(-t_lo)) <= l
    };
    let mut hi = 1.0;
    while !feasible(hi) {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if feasible(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Lip of Z -> (sum_j P_ij z_j)_i with P_ij = softmax_j(-|z_i - z_j|^2 + log w_j), Frobenius norm:
/// 2 m2 + sqrt(colsum) K with K^2 = 1 + 4 m4 + (4 m2 + 4) m2 + 4 sqrt(m2) m1 + 8 sqrt(m2) m3,
/// rounded upward.
pub fn unit_l2_lipschitz(rho: f64, colsum: f64) -> f64 {
    let m2 = first_moment_bound(rho);
    let m4 = second_moment_bound(rho);
    let r2 = sqrt_up(m2);
    let m1 = r2;
    let m3 = sqrt_up(mul_up(m2, m4));
    let k2 = [
        1.0,
        mul_up(4.0, m4),
        mul_up(add_up(mul_up(4.0, m2), 4.0), m2),
        mul_up(mul_up(4.0, r2), m1),
        mul_up(mul_up(8.0, r2), m3),
    ]
    .into_iter()
    .fold(0.0, add_up);
    add_up(mul_up(2.0, m2), mul_up(sqrt_up(colsum), sqrt_up(k2)))
}

/// Kim et al.'s stated bounds for N tokens, D / H = dh and the given weight norms (anchor, not
/// re-derived here): (Lip_inf, Lip_2), with D = H = 1 and unit weights giving the table of
/// docs/background.md#kim-et-al.
pub fn kim_bounds(n: usize, dh: f64, w_inf_product: f64, w2_product: f64) -> (f64, f64) {
    let w = lambert_w0((n as f64 - 1.0) / std::f64::consts::E);
    let lip_inf = (4.0 * w + 1.0 / dh.sqrt()) * w_inf_product;
    let lip_2 = (n as f64).sqrt() / dh.sqrt() * (4.0 * w + 1.0) * w2_product;
    (lip_inf, lip_2)
}
