//! The projected multi-start ascent of [`super::ascent`] on a rotary sublayer (always causal):
//! sigma(X) = ||J(X)||_2 over (B_R)^n at positions 0..n-1. Its structured starts are the
//! transition starts of each query head read without rotation (`RotaryAttention::unrotated_head`):
//! at the positions the construction uses, the low frequencies turn the scores little, so the
//! queries still sit near a softmax transition and the climb finishes the job. Every value
//! returned is attained at the returned X: a lower bound, never a certificate.

use super::adversarial::{climb, evaluate, random_start, AscentOptions, Point};
use super::transition::transition_start;
use crate::attention::RotaryAttention;
use crate::domain::Domain;
use crate::error::Result;
use crate::linalg::SplitMix;
use faer::Mat;
use serde::Serialize;

/// The best input the rotary ascent found.
#[derive(Clone, Debug, Serialize)]
pub struct RotaryAscentResult {
    /// ||J(X) v||_F for the unit `vector` at `x`.
    pub sigma: f64,
    #[serde(skip)]
    pub x: Mat<f64>,
    #[serde(skip)]
    pub vector: Mat<f64>,
    /// The best value at a transition start before climbing (None when no head has one).
    pub transition_sigma: Option<f64>,
    /// Transition starts (one per query head that has one), then random ones.
    pub transition_starts: usize,
    pub random_starts: usize,
    /// Index of the start the best value was climbed from.
    pub best_start: usize,
    /// Lanczos evaluations of sigma.
    pub evaluations: usize,
}

/// Multi-start projected gradient ascent on sigma(X) for a rotary sublayer on (B_R)^n
/// (`opts.causal` is ignored: rotary attention is causal).
pub fn rotary_ascent(
    layer: &RotaryAttention,
    n: usize,
    opts: &AscentOptions,
) -> Result<RotaryAscentResult> {
    let domain = Domain::new(opts.radius, n, true)?;
    opts.check()?;
    layer.check_shapes()?;
    let d = layer.d_in();
    crate::budget::check(
        || format!("the rotary ascent over {n} tokens of width {d} (`n`)"),
        crate::budget::bytes_of(&[8, n, d.max(layer.d_out())], 8),
    )?;
    let mut transitions = Vec::new();
    for h in 0..layer.heads {
        transitions.extend(transition_start(&layer.unrotated_head(h)?, 0, &domain)?);
    }
    let structured = transitions.len();
    let mut rng = SplitMix::new(opts.seed);
    let mut evals = 0;
    let mut best: Option<(Point, usize)> = None;
    let mut transition_sigma: Option<f64> = None;
    transitions.reverse();
    for i in 0..structured + opts.random_starts {
        crate::cancel::check()?;
        let x = match transitions.pop() {
            Some(x) => x,
            None => random_start(&mut rng, n, d, domain.radius),
        };
        let p = evaluate(layer, x, &opts.lanczos, &mut evals)?;
        if i < structured {
            transition_sigma = Some(transition_sigma.map_or(p.sigma, |s: f64| s.max(p.sigma)));
        }
        let p = climb(layer, &domain, p, opts, &mut evals)?;
        if best.as_ref().is_none_or(|b| p.sigma > b.0.sigma) {
            best = Some((p, i));
        }
    }
    let Some((p, best_start)) = best else {
        return Err(crate::error::Error::invalid(
            "the rotary ascent needs at least one start: no head has a transition start at this n, so ask for random starts (`starts` >= 1)",
        ));
    };
    Ok(RotaryAscentResult {
        sigma: p.sigma,
        x: p.x,
        vector: p.v,
        transition_sigma,
        transition_starts: structured,
        random_starts: opts.random_starts,
        best_start,
        evaluations: evals,
    })
}
