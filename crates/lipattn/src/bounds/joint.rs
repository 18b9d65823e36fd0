//! The score maps of all heads taken together (docs/bounds.md#b1-joint). Every head reads the
//! same query x_i, so the heads' key-score vectors beta_h(x_i) = A_h^T x_i + c_h cannot all be
//! as long as their own bounds a_h R + |c_h| unless the heads' query directions agree: with
//! weights w_h > 0, sum_h w_h |beta_h(x)|^2 <= (a_w |x| + c_w)^2 for a_w >= ||W^{1/2} Acal|| and
//! c_w >= |W^{1/2} c| (Acal x = (A_h^T x)_h stacked). B1-joint uses this in place of the
//! per-head sum of the softmax terms.

use super::constants::HeadConstants;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::Result;
use crate::linalg::rounding::{
    add_up, frob_up, gamma, inv_sqrt_up, lambda_max_up, mul_up, product_with_error, sqrt_up,
    sum_up, ETA,
};
use faer::Mat;

/// The constants of Lemma J (docs/bounds.md#b1-joint), each a proven upper bound of the exact
/// value for the exact weights `weights` (which are exact f64 numbers by definition).
#[derive(Clone, Debug)]
pub struct JointScores {
    /// w_h: 1 / a_h^2 (1 / |c_h|^2 where a_h = 0; 0 for a head whose scores do not depend on
    /// the keys, which has no softmax term).
    pub weights: Vec<f64>,
    /// An upper bound of ||W^{1/2} Acal||_2, the score scale included.
    pub a: f64,
    /// An upper bound of |W^{1/2} c| = (sum_h w_h |c_h|^2)^{1/2}.
    pub c: f64,
}

impl JointScores {
    /// None for a single head (the joint form is B1-tight there), for the L2 kernel (no
    /// B1-tight) and where a weight leaves the f64 range.
    pub fn of(layer: &AttentionLayer<f64>, heads: &[HeadConstants]) -> Result<Option<Self>> {
        if layer.heads < 2 || layer.kernel != Kernel::Dot {
            return Ok(None);
        }
        let weights: Vec<f64> = heads
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
            .zip(&weights)
            .any(|(k, &w)| !w.is_finite() || (w == 0.0 && (k.a > 0.0 || k.c > 0.0)));
        if out_of_range {
            return Ok(None);
        }
        let (d, dk) = (layer.d_in(), layer.dk);
        crate::budget::check(
            || format!("the joint score matrix of B1-joint ({d} x {d}, 4 copies)"),
            crate::budget::bytes_of(&[d, d, 4], 8),
        )?;
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
        Ok(Some(Self { weights, a, c }))
    }
}
