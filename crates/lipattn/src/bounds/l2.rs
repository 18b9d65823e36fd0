//! B5: tied L2 attention (Kim, Papamakarios, Mnih 2021), re-derived in docs/bounds.md#b5.
//! Holds on all of R^{n x d} (no radius), for heads whose value map factors through the query
//! projection, W_V^h = U_h W_Q^h (Kim et al.'s parametrisation; without it L2 attention with a
//! free value map is not globally Lipschitz).

use super::constants::spectral_norm;
use super::{Bound, Metric};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, down, exp_down, exp_up, hypot_up, mul_up, product_norm_up, spectral_up, sqrt_up,
};
use faer::Mat;

/// Largest relative residual |W_V - U W_Q| / |W_V| accepted as "W_V factors through W_Q".
pub const FACTOR_TOL: f64 = 1e-12;

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

/// U with W_V^h = U W_Q^h, or None if W_V^h has a component outside the row space of W_Q^h.
/// With W_Q^T = Q R (thin QR), W_Q = R^T Q^T, so U = W_V Q R^{-T}.
fn value_factor(wq: faer::MatRef<'_, f64>, wv: faer::MatRef<'_, f64>) -> Result<Option<Mat<f64>>> {
    let qr = wq.transpose().to_owned().qr();
    let q = qr.compute_thin_Q();
    let wv_q = wv * &q;
    let resid = wv - &wv_q * q.transpose();
    let scale = spectral_norm(wv)?.max(1e-300);
    if spectral_norm(resid.as_ref())? > FACTOR_TOL * scale {
        return Ok(None);
    }
    let r = qr.thin_R().to_owned();
    Ok(Some(&wv_q * invert_upper_t(&r)?))
}

/// B5 for a tied L2 layer on sequences of n tokens with uniform weights (causal or not), in the
/// Frobenius norm, on all of R^{n x d}; None (with the reason) when a head's value map does not
/// factor through its query projection.
pub fn l2_bounds(layer: &AttentionLayer<f64>, n: usize) -> Result<(Option<Bound>, Option<String>)> {
    if layer.kernel != Kernel::L2 {
        return Err(Error::invalid("B5 applies to the tied L2 kernel only"));
    }
    crate::domain::check_len(n)?;
    let (dk, dv) = (layer.dk, layer.dv);
    let rho = (n - 1) as f64;
    let unit = unit_l2_lipschitz(rho, n as f64);
    // Every norm is a proven upper bound and every operation is rounded upward
    // (docs/bounds.md#floating-point).
    let wo = spectral_up(layer.wo.as_ref())?;
    let mut sum = 0.0;
    let mut cat = Vec::with_capacity(layer.heads);
    for h in 0..layer.heads {
        let wq = layer.wq.as_ref().subrows(h * dk, dk);
        let wv = layer.wv.as_ref().subrows(h * dv, dv);
        let wo_h = layer.wo.as_ref().subcols(h * dv, dv);
        let Some(u) = value_factor(wq, wv)? else {
            return Ok((
                None,
                Some(format!(
                    "head {h}: W_V has a component outside the row space of W_Q (relative residual above {FACTOR_TOL:e}); B5 needs W_V = U W_Q"
                )),
            ));
        };
        // With t = score_divisor_sq (dk by default) and z = W_Q x / t^{1/4} the scores are
        // -|z_i - z_j|^2 and the head is x -> W_O^h U t^{1/4} sum_j P_ij z_j, so
        // Lip <= |W_O^h U| |W_Q| Lip(unit map) whatever t is.
        let wq_norm = spectral_up(wq)?;
        let ou = product_norm_up(&[wo_h, u.as_ref()])?;
        let vu = spectral_up(u.as_ref())?;
        sum = add_up(sum, mul_up(mul_up(ou, wq_norm), unit));
        cat.push(mul_up(mul_up(vu, wq_norm), unit));
    }
    let best = sum.min(mul_up(wo, hypot_up(cat)));
    Ok((
        Some(Bound {
            name: "B5".into(),
            metric: Metric::Frobenius,
            value: best,
            certified: true,
            source: "docs/bounds.md#b5-tied-l2-attention".into(),
        }),
        None,
    ))
}

/// (R^T)^{-1} for an upper-triangular R with nonzero diagonal.
fn invert_upper_t(r: &Mat<f64>) -> Result<Mat<f64>> {
    let k = r.nrows();
    for i in 0..k {
        if r[(i, i)].abs() <= 1e-300 {
            return Err(Error::Numerical(
                "W_Q of a head is rank deficient; B5 needs it of full row rank".into(),
            ));
        }
    }
    // Solve R^T X = I by forward substitution (R^T is lower triangular).
    let mut x = Mat::<f64>::zeros(k, k);
    for col in 0..k {
        for i in 0..k {
            let mut s = if i == col { 1.0 } else { 0.0 };
            for j in 0..i {
                s -= r[(j, i)] * x[(j, col)];
            }
            x[(i, col)] = s / r[(i, i)];
        }
    }
    Ok(x)
}
