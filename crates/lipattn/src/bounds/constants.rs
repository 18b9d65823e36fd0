//! The matrix constants the certified bounds are made of, per head, computed in small
//! subspaces (never a d x d matrix): a = ||A||_2 with A = W_Q^T W_K / sqrt(dk), ||c|| with
//! c = W_K^T b_Q / sqrt(dk), m = ||W_O^h W_V^h||_2, and an upper bound on
//! sup_{|u| = 1} |M u| |A u| (the term that multiplies R^2). Each is a proven upper bound of
//! the exact value for the exact (f64) weights, rounding included (docs/bounds.md#floating-point,
//! `linalg::rounding`).

use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_index, Error, Result};
use crate::linalg::rounding::{
    add_up, frob_up, gamma, inv_sqrt_up, lambda_max_up, mul_up, product_frob_up,
    product_with_error, spectral_up, sqrt_up, ETA, UNIT_ROUNDOFF,
};
use faer::{Mat, MatRef, Side};
use serde::Serialize;

/// Constants of one head h of a layer, with its value map taken as M = W_O^h W_V^h (the head's
/// contribution to the layer output) or as W_V^h alone. Every field is a proven upper bound of the
/// exact value, rounding included (docs/bounds.md#floating-point, Lemma F3).
#[derive(Clone, Debug, Serialize)]
pub struct HeadConstants {
    /// ||A||_2, A = W_Q^T W_K / sqrt(dk) (for tied L2, W_Q^T W_Q / sqrt(dk)).
    pub a: f64,
    /// ||c||, c = W_K^T b_Q / sqrt(dk).
    pub c: f64,
    /// ||W_O^h W_V^h||_2.
    pub m: f64,
    /// ||W_V^h||_2.
    pub v: f64,
    /// ||W_O^h||_2.
    pub o: f64,
    /// An upper bound on sup_{|u|=1} |W_O^h W_V^h u| |A u| (at most m a).
    pub ma: f64,
    /// An upper bound on sup_{|u|=1} |W_V^h u| |A u| (at most v a).
    pub va: f64,
}

pub fn spectral_norm(m: MatRef<'_, f64>) -> Result<f64> {
    if m.nrows() == 0 || m.ncols() == 0 {
        return Ok(0.0);
    }
    let s = m
        .singular_values()
        .map_err(|e| Error::Numerical(format!("singular values did not converge: {e:?}")))?;
    Ok(s[0])
}

fn lambda_max(g: MatRef<'_, f64>) -> Result<f64> {
    let e = g
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigenvalues did not converge: {e:?}")))?;
    Ok(e.last().copied().unwrap_or(0.0).max(0.0))
}

/// An orthonormal basis (d x m) of the span of the columns of `x` (d x k), by thin QR.
fn orthonormal_basis(x: MatRef<'_, f64>) -> Mat<f64> {
    let qr = x.qr();
    qr.compute_thin_Q()
}

/// sup_{|u|=1} |P u| |Q u| <= min_t lambda_max(t P^T P + Q^T Q / t) / 2, by AM-GM:
/// |P u| |Q u| <= (t |P u|^2 + |Q u|^2 / t) / 2 for every t > 0. Any t gives a valid bound; a
/// golden-section search on log t finds a good one. `gp`, `gq` are the Gram matrices P^T P and
/// Q^T Q restricted to a subspace holding the row spaces of both. Returns the t found, or None
/// when one of them vanishes (the search is a heuristic; the bound at the t returned is
/// certified by the caller).
fn best_t(gp: &Mat<f64>, gq: &Mat<f64>) -> Result<Option<f64>> {
    let lp = lambda_max(gp.as_ref())?;
    let lq = lambda_max(gq.as_ref())?;
    if lp == 0.0 || lq == 0.0 {
        return Ok(None);
    }
    let eval = |log_t: f64| -> Result<f64> {
        let t = log_t.exp();
        let g = Mat::from_fn(gp.nrows(), gp.ncols(), |i, j| {
            t * gp[(i, j)] + gq[(i, j)] / t
        });
        Ok(lambda_max(g.as_ref())? / 2.0)
    };
    let centre = 0.5 * (lq / lp).ln();
    let (mut lo, mut hi) = (centre - 6.0, centre + 6.0);
    let phi = 0.5 * (5f64.sqrt() - 1.0);
    let mut x1 = hi - phi * (hi - lo);
    let mut x2 = lo + phi * (hi - lo);
    let (mut f1, mut f2) = (eval(x1)?, eval(x2)?);
    let (mut best, mut best_x) = if f1 <= f2 { (f1, x1) } else { (f2, x2) };
    for _ in 0..40 {
        if f1 < f2 {
            hi = x2;
            x2 = x1;
            f2 = f1;
            x1 = hi - phi * (hi - lo);
            f1 = eval(x1)?;
        } else {
            lo = x1;
            x1 = x2;
            f1 = f2;
            x2 = lo + phi * (hi - lo);
            f2 = eval(x2)?;
        }
        for (f, x) in [(f1, x1), (f2, x2)] {
            if f < best {
                (best, best_x) = (f, x);
            }
        }
    }
    Ok(Some(best_x.exp()))
}

