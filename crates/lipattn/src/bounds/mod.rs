//! Certified Lipschitz upper bounds (math.md section 4; proofs in docs/bounds.md) and, for
//! comparison only, the anchor's published formulas (never labelled certified).

pub mod constants;
pub mod cross_attention;
pub mod layer_norm;
pub mod measure_w1;
pub mod token_map;

pub use constants::{HeadConstants, ROUNDING_MARGIN};

use crate::attention::{AttentionLayer, Kernel};
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

/// One bound with its provenance.
#[derive(Clone, Debug, Serialize)]
pub struct Bound {
    /// Short name, e.g. "B1", "B1-tight", "anchor-castin".
    pub name: String,
    pub metric: Metric,
    pub value: f64,
    /// True only for bounds proven in docs/bounds.md (with the rounding margin applied).
    pub certified: bool,
    /// Where the proof (or, for anchors, the source) is written.
    pub source: String,
}

impl Bound {
    fn certified(name: &str, metric: Metric, value: f64, section: &str) -> Self {
        Self {
            name: name.into(),
            metric,
            value: constants::with_margin(value),
            certified: true,
            source: format!("docs/bounds.md#{section}"),
        }
    }

    fn anchor(name: &str, metric: Metric, value: f64, source: &str) -> Self {
        Self {
            name: name.into(),
            metric,
            value,
            certified: false,
            source: source.into(),
        }
    }
}

/// All head constants of a layer.
pub fn head_constants(layer: &AttentionLayer<f64>) -> Result<Vec<HeadConstants>> {
    (0..layer.heads)
        .map(|h| HeadConstants::of(layer, h))
        .collect()
}

pub(crate) fn require_dot(layer: &AttentionLayer<f64>, what: &str) -> Result<()> {
    match layer.kernel {
        Kernel::Dot => Ok(()),
        Kernel::L2 => Err(Error::Invalid(format!(
            "{what} is proven for the dot-product kernel only; L2 attention bounds (B5) are not implemented yet"
        ))),
    }
}

/// The smallest certified bound in a metric, if any.
pub fn best(bounds: &[Bound], metric: Metric) -> Option<&Bound> {
    bounds
        .iter()
        .filter(|b| b.certified && b.metric == metric)
        .min_by(|a, b| a.value.total_cmp(&b.value))
}
