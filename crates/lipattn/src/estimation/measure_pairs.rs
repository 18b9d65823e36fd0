//! Attained W1 (or W2) ratios of self-attention on measures
//! (docs/background.md#attained-lower-bounds): pairs (mu, nu) of weighted measures on B_R with
//! W_p(F mu, F nu) / W_p(mu, nu) as large as a search can make it, W_p computed exactly by the
//! network simplex. The best ratio is a lower bound on the W_p Lipschitz constant of F on P(B_R),
//! attained by the returned pair; never a certificate.

use super::vecops::project_rows;
use crate::attention::AttentionLayer;
use crate::error::{check_at_least, check_positive, check_repeats, Error, Result};
use crate::linalg::SplitMix;
use crate::measure::Measure;
use crate::transport;
use faer::Mat;

#[derive(Clone, Debug)]
pub struct PairSearchOptions {
    pub radius: f64,
    /// Atoms per measure.
    pub atoms: usize,
    /// Independent random pairs.
    pub random_pairs: usize,
    /// Pairs (mu, mu moved slightly): atoms displaced by `perturbation` R, or weights perturbed.
    pub perturbed_pairs: usize,
    pub perturbation: f64,
    /// Proposals of the local search from the best pair (moves of atoms and of weights).
    pub local_steps: usize,
    /// Wasserstein order p (1 or 2) of both distances in the ratio.
    pub order: u32,
    /// Pairs (mu, nu) evaluated before the random ones, e.g. built from the weights' structure
    /// (random pairs in high dimension rarely line up with the few directions that matter).
    pub seeds: Vec<(Measure, Measure)>,
    pub seed: u64,
}

impl Default for PairSearchOptions {
    fn default() -> Self {
        Self {
            radius: 1.0,
            atoms: 8,
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

/// A pair with its attained ratio; `w1_in = W_p(mu, nu) > 0`, `w1_out = W_p(F mu, F nu)` with
/// p = `order` (the names keep the default order 1, which every earlier caller uses).
#[derive(Clone, Debug)]
pub struct MeasurePair {
    pub mu: Measure,
    pub nu: Measure,
    pub w1_in: f64,
    pub w1_out: f64,
    pub ratio: f64,
    pub order: u32,
}

impl MeasurePair {
    /// Writes `{prefix}mu_points.npy`, `{prefix}mu_weights.npy` and the same for nu.
    pub fn save(&self, dir: &std::path::Path, prefix: &str) -> Result<()> {
        Measure::save_named(dir, prefix, &[("mu", &self.mu), ("nu", &self.nu)])
    }
}

#[derive(Clone, Debug)]
pub struct PairSearchResult {
    pub best: MeasurePair,
    /// Which phase found it: "seeded", "random", "perturbed" or "local".
    pub phase: &'static str,
    /// Pairs evaluated (each: two forward passes and two exact transports).
    pub evaluations: usize,
    /// Best ratio after each phase, in order seeded and random, perturbed, local; None while no
    /// pair has been found (e.g. no seeds and no random pairs), rather than a NaN that reads as a
    /// value.
    pub phase_best: [Option<f64>; 3],
}

/// The attained W1 ratio of one pair; None when W1(mu, nu) vanishes (the ratio is undefined).
pub fn ratio(
    layer: &AttentionLayer<f64>,
    mu: &Measure,
    nu: &Measure,
) -> Result<Option<MeasurePair>> {
    ratio_p(layer, mu, nu, 1)
}

/// [`ratio`] in W_p, p = `order` (1 or 2).
pub fn ratio_p(
    layer: &AttentionLayer<f64>,
    mu: &Measure,
    nu: &Measure,
    order: u32,
) -> Result<Option<MeasurePair>> {
    check_order(order)?;
    let Some(w1_in) = input_distance(mu, nu, order)? else {
        return Ok(None);
    };
    let fmu = layer.self_attention(mu)?;
    let fnu = layer.self_attention(nu)?;
    let w1_out = transport::exact(&fmu, &fnu, order)?.distance;
    Ok(Some(MeasurePair {
        mu: mu.clone(),
        nu: nu.clone(),
        w1_in,
        w1_out,
        ratio: finite_ratio(w1_out, w1_in, order)?,
        order,
    }))
}

pub(super) fn check_order(order: u32) -> Result<()> {
    if order == 1 || order == 2 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "Wasserstein order must be 1 or 2, got {order}"
        )))
    }
}

/// W_p(a, b), or None when it is below rounding of the transport cost: the pair is then
/// indistinguishable and its ratio undefined (NaN falls here too).
pub(super) fn input_distance(a: &Measure, b: &Measure, order: u32) -> Result<Option<f64>> {
    let w = transport::exact(a, b, order)?.distance;
    Ok((w > 1e-12 * (1.0 + a.points().norm_l2())).then_some(w))
}