/// A factor X = L R (L absent: X = R) of a head, seen through the computed basis B of a subspace
/// S that holds the row space of R: for every u, |X u| <= |P z| + eps |u| with z = B^T u and
/// P = fl(L fl(R B)); `norm` bounds ||P||_2 and `gram`, `gram_err` are fl(P^T P) and a bound on
/// its error in the Frobenius norm (docs/bounds.md#floating-point, Lemma F2).
struct Reduced {
    eps: f64,
    norm: f64,
    gram: Mat<f64>,
    gram_err: f64,
}

impl Reduced {
    fn new(
        l: Option<MatRef<'_, f64>>,
        r: MatRef<'_, f64>,
        basis: MatRef<'_, f64>,
        basis_norm: f64,
    ) -> Result<Self> {
        // Y = fl(R B), |Y - R B|_F <= delta_y.
        let (y, delta_y) = product_with_error(&[r, basis]);
        // rho >= |R - R B B^T|_F: R - R B B^T = fl(R - T) / (1 + d) - E_T + (Y - R B) B^T with
        // T = fl(Y B^T) = Y B^T + E_T.
        let (t, e_t) = product_with_error(&[y.as_ref(), basis.transpose()]);
        let z = Mat::from_fn(r.nrows(), r.ncols(), |i, j| r[(i, j)] - t[(i, j)]);
        let rho = add_up(
            add_up(mul_up(frob_up(z.as_ref()), 1.0 + 2.0 * UNIT_ROUNDOFF), e_t),
            mul_up(delta_y, basis_norm),
        );
        let (p, delta_p, l_norm) = match l {
            None => (y, delta_y, 1.0),
            Some(l) => {
                let (p, e) = product_with_error(&[l, r, basis]);
                (p, e, frob_up(l))
            }
        };
        // X u = L R B B^T u + L R (I - B B^T) u and L R B z = P z + (L R B - P) z, |z| <= |B| |u|.
        let eps = add_up(mul_up(basis_norm, delta_p), mul_up(l_norm, rho));
        let norm = spectral_up(p.as_ref())?;
        let (gram, gram_err) = product_with_error(&[p.transpose(), p.as_ref()]);
        Ok(Self {
            eps,
            norm,
            gram,
            gram_err,
        })
    }

    /// An upper bound of ||X||_2 (unscaled).
    fn bound(&self, basis_norm: f64) -> f64 {
        add_up(mul_up(basis_norm, self.norm), self.eps)
    }
}

/// An upper bound of sup_{|u|=1} |X u| |Y u| for two reduced factors (docs/bounds.md#floating-point,
/// Lemma F3): with S >= sup_{|z|=1} |P_X z| |P_Y z| from Lemma 1 at the t found by the search,
/// |X u| |Y u| <= (|P_X z| + eps_X)(|P_Y z| + eps_Y)
///             <= |B|^2 S + |B| (eps_X |P_Y| + eps_Y |P_X|) + eps_X eps_Y.
fn product_sup_up(x: &Reduced, y: &Reduced, basis_norm: f64) -> Result<f64> {
    let Some(t) = best_t(&x.gram, &y.gram)? else {
        return Ok(mul_up(x.bound(basis_norm), y.bound(basis_norm)));
    };
    let (gx, gy) = (&x.gram, &y.gram);
    let n = gx.nrows();
    // H = fl(t Gx + Gy / t), entrywise within gamma_2 (t |Gx| + |Gy| / t) + 2 ETA of the exact
    // sum of the stored Grams (an underflowing t Gx or Gy / t loses up to ETA / 2 absolutely,
    // carried through the addition's factor 1 + u), i.e. within gamma_2 (...) + 2 n ETA in the
    // Frobenius norm of the n x n matrix; the stored Grams are within gram_err of P^T P.
    let h = Mat::from_fn(n, n, |i, j| t * gx[(i, j)] + gy[(i, j)] / t);
    let inv_t = crate::linalg::rounding::div_up(1.0, t);
    let underflow = mul_up(mul_up(2.0, n as f64), ETA);
    let err = add_up(
        add_up(
            add_up(mul_up(t, x.gram_err), mul_up(inv_t, y.gram_err)),
            underflow,
        ),
        mul_up(
            gamma(2),
            add_up(
                mul_up(t, frob_up(gx.as_ref())),
                mul_up(inv_t, frob_up(gy.as_ref())),
            ),
        ),
    );
    let s = mul_up(add_up(lambda_max_up(h.as_ref())?, err), 0.5);
    let b2 = mul_up(basis_norm, basis_norm);
    let cross = add_up(mul_up(x.eps, y.norm), mul_up(y.eps, x.norm));
    let via_t = add_up(
        add_up(mul_up(b2, s), mul_up(basis_norm, cross)),
        mul_up(x.eps, y.eps),
    );
    Ok(via_t.min(mul_up(x.bound(basis_norm), y.bound(basis_norm))))
}

