//! Where a bound holds and in which metric.

use crate::error::{Error, Result};
use serde::Serialize;

/// The metric a bound is stated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Token map X -> f(X) on (B_R)^n, Frobenius norm on both sides.
    Frobenius,
    /// Self-attention F on P(B_R) in Wasserstein-1.
    W1,
    /// Self-attention F on P(B_R) in Wasserstein-2.
    W2,
}

/// Where a bound holds: tokens (atoms) in the closed ball B_R of radius `radius`; for token maps,
/// sequences of exactly `n` tokens with uniform weights, causal or not.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Domain {
    pub radius: f64,
    pub n: usize,
    pub causal: bool,
}

impl Domain {
    pub fn new(radius: f64, n: usize, causal: bool) -> Result<Self> {
        if !(radius.is_finite() && radius > 0.0) {
            return Err(Error::Invalid(format!(
                "radius must be positive and finite, got {radius}"
            )));
        }
        if n == 0 {
            return Err(Error::Invalid(
                "sequence length n must be at least 1".into(),
            ));
        }
        Ok(Self { radius, n, causal })
    }
}
