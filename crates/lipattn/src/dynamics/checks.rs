//! The check the dynamics share, and the unit roundoff their a-posteriori bounds allow for.

use crate::error::{check_in, Interval, Result};

/// f64 unit roundoff.
pub(crate) const EPS: f64 = f64::EPSILON / 2.0;

pub(crate) fn check_contraction_target(c: f64) -> Result<()> {
    check_in("the contraction constant c", c, Interval::open(0.0, 1.0)).map(|_| ())
}
