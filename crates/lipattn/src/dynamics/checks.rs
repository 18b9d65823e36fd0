//! The check the dynamics share, and the unit roundoff their a-posteriori bounds allow for.

use crate::error::{check_in, Error, Interval, Result};

/// f64 unit roundoff.
pub(crate) const EPS: f64 = f64::EPSILON / 2.0;

/// How close to 1 a requested contraction constant may come. The certified error bounds divide
/// by 1 - c, and the certificates carry relative rounding terms far above 1e-16; closer to 1 the
/// bounds and the a-priori counts stop meaning anything.
pub const CONTRACTION_MARGIN: f64 = 1e-12;

/// A requested contraction constant: in (0, 1) and not within `CONTRACTION_MARGIN` of 1.
pub fn check_contraction_target(what: &str, c: f64) -> Result<()> {
    check_in(what, c, Interval::open(0.0, 1.0))?;
    if 1.0 - c < CONTRACTION_MARGIN {
        return Err(Error::invalid(format!(
            "{what} = {} is within {margin} of 1: the certified error bounds divide by 1 - c, which \
             rounding cannot resolve that close to 1; choose c <= 1 - {margin}",
            crate::fmt::exact(c),
            margin = crate::fmt::compact(CONTRACTION_MARGIN)
        )));
    }
    Ok(())
}
