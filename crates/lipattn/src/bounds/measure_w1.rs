//! B2: self-attention F(mu) = (Gamma_mu)_# mu on P(B_R) in W1 and W2 (dot-product kernel).

use super::constants::HeadConstants;
use super::{require_dot, Bound, LayerConstants, Metric};
use crate::attention::AttentionLayer;
use crate::error::Result;
use crate::linalg::rounding::{add_up, exp_up, hypot_up, mul_up, sum_up};

/// Lipschitz constant of x -> Gamma_mu(x) on B_R for one head: sup_u |M u||A u| R^2 (rounded
/// upward).
pub fn query_lipschitz_head(k: &HeadConstants, use_output: bool, radius: f64) -> f64 {
    let prod = if use_output { k.ma } else { k.va };
    mul_up(prod, mul_up(radius, radius))
}

/// sup_{x in B_R} |Gamma_mu(x) - Gamma_nu(x)| <= this times W1(mu, nu), for one head:
/// |M| (1 + 2 R beta) e^{2 R beta} with beta = a R + |c| (rounded upward).
pub fn context_lipschitz_head(k: &HeadConstants, use_output: bool, radius: f64) -> f64 {
    let beta = add_up(mul_up(k.a, radius), k.c);
    let vn = if use_output { k.m } else { k.v };
    let x = mul_up(mul_up(2.0, radius), beta);
    mul_up(mul_up(vn, add_up(1.0, x)), exp_up(x))
}

/// B2 for a whole layer: W1(F mu, F nu) <= L W1(mu, nu), mu, nu in P(B_R); the same constant holds
/// for W2. Heads are combined by the sum of the W_O^h W_V^h forms or by the concatenation with
/// ||W_O||, whichever is smaller (B4).
pub fn measure_bounds(layer: &AttentionLayer<f64>, radius: f64) -> Result<Vec<Bound>> {
    require_dot(layer, "the measure bound B2")?;
    Ok(measure_bounds_from(&LayerConstants::of(layer)?, radius))
}

/// [`measure_bounds`] from constants computed once (they do not depend on the radius).
pub fn measure_bounds_from(c: &LayerConstants, radius: f64) -> Vec<Bound> {
    let (ks, wo) = (&c.heads, c.wo);
    let sum = sum_up(ks.iter().map(|k| {
        add_up(
            query_lipschitz_head(k, true, radius),
            context_lipschitz_head(k, true, radius),
        )
    }));
    let cat = mul_up(
        wo,
        add_up(
            hypot_up(ks.iter().map(|k| query_lipschitz_head(k, false, radius))),
            hypot_up(ks.iter().map(|k| context_lipschitz_head(k, false, radius))),
        ),
    );
    let best = sum.min(cat);
    vec![
        Bound::certified("B2", Metric::W1, best, "b2-measures-w1-w2"),
        Bound::certified("B2", Metric::W2, best, "b2-measures-w1-w2"),
    ]
}
