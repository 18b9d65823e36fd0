//! `robustness`: for an input X and a tolerance on the output (a distance delta, or a floor on the
//! cosine similarity of a pooled embedding), the largest ball radius for which the output
//! provably stays within it (the certified radius: Lemma C's output-change bound, bisected) beside
//! the smallest radius at which projected gradient ascent finds an input that leaves it (the
//! attack radius, an upper bound on the true robustness radius). Their ratio measures the
//! certificate's tightness (docs/commands.md#robustness).

use super::stack_ball::{Intervals, StackCentre};
use super::OnProgress;
use crate::bounds::ball::BallKind;
use crate::derivatives::AttentionMemory;
use crate::error::{
    check_at_least, check_in, check_positive, check_repeats, Error, Interval, Result,
};
use crate::estimation::{lanczos, LanczosOptions};
use crate::linalg::{frobenius, SplitMix};
use crate::models::{Model, Pool, Scope, StackWeights};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

/// Relative width at which the bisections stop.
const BISECTION_RATIO: f64 = 1.02;
/// Doublings (or halvings) tried before a radius search gives up.
const MAX_DOUBLINGS: usize = 60;
/// The attack's search stops at this multiple of ||X||_F (plus the certified radius).
const ATTACK_REACH: f64 = 1e3;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustnessRequest {
    pub scope: Scope,
    pub pool: Pool,
    /// The output must stay within this Frobenius (or l2) distance of f(X)...
    pub delta: Option<f64>,
    /// ...or (pooled outputs) keep at least this cosine similarity with f(X).
    pub cosine: Option<f64>,
    pub ball: BallKind,
    pub failure_probability: f64,
    pub upper_steps: usize,
    pub interval_steps: usize,
    /// The runs of steps Lemma P bounds at the centre, `blocks` or `all`, as for certify.
    pub intervals: Intervals,
    /// Random starts of the attack besides the two along X's top singular vector.
    pub attack_starts: usize,
    pub attack_steps: usize,
    pub seed: u64,
    /// The attention state of every attention sublayer the certificate and the attack read (the
    /// Lemma P runs, Lemma S's centres, the attack's linearisations): dense n x n probabilities,
    /// streaming per-row statistics, or auto (dense exactly when the chain's dense budget check
    /// passes), resolved once by [`StackWeights::resolve_attention`] as for certify.
    pub attention: AttentionMemory,
}

impl Default for RobustnessRequest {
    fn default() -> Self {
        let c = super::certify::CertifyRequest::default();
        Self {
            scope: Scope::Model,
            pool: Pool::None,
            delta: None,
            cosine: None,
            ball: c.ball,
            failure_probability: c.failure_probability,
            upper_steps: c.upper_steps,
            interval_steps: c.interval_steps,
            intervals: c.intervals,
            attack_starts: 2,
            attack_steps: 20,
            seed: 0,
            attention: c.attention,
        }
    }
}

impl RobustnessRequest {
    pub fn check(&self) -> Result<()> {
        match (self.delta, self.cosine) {
            (Some(d), None) => {
                check_positive("`delta`", d)?;
            }
            (None, Some(c)) => {
                check_in("`cosine`", c, Interval::open(0.0, 1.0))?;
                if self.pool == Pool::None {
                    return Err(Error::invalid(
                        "a `cosine` floor compares pooled embeddings: give pool 'mean' or 'mean-normalised' (with scope 'model'), or a distance `delta`",
                    ));
                }
            }
            _ => {
                return Err(Error::invalid(
                    "give exactly one tolerance: `delta` (a distance on the output) or `cosine` (a similarity floor on the pooled embedding)",
                ))
            }
        }
        check_in(
            "`failure_probability`",
            self.failure_probability,
            Interval::open(0.0, 1.0),
        )?;
        check_at_least("`upper_steps`", self.upper_steps, 2)?;
        check_at_least("`interval_steps`", self.interval_steps, 2)?;
        check_repeats("`attack_starts`", self.attack_starts)?;
        check_at_least("`attack_steps`", self.attack_steps, 1)?;
        check_repeats("`attack_steps`", self.attack_steps)?;
        Ok(())
    }
}

