//! B3: cross-attention C(mu, nu) = (Gamma_nu)_# mu, separately in each argument (W1 and W2).

use super::measure_w1::{context_lipschitz_head, query_lipschitz_head};
use super::{head_constants, require_dot};
use crate::attention::AttentionLayer;
use crate::error::Result;
use crate::linalg::rounding::{hypot_up, mul_up, spectral_up, sum_up};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct CrossBounds {
    /// W1(C(mu, nu), C(mu', nu)) <= in_queries W1(mu, mu').
    pub in_queries: f64,
    /// W1(C(mu, nu), C(mu, nu')) <= in_context W1(nu, nu').
    pub in_context: f64,
    pub radius: f64,
}

pub fn cross_bounds(layer: &AttentionLayer<f64>, radius: f64) -> Result<CrossBounds> {
    require_dot(layer, "the cross-attention bound B3")?;
    let ks = head_constants(layer)?;
    let wo = spectral_up(layer.wo.as_ref())?;
    // Every term is rounded upward (docs/bounds.md#floating-point).
    let q_sum = sum_up(ks.iter().map(|k| query_lipschitz_head(k, true, radius)));
    let q_cat = mul_up(
        wo,
        hypot_up(ks.iter().map(|k| query_lipschitz_head(k, false, radius))),
    );
    let c_sum = sum_up(ks.iter().map(|k| context_lipschitz_head(k, true, radius)));
    let c_cat = mul_up(
        wo,
        hypot_up(ks.iter().map(|k| context_lipschitz_head(k, false, radius))),
    );
    Ok(CrossBounds {
        in_queries: q_sum.min(q_cat),
        in_context: c_sum.min(c_cat),
        radius,
    })
}
