//! The score maps of all heads taken together (docs/bounds.md#b1-joint). Every head reads the
//! same query x_i, so the heads' key-score vectors beta_h(x_i) = A_h^T x_i + c_h cannot all be
//! as long as their own bounds a_h R + |c_h| unless the heads' query directions agree: with
//! weights w_h > 0, sum_h w_h |beta_h(x)|^2 <= (a_w |x| + c_w)^2 for a_w >= ||W^{1/2} Acal|| and
//! c_w >= |W^{1/2} c| (Acal x = (A_h^T x)_h stacked). B1-joint uses this in place of the
//! per-head sum of the softmax terms.
//!
//! Lemma J holds for any positive weights, so B1-joint takes the better of two weightings, each
//! bounded rigorously: w_h = 1 / a_h^2, and weights chosen numerically to make the softmax term
//! small (`optimised_weights`). The search only proposes weights; it certifies nothing.

use super::constants::HeadConstants;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::Result;
use crate::linalg::rounding::{
    add_up, frob_up, gamma, inv_sqrt_up, lambda_max_up, mul_up, product_with_error, sqrt_up,
    sum_up, ETA,
};
use faer::Mat;

/// The weightings of Lemma J (docs/bounds.md#b1-joint) a layer's B1-joint is computed with.
#[derive(Clone, Debug)]
pub struct JointScores {
    /// w_h = 1 / a_h^2 first; the numerically chosen weights second where the search ran.
    pub weightings: Vec<JointWeights>,
}

/// One weighting of Lemma J with its constants, each a proven upper bound of the exact value for
/// the exact weights `weights` (which are exact f64 numbers by definition).
#[derive(Clone, Debug)]
pub struct JointWeights {
    /// w_h > 0; 0 for a head whose scores do not depend on the keys (no softmax term).
    pub weights: Vec<f64>,
    /// An upper bound of ||W^{1/2} Acal||_2, the score scale included.
    pub a: f64,
    /// An upper bound of |W^{1/2} c| = (sum_h w_h |c_h|^2)^{1/2}.
    pub c: f64,
}

impl JointScores {
    /// None for a single head (the joint form is B1-tight there), for the L2 kernel (no
    /// B1-tight) and where a weight of 1 / a_h^2 leaves the f64 range.
    pub fn of(layer: &AttentionLayer<f64>, heads: &[HeadConstants]) -> Result<Option<Self>> {
        if layer.heads < 2 || layer.kernel != Kernel::Dot {
            return Ok(None);
        }
        let base: Vec<f64> = heads
            .iter()
            .map(|k| match (k.a > 0.0, k.c > 0.0) {
                (true, _) => 1.0 / (k.a * k.a),
                (false, true) => 1.0 / (k.c * k.c),
                (false, false) => 0.0,
            })
            .collect();
        // A weight that overflows, or underflows to 0 for a head with a softmax term, leaves the
        // lemma's hypotheses: no joint form then.
        let out_of_range = heads
            .iter()
            .zip(&base)
            .any(|(k, &w)| !w.is_finite() || (w == 0.0 && (k.a > 0.0 || k.c > 0.0)));
        if out_of_range {
            return Ok(None);
        }
        let d = layer.d_in();
        crate::budget::check(
            || format!("the joint score matrix of B1-joint ({d} x {d}, 4 copies)"),
            crate::budget::bytes_of(&[d, d, 4], 8),
        )?;
        let mut weightings = vec![JointWeights::of(layer, heads, base.clone())?];
        if let Some(w) = optimised_weights(layer, heads, &base) {
            weightings.push(JointWeights::of(layer, heads, w)?);
        }
        Ok(Some(Self { weightings }))
    }
}

impl JointWeights {
    /// The rigorous constants of Lemma J for `weights` (w_h >= 0, finite).
    fn of(layer: &AttentionLayer<f64>, heads: &[HeadConstants], weights: Vec<f64>) -> Result<Self> {
        let (d, dk) = (layer.d_in(), layer.dk);
        // G = sum_h w_h W_Q^h^T W_K^h W_K^h^T W_Q^h, so that ||W^{1/2} Acal||^2 = s^2 lambda_max(G)
        // with s the score scale. Each product is formed with Lemma F1's error e_h (Frobenius);
        // scaling by w_h and adding H terms moves each entry by at most gamma_{H+1} times the sum
        // of the |terms| plus an underflow of at most ETA per term (docs/bounds.md#b1-joint).
        let mut g = Mat::<f64>::zeros(d, d);
        let (mut err, mut abs_sum) = (0.0f64, 0.0f64);
        for (h, &w) in weights.iter().enumerate() {
            if w == 0.0 {
                continue;
            }
            let wq = layer.wq.as_ref().subrows(h * dk, dk);
            let wk = layer.wk.as_ref().subrows(h * dk, dk);
            let (p, e) = product_with_error(&[wq.transpose(), wk, wk.transpose(), wq]);
            for j in 0..d {
                for i in 0..d {
                    g[(i, j)] += w * p[(i, j)];
                }
            }
            err = add_up(err, mul_up(w, e));
            abs_sum = add_up(abs_sum, mul_up(w, frob_up(p.as_ref())));
        }
        let terms = weights.iter().filter(|&&w| w > 0.0).count();
        let sum_err = add_up(
            mul_up(gamma(terms + 1), abs_sum),
            mul_up(mul_up(terms as f64, d as f64), ETA),
        );
        // lambda_max_up reads the lower triangle: the symmetric matrix it sees differs from the
        // exact (symmetric) G by at most sqrt(2) times the Frobenius error of the computed one.
        let lam = add_up(
            lambda_max_up(g.as_ref())?,
            mul_up(2.0, add_up(err, sum_err)),
        );
        let a = mul_up(inv_sqrt_up(layer.score_divisor_sq), sqrt_up(lam));
        let c = sqrt_up(sum_up(
            heads
                .iter()
                .zip(&weights)
                .map(|(k, &w)| mul_up(w, mul_up(k.c, k.c))),
        ));
        Ok(Self { weights, a, c })
    }
}