#[derive(Serialize)]
pub struct RobustnessReport {
    pub kind: &'static str,
    /// Every Y in the ball of this radius keeps the output within the tolerance (proven, except
    /// with `failure_probability`).
    pub certified_radius: f64,
    pub certified_kind: &'static str,
    pub failure_probability: f64,
    /// The attack found an input at this distance from X (Frobenius, or largest token distance
    /// for the tokens ball) whose output leaves the tolerance; None if it found none.
    pub attack_radius: Option<f64>,
    /// attack_radius / certified_radius.
    pub ratio: Option<f64>,
    /// The distance tolerance on ||f(Y) - f(X)|| the certificate uses (delta, or what the cosine
    /// floor implies).
    pub delta: f64,
    pub cosine: Option<f64>,
    /// The certified bound on ||f(Y) - f(X)|| at the certified radius.
    pub certified_change: f64,
    /// At the attack's input: ||f(Y) - f(X)|| and, for pooled outputs, the cosine similarity.
    pub attack_change: Option<f64>,
    pub attack_cosine: Option<f64>,
    pub ball: BallKind,
    pub scope: Scope,
    pub pool: Pool,
    pub layer: Option<usize>,
    pub family: String,
    pub n: usize,
    pub d: usize,
    /// Lemma P's bound on ||J(X)||_2 and the Lanczos value there.
    pub centre_upper: f64,
    pub centre_attained: f64,
    pub attack_evaluations: usize,
    pub norm: &'static str,
    pub dtype: &'static str,
    /// The attention state the certificate and the attack ran on: "dense" or "streaming" (what
    /// `auto` resolved to).
    pub attention: AttentionMemory,
    /// The runs of steps Lemma P bounded at the centre: "blocks" or "all" (a chain of one or two
    /// steps has none either way).
    pub intervals: Intervals,
    pub seconds: f64,
    pub description: String,
    #[serde(skip)]
    pub attack_input: Option<Mat<f64>>,
}

/// What the tolerance measures at an output.
struct Tolerance {
    /// The distance bound the certificate must meet.
    delta: f64,
    cosine: Option<f64>,
}

fn cosine_of(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let dot: f64 = (0..a.ncols())
        .map(|k| (0..a.nrows()).map(|i| a[(i, k)] * b[(i, k)]).sum::<f64>())
        .sum();
    dot / (frobenius(a) * frobenius(b))
}

impl Tolerance {
    /// The objective the attack raises (it leaves the tolerance when this passes `limit`) and
    /// its gradient with respect to the output.
    fn objective(&self, fy: MatRef<'_, f64>, fx: MatRef<'_, f64>) -> (f64, Mat<f64>) {
        match self.cosine {
            None => {
                let diff = fy - fx;
                let dist = frobenius(diff.as_ref());
                let g = if dist > 0.0 {
                    &diff * (1.0 / dist)
                } else {
                    diff
                };
                (dist, g)
            }
            Some(_) => {
                let (ny, nx) = (frobenius(fy), frobenius(fx));
                let c = cosine_of(fy, fx);
                // d(1 - cos)/dfy = -(fx / (|fy| |fx|) - cos fy / |fy|^2).
                let g = Mat::from_fn(fy.nrows(), fy.ncols(), |i, k| {
                    -(fx[(i, k)] / (ny * nx) - c * fy[(i, k)] / (ny * ny))
                });
                (1.0 - c, g)
            }
        }
    }

    fn limit(&self) -> f64 {
        self.cosine.map_or(self.delta, |c| 1.0 - c)
    }
}

