//! Where a bound holds and in which metric.

use crate::error::{check_at_least, check_positive, Result};
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
        check_positive("radius", radius)?;
        check_at_least("sequence length n", n, 1)?;
        Ok(Self { radius, n, causal })
    }
}
