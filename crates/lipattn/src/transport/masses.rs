//! The weights of the two sides of a transport problem: nonnegative, finite, equal totals.

use crate::error::{check_finite, Error, Result};

/// Relative tolerance on `|sum a - sum b|` accepted by the cost-matrix entry points.
pub const MASS_TOL: f64 = 1e-9;

pub(crate) fn check_weights(what: &str, w: &[f64], n: usize) -> Result<f64> {
    if w.len() != n {
        return Err(Error::shape(
            what,
            format!("[{n}]"),
            format!("[{}]", w.len()),
        ));
    }
    if n == 0 {
        return Err(Error::Empty { what: what.into() });
    }
    check_finite(what, w.iter().copied())?;
    if let Some((index, &value)) = w.iter().enumerate().find(|(_, &x)| x < 0.0) {
        return Err(Error::NegativeWeight {
            what: what.into(),
            index,
            value,
        });
    }
    let sum: f64 = w.iter().sum();
    if sum <= 0.0 {
        return Err(Error::invalid(format!(
            "{what}: total mass is {}; it must be positive",
            crate::fmt::exact(sum)
        )));
    }
    Ok(sum)
}

pub(crate) fn check_masses(wa: &[f64], wb: &[f64], n: usize, m: usize) -> Result<()> {
    let sa = check_weights("source weights", wa, n)?;
    let sb = check_weights("target weights", wb, m)?;
    if (sa - sb).abs() > MASS_TOL * sa.max(sb) {
        return Err(Error::invalid(format!(
            // Masses that differ in the 12th digit must not both print as 1.
            "the measures have different total mass ({} vs {}); balanced transport needs equal masses (normalise the weights)",
            crate::fmt::exact(sa),
            crate::fmt::exact(sb)
        )));
    }
    Ok(())
}
