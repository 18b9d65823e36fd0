//! The attained side of a ball certificate: the largest ||J(Y)||_2 found by projected gradient
//! ascent inside a ball around X (Frobenius or per-token). An attained value, a lower bound on
//! sup ||J|| over the ball, never a certificate.

use super::adversarial::{climb_in, evaluate, ClimbRule, Linearizable, Point};
use super::lanczos::LanczosOptions;
use crate::bounds::ball::BallKind;
use crate::error::{check_positive, check_repeats, check_work, Result};
use crate::linalg::SplitMix;
use faer::{Mat, MatRef};

#[derive(Clone, Debug)]
pub struct BallAscentOptions {
    /// Random starts (uniform directions at a random fraction of the radius) beside X itself.
    pub random_starts: usize,
    /// Ascent steps per start.
    pub steps: usize,
    pub seed: u64,
    pub lanczos: LanczosOptions,
}

impl Default for BallAscentOptions {
    fn default() -> Self {
        Self {
            random_starts: 4,
            steps: 30,
            seed: 0,
            lanczos: LanczosOptions::default(),
        }
    }
}

impl BallAscentOptions {
    pub(crate) fn check(&self) -> Result<()> {
        check_repeats("`attack_starts`", self.random_starts)?;
        check_repeats("`attack_steps`", self.steps)?;
        check_work(&[
            ("`attack_starts`", self.random_starts.max(1)),
            ("`attack_steps`", self.steps.max(1)),
        ])?;
        self.lanczos.check()
    }
}

pub struct BallAscentResult {
    /// The best ||J(Y)||_2 found, and its Y (inside the ball).
    pub sigma: f64,
    pub y: Mat<f64>,
    /// ||J(X)||_2 at the centre.
    pub centre_sigma: f64,
    pub evaluations: usize,
}

/// Ascent on sigma(Y) = ||J(Y)||_2 over the ball of radius `eps` around `centre`: from the centre
/// and from `random_starts` random points of the ball.
pub fn ball_ascent<F: Linearizable>(
    f: &F,
    centre: MatRef<'_, f64>,
    ball: BallKind,
    eps: f64,
    opts: &BallAscentOptions,
) -> Result<BallAscentResult> {
    opts.check()?;
    check_positive("epsilon", eps)?;
    let (n, d) = (centre.nrows(), centre.ncols());
    let rho = ball.frobenius_radius(eps, n);
    let project = |y: &mut Mat<f64>| ball.project(y, centre, eps);
    let rule = ClimbRule {
        step: 0.25 * rho,
        // Small against the ball, so that the gradient is the one inside it.
        fd_eps: 1e-4 * eps.min(1.0),
        steps: opts.steps,
    };
    let mut evals = 0;
    let first = evaluate(f, centre.to_owned(), &opts.lanczos, &mut evals)?;
    let centre_sigma = first.sigma;
    let mut best: Point = climb_in(f, &project, first, &rule, &opts.lanczos, &mut evals)?;
    let mut rng = SplitMix::new(opts.seed);
    for _ in 0..opts.random_starts {
        let dir: Mat<f64> = rng.gauss_mat(n, d);
        let mut y = Mat::from_fn(n, d, |i, k| {
            centre[(i, k)] + dir[(i, k)] * (1e3 * rho.max(f64::MIN_POSITIVE))
        });
        project(&mut y);
        // Pulled in to a random fraction of the way, so that starts are not all on the sphere.
        let t = 0.5 + 0.5 * rng.uniform();
        let y = Mat::from_fn(n, d, |i, k| {
            centre[(i, k)] + (y[(i, k)] - centre[(i, k)]) * t
        });
        let p = evaluate(f, y, &opts.lanczos, &mut evals)?;
        let p = climb_in(f, &project, p, &rule, &opts.lanczos, &mut evals)?;
        if p.sigma > best.sigma {
            best = p;
        }
    }
    Ok(BallAscentResult {
        sigma: best.sigma,
        y: best.x,
        centre_sigma,
        evaluations: evals,
    })
}
