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
        if had_text && observed[slot] > w.radius() {
            let which = if w.rotary.is_some() {
                "RMSNorm radius"
            } else {
                "LayerNorm radius"
            };
            let bound = if w.rotary.is_some() {
                "docs/bounds.md#b7-rms-radius"
            } else {
                "B6"
            };
            return Err(Error::Numerical(format!(
                "layer {}: a real-text token has norm {} above the {which} {} ({bound}); the radius bound is violated",
                w.index,
                crate::fmt::exact(observed[slot]),
                crate::fmt::exact(w.radius())
            )));
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
