//! Stage 2: every real-text window through the model, block by block; at each selected layer the
//! attention input is measured (its largest token norm, for the radius check) and every operator's
//! local constant taken there.

use super::plan::Plan;
use super::request::{AnalysisOptions, Progress};
use crate::error::Result;
use crate::estimation::vecops::max_row_norm;
use rayon::prelude::*;

pub(super) struct TextValues {
    /// [layer slot][operator][n index] -> values over the windows.
    pub sigma: Vec<Vec<Vec<Vec<f64>>>>,
    /// Per layer slot, the largest token norm seen at the attention input.
    pub observed: Vec<f64>,
}

pub(super) fn text_pass(
    plan: &Plan,
    opts: &AnalysisOptions,
    progress: &mut dyn FnMut(&Progress),
    done: &mut usize,
) -> Result<TextValues> {
    let (work, ns) = (&plan.work, &plan.ns);
    let last = plan.blocks.len() - 1;
    let mut text_vals = vec![vec![vec![Vec::<f64>::new(); ns.len()]; plan.n_ops()]; work.len()];
    let mut observed = vec![0.0f64; work.len()];
    for (ni, (n, wins)) in plan.windows.iter().enumerate() {
        for (wi, ids) in wins.iter().enumerate() {
            crate::cancel::check()?;
            progress(&Progress {
                done: *done,
                total: plan.total,
                stage: format!("real text, n = {n}, window {}/{}", wi + 1, wins.len()),
                estimate: None,
            });
            let mut h = plan.embeddings.embed(ids)?;
            let mut slot = 0;
            for (l, block) in plan.blocks.iter().enumerate() {
                if slot < work.len() && work[slot].index == l {
                    let x = block.attention_input(h.as_ref())?;
                    observed[slot] = observed[slot].max(max_row_norm(x.as_ref()));
                    let w = &work[slot];
                    let sig: Vec<f64> = w
                        .ops
                        .par_iter()
                        .enumerate()
                        .map(|(o, op)| {
                            op.local_sigma(
                                x.as_ref(),
                                &w.domains[ni],
                                &opts.lanczos,
                                w.attention[o][ni],
                            )
                        })
                        .collect::<Result<_>>()?;
                    for (o, s) in sig.into_iter().enumerate() {
                        text_vals[slot][o][ni].push(s);
                    }
                    slot += 1;
                }
                if l < last {
                    h = block.forward(h.as_ref())?;
                }
            }
            *done += 1;
        }
    }
    Ok(TextValues {
        sigma: text_vals,
        observed,
    })
}
