//! The matrix constants the certified bounds are made of, per head, computed in small
//! subspaces (never a d x d matrix): a = ||A||_2 with A = W_Q^T W_K / sqrt(dk), ||c|| with
//! c = W_K^T b_Q / sqrt(dk), m = ||W_O^h W_V^h||_2, and an upper bound on
//! sup_{|u| = 1} |M u| |A u| (the term that multiplies R^2).

use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_index, Error, Result};
use faer::{Mat, MatRef, Side};
use serde::Serialize;

/// Relative margin added to every certified bound for the rounding of the f64 singular value
/// and eigenvalue computations behind it (their backward error is below 1e-13 relative at these
/// sizes; the margin is four orders of magnitude larger).
pub const ROUNDING_MARGIN: f64 = 1e-9;

pub fn with_margin(x: f64) -> f64 {
    x * (1.0 + ROUNDING_MARGIN)
}

/// Constants of one head h of a layer, with its value map taken as M = W_O^h W_V^h (the head's
/// contribution to the layer output) or as W_V^h alone.
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
/// Q^T Q restricted to a subspace holding the row spaces of both.
fn product_sup_bound(gp: &Mat<f64>, gq: &Mat<f64>) -> Result<f64> {
    let lp = lambda_max(gp.as_ref())?;
    let lq = lambda_max(gq.as_ref())?;
    let plain = (lp * lq).sqrt();
    if lp == 0.0 || lq == 0.0 {
        return Ok(0.0);
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
    let mut best = plain.min(f1).min(f2);
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
        best = best.min(f1).min(f2);
    }
    Ok(best)
}

impl HeadConstants {
    pub fn of(layer: &AttentionLayer<f64>, h: usize) -> Result<Self> {
        check_index("head", h, layer.heads, || "the layer".into())?;
        let (dk, dv) = (layer.dk, layer.dv);
        let s = 1.0 / (dk as f64).sqrt();
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
                let mut acc = 0.0;
                for col in 0..wk.ncols() {
                    let v: f64 = (0..dk).map(|r| wk[(r, col)] * bq[r]).sum();
                    acc += v * v;
                }
                s * acc.sqrt()
            }
            Kernel::L2 => 0.0,
        };
        // Every u that matters lies in span(rows of W_K, rows of W_V) (A u = W_Q^T W_K u s,
        // M u = W_O W_V u): restrict to an orthonormal basis B of that span.
        let d = layer.d_in();
        let stacked = Mat::from_fn(d, dk + dv, |i, j| {
            if j < dk {
                wk[(j, i)]
            } else {
                wv[(j - dk, i)]
            }
        });
        let basis = orthonormal_basis(stacked.as_ref());
        let wk_b = wk * &basis; // dk x m
        let wv_b = wv * &basis; // dv x m
        let a_b = wq.transpose() * &wk_b * s; // d x m: A B
        let m_b = wo * &wv_b; // d_out x m: M B
        let g_a = a_b.transpose() * &a_b;
        let g_m = m_b.transpose() * &m_b;
        let g_v = wv_b.transpose() * &wv_b;
        let a = lambda_max(g_a.as_ref())?.sqrt();
        let m = lambda_max(g_m.as_ref())?.sqrt();
        let v = lambda_max(g_v.as_ref())?.sqrt();
        let o = spectral_norm(wo)?;
        let ma = product_sup_bound(&g_m, &g_a)?.min(m * a);
        let va = product_sup_bound(&g_v, &g_a)?.min(v * a);
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