pub(super) fn finite_ratio(out: f64, input: f64, order: u32) -> Result<f64> {
    let r = out / input;
    if r.is_finite() {
        Ok(r)
    } else {
        Err(Error::Numerical(format!(
            "W{order} ratio is not finite ({} / {})",
            crate::fmt::compact(out),
            crate::fmt::compact(input)
        )))
    }
}

pub(super) fn random_points(rng: &mut SplitMix, n: usize, d: usize, radius: f64) -> Mat<f64> {
    let mut x: Mat<f64> = rng.gauss_mat(n, d);
    for i in 0..n {
        let nrm = (0..d).map(|k| x[(i, k)].powi(2)).sum::<f64>().sqrt();
        // Uniform in the ball: radius R U^(1/d).
        let r = radius * rng.uniform().powf(1.0 / d as f64);
        for k in 0..d {
            x[(i, k)] *= r / nrm.max(f64::MIN_POSITIVE);
        }
    }
    x
}

pub(super) fn random_weights(rng: &mut SplitMix, n: usize) -> Vec<f64> {
    (0..n).map(|_| 0.05 + rng.uniform()).collect()
}

pub(super) fn moved_points(rng: &mut SplitMix, m: &Measure, step: f64, radius: f64) -> Mat<f64> {
    let p = m.points();
    let mut x = Mat::from_fn(p.nrows(), p.ncols(), |i, k| p[(i, k)] + step * rng.gauss());
    project_rows(&mut x, radius);
    x
}

pub(super) fn moved_weights(rng: &mut SplitMix, m: &Measure, step: f64) -> Vec<f64> {
    m.weights()
        .iter()
        .map(|w| (w * (step * rng.gauss()).exp()).max(1e-6))
        .collect()
}

type Best = super::vecops::Best<MeasurePair>;

fn consider(pair: Option<MeasurePair>, phase: &'static str, best: &mut Best) -> bool {
    super::vecops::consider(pair, phase, best, |p| p.ratio)
}

/// Seeded pairs, random pairs, perturbations of one measure, then a (1+1) local search with step adaptation
/// from the best pair found. Uniform or weighted atoms, all on B_R.
pub fn search_pairs(
    layer: &AttentionLayer<f64>,
    opts: &PairSearchOptions,
) -> Result<PairSearchResult> {
    crate::domain::check_radius(opts.radius)?;
    check_at_least("atoms", opts.atoms, 1)?;
    check_positive("perturbation", opts.perturbation)?;
    check_order(opts.order)?;
    check_repeats("`random_pairs`", opts.random_pairs)?;
    check_repeats("`perturbed_pairs`", opts.perturbed_pairs)?;
    check_repeats("`local_steps`", opts.local_steps)?;
    super::check_search_memory(layer, opts.atoms, "`atoms`")?;
    let (n, d, r) = (opts.atoms, layer.d_in(), opts.radius);
    let mut rng = SplitMix::new(opts.seed);
    let mut evals = 0usize;
    let mut best: Best = None;
    let mut phase_best = [None; 3];
    for (mu, nu) in &opts.seeds {
        evals += 1;
        consider(ratio_p(layer, mu, nu, opts.order)?, "seeded", &mut best);
    }
    for _ in 0..opts.random_pairs {
        crate::cancel::check()?;
        let mu = Measure::normalised(
            random_points(&mut rng, n, d, r),
            random_weights(&mut rng, n),
        )?;
        let nu = Measure::normalised(
            random_points(&mut rng, n, d, r),
            random_weights(&mut rng, n),
        )?;
        evals += 1;
        consider(ratio_p(layer, &mu, &nu, opts.order)?, "random", &mut best);
    }
    phase_best[0] = best.as_ref().map(|b| b.0.ratio);
    for i in 0..opts.perturbed_pairs {
        crate::cancel::check()?;
        let mu = Measure::normalised(
            random_points(&mut rng, n, d, r),
            random_weights(&mut rng, n),
        )?;
        let nu = if i % 2 == 0 {
            Measure::normalised(
                moved_points(&mut rng, &mu, opts.perturbation * r, r),
                mu.weights().to_vec(),
            )?
        } else {
            Measure::normalised(
                mu.points().to_owned(),
                moved_weights(&mut rng, &mu, opts.perturbation),
            )?
        };
        evals += 1;
        consider(
            ratio_p(layer, &mu, &nu, opts.order)?,
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
        let (mut mu, mut nu) = (cur.mu.clone(), cur.nu.clone());
        let target = if t % 2 == 0 { &mut nu } else { &mut mu };
        *target = if t % 4 < 2 {
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
        if consider(ratio_p(layer, &mu, &nu, opts.order)?, "local", &mut best) {
            step *= 1.5;
        } else {
            step = (step * 0.8).max(1e-6);
        }
    }
    phase_best[2] = best.as_ref().map(|b| b.0.ratio);
    let (best, phase) = best.ok_or_else(|| {
        Error::Numerical("no pair with W1(mu, nu) > 0 was found (a single atom in B_R?)".into())
    })?;
    Ok(PairSearchResult {
        best,
        phase,
        evaluations: evals,
        phase_best,
    })
}
