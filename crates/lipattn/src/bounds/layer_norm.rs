//! B6: the radius of LayerNorm outputs and the Lipschitz constant of a residual branch.

use crate::error::{check_finite, Error, Result};
use crate::linalg::rounding::{add_up, mul_up, norm2_up, sqrt_up};

/// Every output of LN(x) = gamma o (x - mean) / sqrt(var + eps) + beta lies in B_R with
/// R = sqrt(d) max|gamma_k| + |beta| (the normalised vector has norm below sqrt(d)).
pub fn layer_norm_radius(gamma: &[f64], beta: &[f64]) -> Result<f64> {
    if gamma.is_empty() || gamma.len() != beta.len() {
        return Err(Error::shape(
            "LayerNorm beta",
            format!("[{}]", gamma.len()),
            format!("[{}]", beta.len()),
        ));
    }
    check_finite("LayerNorm gamma", gamma.iter().copied())?;
    check_finite("LayerNorm beta", beta.iter().copied())?;
    let gmax = gamma.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    // Rounded upward (docs/bounds.md#floating-point).
    let bnorm = norm2_up(beta.iter().copied());
    Ok(add_up(mul_up(sqrt_up(gamma.len() as f64), gmax), bnorm))
}

/// Lip(id + f) <= 1 + Lip(f) (rounded upward).
pub fn residual(lip_f: f64) -> f64 {
    add_up(1.0, lip_f)
}
