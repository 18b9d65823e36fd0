//! One bound with its provenance, and the choice of the best certified one.

use super::metric::Metric;
use serde::Serialize;

/// One bound with its provenance.
#[derive(Clone, Debug, Serialize)]
pub struct Bound {
    /// Short name, e.g. "B1", "B1-tight", "anchor-castin".
    pub name: String,
    pub metric: Metric,
    pub value: f64,
    /// True only for bounds proven in docs/bounds.md; the value is then an upper bound of the exact
    /// expression, rounding included (docs/bounds.md#floating-point).
    pub certified: bool,
    /// Where the proof (or, for anchors, the source) is written.
    pub source: String,
}

impl Bound {
    /// `value` must already be rounded outward (`linalg::rounding`).
    pub(crate) fn certified(name: &str, metric: Metric, value: f64, section: &str) -> Self {
        Self {
            name: name.into(),
            metric,
            value,
            certified: true,
            source: format!("docs/bounds.md#{section}"),
        }
    }

    pub(crate) fn anchor(name: &str, metric: Metric, value: f64, source: &str) -> Self {
        Self {
            name: name.into(),
            metric,
            value,
            certified: false,
            source: source.into(),
        }
    }
}

/// The smallest certified bound in a metric, if any. A NaN value is not a bound and is never
/// chosen (`total_cmp` alone would put a negative NaN, the usual result of 0 * inf, before every
/// number and hide a finite bound); +inf is chosen only when every candidate is +inf.
pub fn best(bounds: &[Bound], metric: Metric) -> Option<&Bound> {
    bounds
        .iter()
        .filter(|b| b.certified && b.metric == metric && !b.value.is_nan())
        .min_by(|a, b| a.value.total_cmp(&b.value))
}
