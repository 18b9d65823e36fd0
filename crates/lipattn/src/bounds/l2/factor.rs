//! B5's hypothesis for one head: the value map written as W_V = U W_Q + E, with E = 0 proven
//! exactly or bounded in norm (docs/bounds.md#exact-factorisation).

use crate::error::Result;
use crate::linalg::exact::product_is_exactly;
use crate::linalg::rounding::{add_up, frob_up, mul_up, product_with_error, UNIT_ROUNDOFF};
use faer::{Mat, MatRef};

/// W_V = U W_Q + E for one head, E the exact real remainder for the stored U.
#[derive(Clone, Debug)]
pub struct ValueSplit {
    pub u: Mat<f64>,
    /// An upper bound of ||E||_2, E = W_V - U W_Q in exact arithmetic; 0 only when E = 0 is
    /// proven (`exact`).
    pub residual: f64,
    /// W_V = U W_Q holds exactly for the stored numbers.
    pub exact: bool,
}

/// Splits W_V through W_Q. U is the least-squares factor W_V Q R^{-T} (thin QR of W_Q^T), or 0
/// where W_Q is numerically rank deficient; then, because a U computed in floating point almost
/// never satisfies W_V = U W_Q exactly even when some U does, the same U rounded to each grid
/// 2^-q of its range is tried too (a layer built as W_V = U W_Q with short dyadic U, as Kim et
/// al.'s parametrisation and lipattn's random layers are, is recovered this way). Exactness is
/// proven by [`product_is_exactly`]; anything else gets the bound of E for the unrounded U.
pub fn split_value_map(wq: MatRef<'_, f64>, wv: MatRef<'_, f64>) -> Result<ValueSplit> {
    let u = least_squares_factor(wq, wv);
    if product_is_exactly(u.as_ref(), wq, wv) {
        return Ok(ValueSplit {
            u,
            residual: 0.0,
            exact: true,
        });
    }
    let top = u
        .col_iter()
        .flat_map(|c| c.iter().copied())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    if top > 0.0 && top.is_finite() {
        let e = top.log2().floor() as i32;
        for bits in 0..53 {
            let step = 2f64.powi(e - bits);
            if step == 0.0 || !step.is_finite() {
                break;
            }
            let cand = Mat::from_fn(u.nrows(), u.ncols(), |i, j| {
                (u[(i, j)] / step).round() * step
            });
            if product_is_exactly(cand.as_ref(), wq, wv) {
                return Ok(ValueSplit {
                    u: cand,
                    residual: 0.0,
                    exact: true,
                });
            }
        }
    }
    let residual = residual_bound(u.as_ref(), wq, wv);
    Ok(ValueSplit {
        u,
        residual,
        exact: false,
    })
}

/// An upper bound of ||W_V - U W_Q||_2 (exact arithmetic): with P = fl(U W_Q), whose error is
/// bounded by Lemma F1, and E' = fl(W_V - P), |(W_V - P) - E'| <= u |W_V - P| <= 2u |E'|
/// entrywise, so ||E||_2 <= ||E||_F <= ||E'||_F (1 + 2u) + ||P - U W_Q||_F.
fn residual_bound(u: MatRef<'_, f64>, wq: MatRef<'_, f64>, wv: MatRef<'_, f64>) -> f64 {
    let (p, err) = product_with_error(&[u, wq]);
    let e = wv - &p;
    add_up(
        mul_up(frob_up(e.as_ref()), add_up(1.0, 2.0 * UNIT_ROUNDOFF)),
        err,
    )
}

/// W_V Q R^{-T} from the thin QR W_Q^T = Q R (so that W_Q = R^T Q^T and U W_Q = W_V Q Q^T, the
/// projection of W_V's rows on the row space of W_Q); 0 when R has a (numerically) zero pivot or
/// the result is not finite, in which case the whole value map is the remainder.
fn least_squares_factor(wq: MatRef<'_, f64>, wv: MatRef<'_, f64>) -> Mat<f64> {
    let zero = || Mat::<f64>::zeros(wv.nrows(), wq.nrows());
    if wq.nrows() > wq.ncols() {
        // W_Q^T has more columns than rows: no thin QR with an invertible R.
        return zero();
    }
    let qr = wq.transpose().to_owned().qr();
    let q = qr.compute_thin_Q();
    let r = qr.thin_R().to_owned();
    let k = r.nrows();
    let scale = (0..k).fold(0.0f64, |m, i| m.max(r[(i, i)].abs()));
    if scale.is_nan() || scale <= 0.0 || (0..k).any(|i| r[(i, i)].abs() <= 1e-14 * scale) {
        return zero();
    }
    // U R^T = W_V Q row by row: (R^T)_{ji} = R_{ij} is zero for j < i, so back substitution.
    let wv_q = wv * &q;
    let mut x = Mat::<f64>::zeros(wv.nrows(), k);
    for row in 0..wv.nrows() {
        for i in (0..k).rev() {
            let mut s = wv_q[(row, i)];
            for j in i + 1..k {
                s -= x[(row, j)] * r[(i, j)];
            }
            x[(row, i)] = s / r[(i, i)];
        }
    }
    if x.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
        x
    } else {
        zero()
    }
}
