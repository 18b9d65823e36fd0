//! Stage 3: the adversarial construction of Castin et al. at every n. Each head is measured at
//! its own construction; the sublayer at the construction of the head whose contribution it
//! amplifies most (one more evaluation, not one per head).

use super::plan::Plan;
use super::request::{AnalysisOptions, Progress};
use super::sigma::local_sigma;
use crate::error::Result;
use crate::estimation::adversarial_from_direction;
use faer::Mat;
use rayon::prelude::*;

/// [layer slot][operator][n index] -> the attained value; all None when the pass is off.
pub(super) type AdversarialValues = Vec<Vec<Vec<Option<f64>>>>;

pub(super) fn adversarial_pass(
    plan: &Plan,
    opts: &AnalysisOptions,
    progress: &mut dyn FnMut(&Progress),
    done: &mut usize,
) -> Result<AdversarialValues> {
    let ns = &plan.ns;
    let mut adv_vals = vec![vec![vec![None::<f64>; ns.len()]; plan.n_ops()]; plan.work.len()];
    if !opts.adversarial {
        return Ok(adv_vals);
    }
    for (ni, &n) in ns.iter().enumerate() {
        progress(&Progress {
            done: *done,
            total: plan.total,
            stage: format!("adversarial inputs, n = {n}"),
        });
        for (slot, w) in plan.work.iter().enumerate() {
            let att = &w.block.attention;
            let domain = &w.domains[ni];
            let inputs: Vec<Mat<f64>> = w
                .directions
                .iter()
                .map(|u| adversarial_from_direction(u, domain))
                .collect::<Result<_>>()?;
            let per_head: Vec<f64> = (0..att.heads)
                .into_par_iter()
                .map(|h| {
                    let op = if opts.heads {
                        w.ops[h + 1].clone()
                    } else {
                        att.head(h, false)?
                    };
                    local_sigma(&op, inputs[h].as_ref(), domain, &opts.lanczos)
                })
                .collect::<Result<_>>()?;
            let best = (0..att.heads)
                .max_by(|&a, &b| per_head[a].total_cmp(&per_head[b]))
                .expect("a layer has at least one head");
            adv_vals[slot][0][ni] = Some(local_sigma(
                att,
                inputs[best].as_ref(),
                domain,
                &opts.lanczos,
            )?);
            if opts.heads {
                for (h, s) in per_head.into_iter().enumerate() {
                    adv_vals[slot][h + 1][ni] = Some(s);
                }
            }
        }
        *done += 1;
    }
    Ok(adv_vals)
}
