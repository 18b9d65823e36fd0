//! The Jacobian of Gamma_mu in the query point alone, context fixed
//! (docs/background.md#derivatives):
//! D Gamma_mu(x) = sum_h W_O^h Cov_{P(x)}(v^h, g^h), with g^h_j the gradient of the score of key j.

use crate::attention::forward::check_tokens;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::Result;
use crate::measure::Measure;
use faer::Mat;

/// D Gamma_mu(x), a d_out x d matrix, at the query point `x` for the context `mu`.
/// For the dot kernel the score gradient is W_Q^T k_j / sqrt(dk); for tied L2 it is
/// 2 W_Q^T (k_j - q) / sqrt(dk), whose k_j-independent part drops out of the covariance.
pub fn query_jacobian(layer: &AttentionLayer<f64>, x: &[f64], mu: &Measure) -> Result<Mat<f64>> {
    let d = layer.d_in();
    let xq = Mat::from_fn(1, x.len(), |_, k| x[k]);
    check_tokens("query point", xq.as_ref(), d)?;
    let st = layer.state(xq.as_ref(), mu.points(), Some(mu.weights()), false, false)?;
    let (dk, dv, n) = (layer.dk, layer.dv, mu.len());
    let factor = match layer.kernel {
        Kernel::Dot => layer.score_scale::<f64>(),
        Kernel::L2 => 2.0 * layer.score_scale::<f64>(),
    };
    let mut jac = Mat::<f64>::zeros(layer.d_out(), d);
    for h in 0..layer.heads {
        let p = st.p_t[h].col_as_slice(0);
        let k = st.k.as_ref().subcols(h * dk, dk);
        let v = st.v.as_ref().subcols(h * dv, dv);
        let kbar: Vec<f64> = (0..dk)
            .map(|c| (0..n).map(|j| p[j] * k[(j, c)]).sum())
            .collect();
        let vbar: Vec<f64> = (0..dv)
            .map(|c| (0..n).map(|j| p[j] * v[(j, c)]).sum())
            .collect();
        // Cov (dv x dk) = sum_j p_j (v_j - vbar)(k_j - kbar)^T.
        let cov = Mat::from_fn(dv, dk, |a, b| {
            (0..n)
                .map(|j| p[j] * (v[(j, a)] - vbar[a]) * (k[(j, b)] - kbar[b]))
                .sum::<f64>()
        });
        let wq_h = layer.wq.as_ref().subrows(h * dk, dk);
        let wo_h = layer.wo.as_ref().subcols(h * dv, dv);
        jac += factor * (wo_h * (&cov * wq_h));
    }
    Ok(jac)
}