/// The robustness radii of `req.scope` for `model` at X.
pub fn run(
    req: &RobustnessRequest,
    model: &Model,
    layer: Option<usize>,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<RobustnessReport> {
    req.check()?;
    let layer = req.scope.check(layer, req.pool)?;
    let weights = model.stack(req.scope, layer, req.pool)?;
    run_stack(req, &weights, model.family().name(), x, on_progress)
}

pub fn run_stack(
    req: &RobustnessRequest,
    weights: &StackWeights,
    family: &str,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<RobustnessReport> {
    req.check()?;
    let start = std::time::Instant::now();
    let (n, d) = (x.nrows(), x.ncols());
    let mut step = super::progress::stages(on_progress, "robustness", 3);
    step(0);
    let centre = StackCentre::new(
        weights,
        x,
        req.attention,
        req.failure_probability,
        req.upper_steps,
        req.interval_steps,
        req.intervals,
        req.seed,
    )?;
    let fx = centre.output.clone();
    if let (Pool::MeanNormalised, Some(d)) = (req.pool, req.delta) {
        if d >= 2.0 {
            return Err(Error::invalid(format!(
                "`delta` = {d}: normalised embeddings are unit vectors, always within 2 of each other, so no input leaves this tolerance"
            )));
        }
    }
    let tol = match req.cosine {
        None => Tolerance {
            delta: req.delta.expect("checked"),
            cosine: None,
        },
        Some(c) => {
            // Unit outputs: |a - b|^2 = 2 (1 - cos). Otherwise cos >= C whenever
            // |a - b| <= |b| sqrt(1 - C^2) (the angle's sine is at most |a - b| / |b|).
            let delta = if req.pool == Pool::MeanNormalised {
                (2.0 * (1.0 - c)).sqrt()
            } else {
                frobenius(fx.as_ref()) * (1.0 - c * c).sqrt()
            };
            Tolerance {
                delta: delta.next_down(),
                cosine: Some(c),
            }
        }
    };
    step(1);
    // Certified: the largest radius (up to the bisection's width) whose output-change bound is
    // within delta. Every radius tried is its own proven statement; overflow counts as unproven.
    let proven = |eps: f64| -> Result<Option<f64>> {
        match centre.at(req.ball, eps) {
            Ok((_, change)) => Ok((change <= tol.delta).then_some(change)),
            Err(Error::Invalid(_)) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let rho_of = |eps: f64| req.ball.frobenius_radius(eps, n) / eps;
    // From the linear guess, but never beyond the reach of any search (the tolerance may be
    // larger than any change the scope can make).
    let scale = frobenius(x) + 1.0;
    let mut lo = (tol.delta / (centre.whole.value * rho_of(1.0))).min(ATTACK_REACH * scale);
    let mut lo_change = None;
    for _ in 0..MAX_DOUBLINGS {
        if !(lo.is_normal() && lo > 0.0) {
            break;
        }
        if let Some(c) = proven(lo)? {
            lo_change = Some(c);
            break;
        }
        lo *= 0.5;
    }
    let Some(mut certified_change) = lo_change else {
        return Err(Error::invalid(format!(
            "no ball radius down to {} keeps the certified output change within {}: the tolerance is too small for this certificate in f64",
            crate::fmt::compact(lo),
            crate::fmt::compact(tol.delta)
        )));
    };
    let mut hi = 2.0 * lo;
    for _ in 0..MAX_DOUBLINGS {
        match proven(hi)? {
            Some(c) => {
                lo = hi;
                certified_change = c;
                hi *= 2.0;
            }
            None => break,
        }
    }
    while hi / lo > BISECTION_RATIO {
        let mid = lo * (hi / lo).sqrt();
        match proven(mid)? {
            Some(c) => {
                lo = mid;
                certified_change = c;
            }
            None => hi = mid,
        }
    }
    let certified_radius = lo;
    step(2);
    // Attack: from the top singular direction at X (both signs) and random directions, on the
    // state the certificate resolved.
    let attention = centre.attention();
    let (_, lin) = weights.linearize_with(x, attention)?;
    let top = lanczos(
        &lin,
        &LanczosOptions {
            seed: req.seed,
            ..Default::default()
        },
        None,
    )?;
    drop(lin);
    let mut evals = 0;
    let mut attack = |eps: f64| -> Result<Option<(Mat<f64>, f64)>> {
        escape(
            weights,
            attention,
            x,
            fx.as_ref(),
            &tol,
            req,
            &top.vector,
            eps,
            &mut evals,
        )
    };
    if let Some((y, _)) = attack(certified_radius)? {
        let dist = distance(req.ball, y.as_ref(), x);
        return Err(Error::Numerical(format!(
            "the attack left the tolerance at distance {dist}, inside the certified radius {certified_radius}: Lemma P's bounds failed (probability at most {}) or the bound is wrong; rerun with another --seed and report it",
            centre.failure_probability
        )));
    }
    let mut found = None;
    // The first radius tried: where the linearisation at X would leave the tolerance (an
    // estimate, only where the search starts; the certified radius was checked above).
    let linear = 0.5 * tol.delta / (top.sigma.max(f64::MIN_POSITIVE) * rho_of(1.0));
    let (mut a_lo, mut a_hi) = (certified_radius, (2.0 * certified_radius).max(linear));
    // Far beyond the input's own size the search stops: the attack found nothing up to there.
    let reach = ATTACK_REACH * (frobenius(x) + certified_radius);
    for _ in 0..MAX_DOUBLINGS {
        if a_hi.is_nan() || a_hi > reach {
            break;
        }
        if let Some(w) = attack(a_hi)? {
            found = Some(w);
            break;
        }
        a_lo = a_hi;
        a_hi *= 2.0;
    }
    if found.is_some() {
        while a_hi / a_lo > BISECTION_RATIO {
            let mid = a_lo * (a_hi / a_lo).sqrt();
            match attack(mid)? {
                Some(w) => {
                    found = Some(w);
                    a_hi = mid;
                }
                None => a_lo = mid,
            }
        }
    }
    step(3);
    let attack_radius = found
        .as_ref()
        .map(|(y, _)| distance(req.ball, y.as_ref(), x));
    let (attack_change, attack_cosine) = match &found {
        Some((y, _)) => {
            let (fy, _) = weights.linearize_with(y.as_ref(), attention)?;
            let change = frobenius((&fy - &fx).as_ref());
            let cos = (req.pool != Pool::None).then(|| cosine_of(fy.as_ref(), fx.as_ref()));
            (Some(change), cos)
        }
        None => (None, None),
    };
    let layer = (weights.scope != Scope::Model).then_some(weights.first_layer);
    let description = format!(
        "scope '{}'{} of a {family} checkpoint around X (n = {n}, d = {d}), {} balls, output distance in the Frobenius norm, f64",
        weights.scope.name(),
        match layer {
            Some(l) => format!(" (layer {l})"),
            None if weights.pool != Pool::None => format!(" with pool '{}'", weights.pool.name()),
            None => String::new(),
        },
        req.ball.name()
    );
    Ok(RobustnessReport {
        kind: "robustness_radius",
        certified_radius,
        certified_kind: centre.whole.kind,
        failure_probability: centre.failure_probability,
        attack_radius,
        ratio: attack_radius.map(|a| a / certified_radius),
        delta: tol.delta,
        cosine: req.cosine,
        certified_change,
        attack_change,
        attack_cosine,
        ball: req.ball,
        scope: weights.scope,
        pool: weights.pool,
        layer,
        family: family.to_string(),
        n,
        d,
        centre_upper: centre.whole.value,
        centre_attained: centre.whole.ritz_sigma.max(top.sigma),
        attack_evaluations: evals,
        norm: "frobenius",
        dtype: "f64",
        attention,
        intervals: req.intervals,
        seconds: start.elapsed().as_secs_f64(),
        description,
        attack_input: found.map(|(y, _)| y),
    })
}

/// ||Y - X||_F, or the largest token distance for the tokens ball.
fn distance(ball: BallKind, y: MatRef<'_, f64>, x: MatRef<'_, f64>) -> f64 {
    let diff = y - x;
    match ball {
        BallKind::Frobenius => frobenius(diff.as_ref()),
        BallKind::Tokens => (0..diff.nrows())
            .map(|i| frobenius(diff.as_ref().subrows(i, 1)))
            .fold(0.0, f64::max),
    }
}

/// Projected gradient ascent of the tolerance's objective inside the ball of radius `eps`: the
/// first input found whose output leaves the tolerance, with its objective.
#[allow(clippy::too_many_arguments)]
fn escape(
    weights: &StackWeights,
    attention: AttentionMemory,
    x: MatRef<'_, f64>,
    fx: MatRef<'_, f64>,
    tol: &Tolerance,
    req: &RobustnessRequest,
    top: &Mat<f64>,
    eps: f64,
    evals: &mut usize,
) -> Result<Option<(Mat<f64>, f64)>> {
    let (n, d) = (x.nrows(), x.ncols());
    let rho = req.ball.frobenius_radius(eps, n);
    let project = |y: &mut Mat<f64>| req.ball.project(y, x, eps);
    let mut rng = SplitMix::new(req.seed.wrapping_add(0x00e5_ca9e));
    let mut starts: Vec<Mat<f64>> = vec![top * 1.0, top * -1.0];
    for _ in 0..req.attack_starts {
        starts.push(rng.gauss_mat(n, d));
    }
    for dir in starts {
        let nd = frobenius(dir.as_ref());
        let mut y = Mat::from_fn(n, d, |i, k| x[(i, k)] + dir[(i, k)] * (rho / nd));
        project(&mut y);
        for t in 0..req.attack_steps {
            crate::cancel::check()?;
            let (fy, lin) = weights.linearize_with(y.as_ref(), attention)?;
            *evals += 1;
            let (value, g_out) = tol.objective(fy.as_ref(), fx);
            if value > tol.limit() {
                return Ok(Some((y, value)));
            }
            let g = crate::derivatives::LinearizedMap::vjp(&lin, g_out.as_ref())?;
            let ng = frobenius(g.as_ref());
            if !(ng > 0.0 && ng.is_finite()) {
                break;
            }
            // A step of half the ball, shrinking, so that the ascent can settle on the sphere.
            let step = 0.5 * rho * 0.85f64.powi(t as i32) / ng;
            y = Mat::from_fn(n, d, |i, k| y[(i, k)] + step * g[(i, k)]);
            project(&mut y);
        }
        let (fy, _) = weights.linearize_with(y.as_ref(), attention)?;
        *evals += 1;
        let (value, _) = tol.objective(fy.as_ref(), fx);
        if value > tol.limit() {
            return Ok(Some((y, value)));
        }
    }
    Ok(None)
}