/// An upper bound of ||B||_2 for a computed basis B with nearly orthonormal columns:
/// ||B||^2 = ||B^T B|| <= 1 + ||fl(fl(B^T B) - I)||_F (1 + 2u) + (error of fl(B^T B)).
fn basis_norm_up(b: MatRef<'_, f64>) -> f64 {
    let (g, e) = product_with_error(&[b.transpose(), b]);
    let n = g.nrows();
    let d = Mat::from_fn(n, n, |i, j| g[(i, j)] - if i == j { 1.0 } else { 0.0 });
    let dev = add_up(mul_up(frob_up(d.as_ref()), 1.0 + 2.0 * UNIT_ROUNDOFF), e);
    sqrt_up(add_up(1.0, dev))
}

impl HeadConstants {
    pub fn of(layer: &AttentionLayer<f64>, h: usize) -> Result<Self> {
        check_index("head", h, layer.heads, || "the layer".into())?;
        let (dk, dv) = (layer.dk, layer.dv);
        let s = inv_sqrt_up(layer.score_divisor_sq); // >= the exact score scale
        let wq = layer.wq.as_ref().subrows(h * dk, dk);
        let wk = match layer.kernel {
            Kernel::Dot => layer.wk.as_ref().subrows(h * dk, dk),
            Kernel::L2 => wq,
        };
        let wv = layer.wv.as_ref().subrows(h * dv, dv);
        let wo = layer.wo.as_ref().subcols(h * dv, dv);
        let bq = &layer.bq[h * dk..(h + 1) * dk];
        // c = W_K^T b_Q / sqrt(dk); zero for tied L2 where b_Q cancels.
        let c = match layer.kernel {
            Kernel::Dot => {
                let bq_col = Mat::from_fn(dk, 1, |i, _| bq[i]);
                mul_up(product_frob_up(&[wk.transpose(), bq_col.as_ref()]), s)
            }
            Kernel::L2 => 0.0,
        };
        // Every u that matters lies in span(rows of W_K, rows of W_V) (A u = W_Q^T W_K u s,
        // M u = W_O W_V u): restrict to a computed basis B of that span (nearly orthonormal;
        // its departure from an exact one is bounded, Lemma F2).
        let d = layer.d_in();
        let stacked = Mat::from_fn(d, dk + dv, |i, j| {
            if j < dk {
                wk[(j, i)]
            } else {
                wv[(j - dk, i)]
            }
        });
        let basis = orthonormal_basis(stacked.as_ref());
        let bn = basis_norm_up(basis.as_ref());
        let red_a = Reduced::new(Some(wq.transpose()), wk, basis.as_ref(), bn)?; // A / s
        let red_m = Reduced::new(Some(wo), wv, basis.as_ref(), bn)?; // M
        let red_v = Reduced::new(None, wv, basis.as_ref(), bn)?; // W_V
        let a = mul_up(red_a.bound(bn), s);
        let v = red_v.bound(bn);
        let o = spectral_up(wo)?;
        // ||W_O W_V|| <= ||W_O|| ||W_V|| as well; keep the smaller.
        let m = red_m.bound(bn).min(mul_up(o, v));
        let ma = mul_up(product_sup_up(&red_m, &red_a, bn)?, s).min(mul_up(m, a));
        let va = mul_up(product_sup_up(&red_v, &red_a, bn)?, s).min(mul_up(v, a));
        // A zero W_V^h (or W_O^h) is known exactly: its norms are 0, not the tiny positive
        // rounding allowances above, so that the head contributes exactly 0 to every bound even
        // where its score factor e^{2 R beta} overflows (docs/bounds.md#floating-point).
        let zero =
            |x: MatRef<'_, f64>| (0..x.ncols()).all(|j| (0..x.nrows()).all(|i| x[(i, j)] == 0.0));
        let (wv_zero, wo_zero) = (zero(wv), zero(wo));
        let v = if wv_zero { 0.0 } else { v };
        let o = if wo_zero { 0.0 } else { o };
        let (m, ma) = if wv_zero || wo_zero {
            (0.0, 0.0)
        } else {
            (m, ma)
        };
        let va = if wv_zero { 0.0 } else { va };
        Ok(Self {
            a,
            c,
            m,
            v,
            o,
            ma,
            va,
        })
    }
}
