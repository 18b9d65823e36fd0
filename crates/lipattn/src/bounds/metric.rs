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
    /// Attention with positions (rotary) on measures over (position, token) pairs, in
    /// Wasserstein-1 for the cost |x - y| within a position and +inf across positions: for one
    /// token per position, (1/n) sum_i |x_i - y_i| (docs/bounds.md#b7-measure-view).
    #[serde(rename = "position_w1")]
    PositionW1,
}
