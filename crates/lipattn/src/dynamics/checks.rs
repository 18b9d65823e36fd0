//! The checks the dynamics share, and the unit roundoff their a-posteriori bounds allow for.

use crate::error::{Error, Result};

/// f64 unit roundoff.
pub(crate) const EPS: f64 = f64::EPSILON / 2.0;

pub(crate) fn check_tol(what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Invalid(format!(
            "{what} must be positive and finite, got {v}"
        )));
    }
    Ok(())
}

pub(crate) fn check_contraction_target(c: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0 && c < 1.0) {
        return Err(Error::Invalid(format!(
            "the contraction constant c must lie in (0, 1), got {c}"
        )));
    }
    Ok(())
}
