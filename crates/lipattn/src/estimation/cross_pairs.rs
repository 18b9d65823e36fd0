//! Attained ratios of cross-attention C(mu, nu) = (Gamma_nu)_# mu in one argument at a time
//! (the two statements of B3): W_p(C(mu, nu), C(mu', nu)) / W_p(mu, mu') with the context nu
//! fixed, or W_p(C(mu, nu), C(mu, nu')) / W_p(nu, nu') with the queries mu fixed, all measures on
//! B_R and W_p computed exactly. The best ratio is a lower bound on the corresponding Lipschitz
//! constant, attained by the returned triple; never a certificate.

use super::measure_pairs::{
    check_order, finite_ratio, input_distance, moved_points, moved_weights, random_points,
    random_weights,
};
use crate::attention::AttentionLayer;
use crate::error::{check_at_least, check_positive, check_repeats, Error, Result};
use crate::linalg::SplitMix;
use crate::measure::Measure;
use crate::transport;

/// Which argument of C(mu, nu) varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossArgument {
    /// The query measure mu (B3's first constant).
    Queries,
    /// The context measure nu (B3's second constant).
    Context,
}

#[derive(Clone, Debug)]
pub struct CrossSearchOptions {
    pub radius: f64,
    pub argument: CrossArgument,
    /// Atoms of the query measures and of the context measures.
    pub query_atoms: usize,
    pub context_atoms: usize,
    /// Independent random triples.
    pub random_pairs: usize,
    /// Triples whose varying measure is a small move (`perturbation` R) or reweighting of the base.
    pub perturbed_pairs: usize,
    pub perturbation: f64,
    /// Proposals of the (1+1) local search from the best triple.
    pub local_steps: usize,
    /// Wasserstein order p (1 or 2).
    pub order: u32,
    /// Triples (queries, context, moved) evaluated before the random ones, e.g. built from the
    /// weights' structure.
    pub seeds: Vec<(Measure, Measure, Measure)>,
    pub seed: u64,
}

impl Default for CrossSearchOptions {
    fn default() -> Self {
        Self {
            radius: 1.0,
            argument: CrossArgument::Context,
            query_atoms: 8,
            context_atoms: 8,
            random_pairs: 20,
            perturbed_pairs: 20,
            perturbation: 1e-2,
            local_steps: 100,
            order: 1,
            seeds: Vec::new(),
            seed: 0,
        }
    }
}

/// C(queries, context) against the output with `moved` in place of the varying argument.
#[derive(Clone, Debug)]
pub struct CrossPair {
    pub argument: CrossArgument,
    pub queries: Measure,
    pub context: Measure,
    /// Replaces `queries` (argument Queries) or `context` (argument Context).
    pub moved: Measure,
    /// W_p between the varying measure and `moved` (> 0).
    pub w_in: f64,
    /// W_p between the two outputs.
    pub w_out: f64,
    pub ratio: f64,
    pub order: u32,
}

impl CrossPair {
    /// Writes `{prefix}{queries,context,moved}_{points,weights}.npy`.
    pub fn save(&self, dir: &std::path::Path, prefix: &str) -> Result<()> {
        Measure::save_named(
            dir,
            prefix,
            &[
                ("queries", &self.queries),
                ("context", &self.context),
                ("moved", &self.moved),
            ],
        )
    }
}

#[derive(Clone, Debug)]
pub struct CrossSearchResult {
    pub best: CrossPair,
    /// "seeded", "random", "perturbed" or "local".
    pub phase: &'static str,
    pub evaluations: usize,
    /// Best ratio after each phase, in order seeded and random, perturbed, local; None while no
    /// pair has been found (e.g. no seeds and no random pairs), rather than a NaN that reads as a
    /// value.
    pub phase_best: [Option<f64>; 3],
}

/// The attained ratio of one triple; None when the varying measures coincide in W_p.
pub fn cross_ratio(
    layer: &AttentionLayer<f64>,
    argument: CrossArgument,
    queries: &Measure,
    context: &Measure,
    moved: &Measure,
    order: u32,
) -> Result<Option<CrossPair>> {
    check_order(order)?;
    let varying = match argument {
        CrossArgument::Queries => queries,
        CrossArgument::Context => context,
    };
    let Some(w_in) = input_distance(varying, moved, order)? else {
        return Ok(None);
    };
    let base = layer.cross_attention(queries, context)?;
    let other = match argument {
        CrossArgument::Queries => layer.cross_attention(moved, context)?,
        CrossArgument::Context => layer.cross_attention(queries, moved)?,
    };
    let w_out = transport::exact(&base, &other, order)?.distance;
    Ok(Some(CrossPair {
        argument,
        queries: queries.clone(),
        context: context.clone(),
        moved: moved.clone(),
        w_in,
        w_out,
        ratio: finite_ratio(w_out, w_in, order)?,
        order,
    }))
}

