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

/// Every output of RMSNorm, g ⊙ x / sqrt(|x|^2 / d + eps) with g = w or 1 + w (as the code
/// forms it), lies in B_R with R = sqrt(d) max|g_k|: the normalised vector has norm
/// |x| / sqrt(|x|^2 / d + eps) <= sqrt(d) (docs/bounds.md#b7-rms-radius).
pub fn rms_norm_radius(norm: &crate::attention::RmsNorm) -> Result<f64> {
    if norm.weight.is_empty() {
        return Err(Error::Empty {
            what: "RMSNorm weight".into(),
        });
    }
    check_finite("RMSNorm weight", norm.weight.iter().copied())?;
    let gmax = norm
        .weight
        .iter()
        .map(|&w| if norm.unit_offset { 1.0 + w } else { w })
        .fold(0.0f64, |m, g| m.max(g.abs()));
    Ok(mul_up(sqrt_up(norm.weight.len() as f64), gmax))
}

/// Lip(id + f) <= 1 + Lip(f) (rounded upward).
pub fn residual(lip_f: f64) -> f64 {
    add_up(1.0, lip_f)
}
