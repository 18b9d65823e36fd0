//! Stage 4: the certified side. The real text must lie in the ball that every bound assumes (B6
//! on a LayerNorm, the RMSNorm radius before a rotary sublayer; a token outside it means the
//! radius bound is wrong, so nothing is certified); then every operator's best bounds at every
//! n (B7 for the rotary families).

use super::plan::Plan;
use crate::bounds::CertifiedSummary;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// [layer slot][operator][n index] -> the best certified bounds.
pub(super) type CertifiedValues = Vec<Vec<Vec<CertifiedSummary>>>;

/// `observed`: per layer slot, the largest token norm of the real text (checked only when
/// there was text).
pub(super) fn certify(plan: &Plan, had_text: bool, observed: &[f64]) -> Result<CertifiedValues> {
    let mut out = Vec::with_capacity(plan.work.len());
    for (slot, w) in plan.work.iter().enumerate() {
        if had_text {
            check_radius(w.index, w.radius(), w.rotary.is_some(), observed[slot])?;
        }
        let all: Vec<Vec<CertifiedSummary>> = w
            .ops
            .par_iter()
            .map(|op| op.certified(&w.domains))
            .collect::<Result<_>>()?;
        out.push(all);
    }
    Ok(out)
}

/// A real-text token of norm `observed` outside layer `layer`'s ball of radius `radius` means the
/// radius bound is wrong: an error, nothing is certified.
pub(super) fn check_radius(layer: usize, radius: f64, rotary: bool, observed: f64) -> Result<()> {
    if observed > radius {
        let (which, bound) = if rotary {
            ("RMSNorm radius", "docs/bounds.md#b7-rms-radius")
        } else {
            ("LayerNorm radius", "B6")
        };
        return Err(Error::Numerical(format!(
            "layer {layer}: a real-text token has norm {} above the {which} {} ({bound}); the radius bound is violated",
            crate::fmt::exact(observed),
            crate::fmt::exact(radius)
        )));
    }
    Ok(())
}