type Best = super::vecops::Best<CrossPair>;

fn consider(pair: Option<CrossPair>, phase: &'static str, best: &mut Best) -> bool {
    super::vecops::consider(pair, phase, best, |p| p.ratio)
}

/// Seeded triples, random triples, perturbations of the varying argument, then a (1+1) local search that moves
/// the atoms or the weights of one of the three measures in turn (the fixed argument matters too:
/// where the context sits decides how sharply the queries are attended), with step x1.5 on
/// success and x0.8 on failure. All atoms stay in B_R.
pub fn search_cross_pairs(
    layer: &AttentionLayer<f64>,
    opts: &CrossSearchOptions,
) -> Result<CrossSearchResult> {
    crate::domain::check_radius(opts.radius)?;
    check_at_least("query atoms", opts.query_atoms, 1)?;
    check_at_least("context atoms", opts.context_atoms, 1)?;
    check_positive("perturbation", opts.perturbation)?;
    check_order(opts.order)?;
    check_repeats("`random_pairs`", opts.random_pairs)?;
    check_repeats("`perturbed_pairs`", opts.perturbed_pairs)?;
    check_repeats("`local_steps`", opts.local_steps)?;
    let (most, which) = if opts.query_atoms >= opts.context_atoms {
        (opts.query_atoms, "`query_atoms`")
    } else {
        (opts.context_atoms, "`context_atoms`")
    };
    super::check_search_memory(layer, most, which)?;
    let (d, r, arg, p) = (layer.d_in(), opts.radius, opts.argument, opts.order);
    let (nq, nc) = (opts.query_atoms, opts.context_atoms);
    let n_vary = match arg {
        CrossArgument::Queries => nq,
        CrossArgument::Context => nc,
    };
    let mut rng = SplitMix::new(opts.seed);
    let fresh = |rng: &mut SplitMix, k: usize| {
        Measure::normalised(random_points(rng, k, d, r), random_weights(rng, k))
    };
    let mut evals = 0usize;
    let mut best: Best = None;
    let mut phase_best = [None; 3];
    for (q, c, m) in &opts.seeds {
        evals += 1;
        consider(cross_ratio(layer, arg, q, c, m, p)?, "seeded", &mut best);
    }
    for _ in 0..opts.random_pairs {
        crate::cancel::check()?;
        let (q, c, m) = (
            fresh(&mut rng, nq)?,
            fresh(&mut rng, nc)?,
            fresh(&mut rng, n_vary)?,
        );
        evals += 1;
        consider(cross_ratio(layer, arg, &q, &c, &m, p)?, "random", &mut best);
    }
    phase_best[0] = best.as_ref().map(|b| b.0.ratio);
    for i in 0..opts.perturbed_pairs {
        crate::cancel::check()?;
        let (q, c) = (fresh(&mut rng, nq)?, fresh(&mut rng, nc)?);
        let base = match arg {
            CrossArgument::Queries => &q,
            CrossArgument::Context => &c,
        };
        let m = if i % 2 == 0 {
            Measure::normalised(
                moved_points(&mut rng, base, opts.perturbation * r, r),
                base.weights().to_vec(),
            )?
        } else {
            Measure::normalised(
                base.points().to_owned(),
                moved_weights(&mut rng, base, opts.perturbation),
            )?
        };
        evals += 1;
        consider(
            cross_ratio(layer, arg, &q, &c, &m, p)?,
            "perturbed",
            &mut best,
        );
    }
    phase_best[1] = best.as_ref().map(|b| b.0.ratio);
    let mut step = opts.perturbation.max(0.05);
    for t in 0..opts.local_steps {
        crate::cancel::check()?;
        let Some((cur, _)) = best.as_ref() else {
            break;
        };
        let (mut q, mut c, mut m) = (cur.queries.clone(), cur.context.clone(), cur.moved.clone());
        let target = match t % 3 {
            0 => &mut m,
            1 => &mut q,
            _ => &mut c,
        };
        *target = if (t / 3) % 2 == 0 {
            Measure::normalised(
                moved_points(&mut rng, target, step * r, r),
                target.weights().to_vec(),
            )?
        } else {
            Measure::normalised(
                target.points().to_owned(),
                moved_weights(&mut rng, target, step),
            )?
        };
        evals += 1;
        if consider(cross_ratio(layer, arg, &q, &c, &m, p)?, "local", &mut best) {
            step *= 1.5;
        } else {
            step = (step * 0.8).max(1e-6);
        }
    }
    phase_best[2] = best.as_ref().map(|b| b.0.ratio);
    let (best, phase) = best.ok_or_else(|| {
        Error::Numerical("no triple with W_p > 0 between the varying measures was found".into())
    })?;
    Ok(CrossSearchResult {
        best,
        phase,
        evaluations: evals,
        phase_best,
    })
}
