//! Summaries of a set of ratios (over heads or radii) for the JSON summary.

use lipattn::analysis::fit_power_law;
use serde_json::{json, Value};

/// The upper median (no averaging of the middle pair), so that every reported median is one of
/// the measured ratios.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub(crate) fn stats(v: &[f64]) -> Value {
    json!({
        "median": median(v),
        "min": v.iter().copied().fold(f64::INFINITY, f64::min),
        "max": v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "count": v.len(),
    })
}

/// Slope and prefactor c of c n^slope fitted on log-log axes (the library's fit); NaN for both
/// with fewer than two distinct n.
pub(crate) fn loglog_fit(points: &[(f64, f64)]) -> (f64, f64) {
    // Every x here is a token count, so the conversion is exact.
    let counts: Vec<(usize, f64)> = points.iter().map(|&(n, y)| (n as usize, y)).collect();
    fit_power_law(&counts, 1, usize::MAX)
        .map_or((f64::NAN, f64::NAN), |f| (f.exponent, f.coefficient))
}
