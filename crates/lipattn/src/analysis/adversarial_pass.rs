//! Stage 3: the structured inputs at every n: the adversarial construction of Castin et al. and
//! the transition start (`estimation::transition`, docs/background.md#transition-starts). Each
//! head is measured at its own input of each kind; the sublayer at the input of the head whose
//! contribution is amplified most (one more evaluation per kind, not one per head). For a
//! rotary sublayer both inputs are built from query head h read without rotation
//! (`RotaryAttention::unrotated_head`) and measured on the rotary head and sublayer at positions
//! 0..n-1 (docs/analysis.md#rotary-families).

use super::plan::Plan;
use super::request::{AnalysisOptions, Progress};
use crate::error::Result;
use crate::estimation::adversarial_from_direction;
use faer::Mat;
use rayon::prelude::*;

/// [layer slot][operator][n index] -> the attained value; all None when the pass is off.
pub(super) type AdversarialValues = Vec<Vec<Vec<Option<f64>>>>;

/// The values at Castin et al.'s construction and at the transition starts (None where a head
/// has no transition start: n < 3, or keys that cannot outscore the queries in the ball).
pub(super) struct Structured {
    pub construction: AdversarialValues,
    pub transition: AdversarialValues,
}

pub(super) fn adversarial_pass(
    plan: &Plan,
    opts: &AnalysisOptions,
    progress: &mut dyn FnMut(&Progress),
    done: &mut usize,
) -> Result<Structured> {
    let ns = &plan.ns;
    let empty = || vec![vec![vec![None::<f64>; ns.len()]; plan.n_ops()]; plan.work.len()];
    let mut out = Structured {
        construction: empty(),
        transition: empty(),
    };
    if !opts.adversarial {
        return Ok(out);
    }
    for (ni, &n) in ns.iter().enumerate() {
        progress(&Progress {
            done: *done,
            total: plan.total,
            stage: format!("adversarial inputs, n = {n}"),
            estimate: None,
        });
        for (slot, w) in plan.work.iter().enumerate() {
            let heads = w.sublayer().heads();
            let domain = &w.domains[ni];
            let constructions: Vec<Option<Mat<f64>>> = w
                .directions
                .iter()
                .map(|u| adversarial_from_direction(u, domain).map(Some))
                .collect::<Result<_>>()?;
            let transitions: Vec<Option<Mat<f64>>> =
                w.transitions.iter().map(|g| g.as_ref()?.start(n)).collect();
            for (inputs, values) in [
                (&constructions, &mut out.construction),
                (&transitions, &mut out.transition),
            ] {
                let per_head: Vec<Option<f64>> = (0..heads)
                    .into_par_iter()
                    .map(|h| {
                        let Some(x) = &inputs[h] else {
                            return Ok(None);
                        };
                        w.head(h)?
                            .local_sigma(x.as_ref(), domain, &opts.lanczos, w.attention[h + 1][ni])
                            .map(Some)
                    })
                    .collect::<Result<_>>()?;
                let best = (0..heads)
                    .filter(|&h| per_head[h].is_some())
                    .max_by(|&a, &b| per_head[a].unwrap().total_cmp(&per_head[b].unwrap()));
                if let Some(best) = best {
                    let x = inputs[best].as_ref().expect("a value was measured there");
                    values[slot][0][ni] = Some(w.sublayer().local_sigma(
                        x.as_ref(),
                        domain,
                        &opts.lanczos,
                        w.attention[0][ni],
                    )?);
                }
                if opts.heads {
                    for (h, s) in per_head.into_iter().enumerate() {
                        values[slot][h + 1][ni] = s;
                    }
                }
            }
        }
        *done += 1;
    }
    Ok(out)
}