/// Weights that make B1-joint's softmax factor lambda_max(sum_h w_h G_h) sum_h m_h^2 / w_h small
/// (G_h = A_h A_h^T; the form at real radii, where min(colsum_h, n / 2) = n / 2 for every head
/// and c is small beside a R). The factor does not change when all weights are scaled, and its
/// gradient in log w_h is w_h g_h / lambda - (m_h^2 / w_h) / S with g_h = v^T G_h v for the top
/// eigenvector v and S = sum_h m_h^2 / w_h: a difference of two distributions over the heads.
/// Exponentiated gradient steps from w_h = 1 / a_h^2, v by warm-started power iteration; the
/// best weights seen are returned (scaled so that the largest is 1). None where a head has
/// a_h = 0 (its weight would only meet c, which this factor leaves out) or nothing was gained.
fn optimised_weights(
    layer: &AttentionLayer<f64>,
    heads: &[HeadConstants],
    base: &[f64],
) -> Option<Vec<f64>> {
    const OUTER: usize = 60;
    const INNER: usize = 20;
    if !heads.iter().all(|k| k.a > 0.0 && k.m > 0.0) {
        return None;
    }
    let (d, dk, nh) = (layer.d_in(), layer.dk, layer.heads);
    // W_Q row by row (contiguous dot products) and K_h = W_K^h W_K^h^T (dk x dk) per head, so
    // that G_h v = W_Q^h^T K_h W_Q^h v up to the score scale, which cancels in the factor.
    let wq: Vec<f64> = (0..nh * dk)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| layer.wq[(i, j)])
        .collect();
    let ks: Vec<Mat<f64>> = (0..nh)
        .map(|h| {
            let wk = layer.wk.as_ref().subrows(h * dk, dk);
            wk * wk.transpose()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    // (K_h W_Q^h v for every head, g_h = v^T G_h v for every head).
    let quad = |v: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let q: Vec<f64> = wq.chunks_exact(d).map(|row| dot(row, v)).collect();
        let mut kq = vec![0.0; nh * dk];
        let mut g = vec![0.0; nh];
        for h in 0..nh {
            let qh = &q[h * dk..(h + 1) * dk];
            for i in 0..dk {
                kq[h * dk + i] = (0..dk).map(|j| ks[h][(i, j)] * qh[j]).sum();
            }
            g[h] = dot(qh, &kq[h * dk..(h + 1) * dk]);
        }
        (kq, g)
    };
    let b: Vec<f64> = heads.iter().map(|k| k.m * k.m).collect();
    let mut lw: Vec<f64> = base.iter().map(|w| w.ln()).collect();
    let mut v = vec![1.0 / (d as f64).sqrt(); d];
    let (mut best, mut best_w, mut first) = (f64::INFINITY, Vec::new(), f64::NAN);
    let mut eta = 1.0;
    for outer in 0..OUTER {
        let w: Vec<f64> = lw.iter().map(|l| l.exp()).collect();
        for _ in 0..INNER {
            let (kq, _) = quad(&v);
            let mut u = vec![0.0; d];
            for (r, row) in wq.chunks_exact(d).enumerate() {
                let c = w[r / dk] * kq[r];
                u.iter_mut().zip(row).for_each(|(x, y)| *x += c * y);
            }
            let norm = dot(&u, &u).sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                return None;
            }
            v = u.into_iter().map(|x| x / norm).collect();
        }
        let g = quad(&v).1;
        let lam: f64 = w.iter().zip(&g).map(|(a, b)| a * b).sum();
        let s: f64 = b.iter().zip(&w).map(|(b, w)| b / w).sum();
        let f = lam * s;
        if !(f.is_finite() && lam > 0.0) {
            return None;
        }
        if outer == 0 {
            first = f;
        }
        if f < best {
            (best, best_w) = (f, w.clone());
        }
        for h in 0..w.len() {
            lw[h] -= eta * (w[h] * g[h] / lam - b[h] / w[h] / s);
        }
        eta *= 0.95;
    }
    // A gain below 0.1% is not worth a second rigorous eigendecomposition.
    if best.partial_cmp(&(0.999 * first)) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    let top = best_w.iter().copied().fold(0.0f64, f64::max);
    let w: Vec<f64> = best_w.into_iter().map(|w| w / top).collect();
    w.iter().all(|&x| x > 0.0 && x.is_finite()).then_some(w)
}
