//! The metric a bound is stated in. Where it holds is a [`crate::Domain`], shared with the
//! searches that attain values there.

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
