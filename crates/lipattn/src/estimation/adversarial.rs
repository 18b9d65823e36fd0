//! Adversarial inputs for the local constant (docs/background.md#attained-lower-bounds): the
//! construction of Castin, Ablin, Peyre (2024) and a projected multi-start ascent on
//! sigma(X) = ||J(X)||_2 over (B_R)^n. Every value returned is attained at the returned X, so it is
//! a lower bound on the Lipschitz constant of the token map on (B_R)^n; none is a certificate.

use super::check_search_memory;
use super::lanczos::{lanczos, LanczosOptions};
use super::vecops::{max_row_norm, project_rows};
use crate::attention::{AttentionLayer, Kernel};
use crate::derivatives::streaming::StreamingLinearization;
use crate::derivatives::{Linearization, LinearizedMap};
use crate::domain::Domain;
use crate::error::{check_positive, check_repeats, check_work, Error, Result};
use crate::linalg::SplitMix;
use faer::{Mat, MatRef};

/// x_1 = R u, x_2..n = R u / 2 with u the top eigenvector of the symmetric part of
/// A = W_Q^T W_K / sqrt(dk) for head `head` (W_Q^T W_Q for the tied L2 kernel).
pub fn adversarial_input(
    layer: &AttentionLayer<f64>,
    head: usize,
    n: usize,
    radius: f64,
) -> Result<Mat<f64>> {
    let domain = Domain::new(radius, n, false)?;
    let d = layer.d_in();
    crate::budget::check(
        || format!("the adversarial input of {n} tokens of width {d} (`n`)"),
        crate::budget::bytes_of(&[n, d], 8),
    )?;
    adversarial_from_direction(&adversarial_direction(layer, head)?, &domain)
}

/// The unit vector u of [`adversarial_input`]; it does not depend on n or R, so a sweep over
/// either computes it once.
pub fn adversarial_direction(layer: &AttentionLayer<f64>, head: usize) -> Result<Vec<f64>> {
    let h = layer.head(head, false)?;
    let wk = match layer.kernel {
        Kernel::Dot => &h.wk,
        Kernel::L2 => &h.wq,
    };
    let a = h.wq.transpose() * wk * layer.score_scale::<f64>();
    let sym = Mat::from_fn(a.nrows(), a.ncols(), |i, j| 0.5 * (a[(i, j)] + a[(j, i)]));
    Ok(super::transition::top_eigenvector(&sym)?.0)
}

/// The construction of [`adversarial_input`] along a given unit direction `u`, n tokens in B_R
/// (the mask does not change the construction, only what is measured there).
pub fn adversarial_from_direction(u: &[f64], domain: &Domain) -> Result<Mat<f64>> {
    let r = domain.radius;
    Ok(Mat::from_fn(domain.n, u.len(), |i, k| {
        if i == 0 {
            r * u[k]
        } else {
            0.5 * r * u[k]
        }
    }))
}

#[derive(Clone, Debug)]
pub struct AscentOptions {
    /// Every token stays in the closed ball B_R.
    pub radius: f64,
    /// Random starts in addition to the adversarial construction (one per head).
    pub random_starts: usize,
    /// Accepted ascent steps per start, at most.
    pub steps: usize,
    /// Central-difference step along v for the gradient of <u, J(X) v>, relative to R.
    pub fd_eps: f64,
    /// First step length as a fraction of R sqrt(n) (the scale of ||X||_F).
    pub initial_step: f64,
    /// Accuracy of each evaluation of sigma.
    pub lanczos: LanczosOptions,
    pub seed: u64,
    /// Climb the causally masked map (query i sees tokens 0..=i), as GPT-2-family models compute it.
    pub causal: bool,
}

impl Default for AscentOptions {
    fn default() -> Self {
        Self {
            radius: 1.0,
            random_starts: 4,
            steps: 20,
            fd_eps: 1e-5,
            initial_step: 0.05,
            lanczos: LanczosOptions {
                tol: 1e-8,
                max_iter: 200,
                seed: 0,
            },
            seed: 0,
            causal: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AscentResult {
    /// The best attained ||J(X)||_2 (a Lanczos Ritz value at `x`).
    pub sigma: f64,
    /// The input attaining it, every row in B_R.
    pub x: Mat<f64>,
    /// Its top right singular vector (n x d, unit Frobenius norm).
    pub vector: Mat<f64>,
    /// The best value among the adversarial constructions alone, and its input.
    pub construction_sigma: f64,
    pub construction_x: Mat<f64>,
    /// Which start gave the best value (0..heads: the constructions; then one transition start
    /// per head that has one (`estimation::transition`); then the random starts).
    pub best_start: usize,
    /// Evaluations of sigma (each a linearisation and a Lanczos run).
    pub evaluations: usize,
}

impl AscentResult {
    pub fn save(&self, x_path: &std::path::Path, v_path: Option<&std::path::Path>) -> Result<()> {
        crate::npy::write_matrix(x_path, self.x.as_ref())?;
        if let Some(p) = v_path {
            crate::npy::write_matrix(p, self.vector.as_ref())?;
        }
        Ok(())
    }
}

pub(crate) struct Point {
    pub x: Mat<f64>,
    pub sigma: f64,
    pub v: Mat<f64>,
    pub u: Mat<f64>,
}

impl AscentOptions {
    /// Every option's own rule and the cap on their product (`error::check_work`).
    pub(crate) fn check(&self) -> Result<()> {
        check_positive("fd_eps", self.fd_eps)?;
        check_positive("initial_step", self.initial_step)?;
        check_repeats("`random_starts`", self.random_starts)?;
        check_repeats("`steps`", self.steps)?;
        check_work(&[
            ("`random_starts`", self.random_starts),
            ("`steps`", self.steps),
        ])?;
        self.lanczos.check()
    }
}

/// A random start: Gaussian rows rescaled to norms drawn uniformly in [R/2, R].
pub(crate) fn random_start(rng: &mut SplitMix, n: usize, d: usize, radius: f64) -> Mat<f64> {
    let mut x: Mat<f64> = rng.gauss_mat(n, d);
    for r in 0..n {
        let nrm = (0..d).map(|k| x[(r, k)].powi(2)).sum::<f64>().sqrt();
        let row_radius = radius * (0.5 + 0.5 * rng.uniform());
        for k in 0..d {
            x[(r, k)] *= row_radius / nrm.max(f64::MIN_POSITIVE);
        }
    }
    x
}

/// A map whose local constant the ascent climbs: it can be linearised at any input of the domain.
pub trait Linearizable {
    type At<'a>: LinearizedMap<f64>
    where
        Self: 'a;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Self::At<'a>>;
}

/// A plain attention layer under a fixed mask, uniform weights.
pub(crate) struct Masked<'l> {
    pub layer: &'l AttentionLayer<f64>,
    pub causal: bool,
}

impl Linearizable for Masked<'_> {
    type At<'a>
        = Linearization<'a, f64>
    where
        Self: 'a;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Linearization<'a, f64>> {
        Linearization::new(self.layer, x, None, self.causal)
    }
}

/// [`Masked`] on the streaming attention state (docs/streaming.md): no n x n matrix, the same
/// map to rounding.
pub(crate) struct MaskedStreaming<'l> {
    pub layer: &'l AttentionLayer<f64>,
    pub causal: bool,
    /// Queries and keys per tile.
    pub block: usize,
}

impl Linearizable for MaskedStreaming<'_> {
    type At<'a>
        = StreamingLinearization<'a, f64>
    where
        Self: 'a;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<StreamingLinearization<'a, f64>> {
        StreamingLinearization::new(self.layer, x, None, self.causal, self.block)
    }
}

/// A rotary sublayer (positions 0..n-1) on the streaming attention state
/// (`StreamingRotaryLinearization`): the same map as the dense one to rounding.
pub(crate) struct RotaryStreaming<'l> {
    pub layer: &'l crate::attention::RotaryAttention,
    /// Queries and keys per tile.
    pub block: usize,
}

impl Linearizable for RotaryStreaming<'_> {
    type At<'a>
        = crate::attention::StreamingRotaryLinearization<'a, f64>
    where
        Self: 'a;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Self::At<'a>> {
        crate::attention::StreamingRotaryLinearization::new(self.layer, x, self.block)
    }
}

impl Linearizable for crate::attention::RotaryAttention {
    type At<'a> = crate::attention::rotary::RotaryLinearization<'a>;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Self::At<'a>> {
        crate::attention::rotary::RotaryLinearization::new(self, x)
    }
}

pub(crate) fn evaluate<F: Linearizable>(
    f: &F,
    x: Mat<f64>,
    opts: &LanczosOptions,
    evals: &mut usize,
) -> Result<Point> {
    *evals += 1;
    let lin = f.linearize(x.as_ref())?;
    let top = lanczos(&lin, opts, None)?;
    Ok(Point {
        x,
        sigma: top.sigma,
        v: top.vector,
        u: top.left,
    })
}

/// Gradient of sigma at a simple top singular value: d sigma = <u, D^2 f(X)[v, dX]>, which by
/// symmetry of the second derivative is <(J(X + e v) - J(X - e v))^T u / (2e), dX>.
fn gradient<F: Linearizable>(f: &F, p: &Point, eps: f64) -> Result<Mat<f64>> {
    let plus = &p.x + &p.v * eps;
    let minus = &p.x - &p.v * eps;
    let gp = f.linearize(plus.as_ref())?.vjp(p.u.as_ref())?;
    let gm = f.linearize(minus.as_ref())?.vjp(p.u.as_ref())?;
    Ok((gp - gm) * (0.5 / eps))
}

pub(crate) fn climb<F: Linearizable>(
    f: &F,
    domain: &Domain,
    p: Point,
    opts: &AscentOptions,
    evals: &mut usize,
) -> Result<Point> {
    let rule = ClimbRule {
        step: opts.initial_step * domain.radius * (domain.n as f64).sqrt(),
        fd_eps: opts.fd_eps * domain.radius,
        steps: opts.steps,
    };
    climb_in(
        f,
        &|x: &mut Mat<f64>| project_rows(x, domain.radius),
        p,
        &rule,
        &opts.lanczos,
        evals,
    )
}

/// The step rule of a projected ascent: the first step length, the central-difference step of
/// the gradient and the number of steps.
pub(crate) struct ClimbRule {
    pub step: f64,
    pub fd_eps: f64,
    pub steps: usize,
}

/// Projected gradient ascent on sigma from `p` with backtracking, projecting every trial point
/// with `project` (onto whatever set the search is confined to).
pub(crate) fn climb_in<F: Linearizable>(
    f: &F,
    project: &dyn Fn(&mut Mat<f64>),
    mut p: Point,
    rule: &ClimbRule,
    lanczos_opts: &LanczosOptions,
    evals: &mut usize,
) -> Result<Point> {
    let mut step = rule.step;
    for _ in 0..rule.steps {
        crate::cancel::check()?;
        let g = gradient(f, &p, rule.fd_eps)?;
        let gn = g.norm_l2();
        if !(gn.is_finite() && gn > 0.0) {
            break;
        }
        let mut accepted = false;
        for _ in 0..10 {
            let mut x = &p.x + &g * (step / gn);
            project(&mut x);
            let q = evaluate(f, x, lanczos_opts, evals)?;
            if q.sigma > p.sigma {
                p = q;
                step *= 1.5;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    Ok(p)
}

/// Multi-start projected gradient ascent on sigma(X) over (B_R)^n with uniform weights, masked
/// causally or not (`opts.causal`): the constructions of [`adversarial_input`] for each head, then `random_starts` random
/// inputs, each climbed with backtracking. `start`, when given, is climbed too (after projection).
pub fn ascent(
    layer: &AttentionLayer<f64>,
    n: usize,
    start: Option<MatRef<'_, f64>>,
    opts: &AscentOptions,
) -> Result<AscentResult> {
    let domain = Domain::new(opts.radius, n, opts.causal)?;
    opts.check()?;
    check_search_memory(layer, n, "`n`")?;
    let d = layer.d_in();
    let masked = Masked {
        layer,
        causal: domain.causal,
    };
    let mut evals = 0;
    let mut fixed: Vec<Mat<f64>> = (0..layer.heads)
        .map(|h| adversarial_from_direction(&adversarial_direction(layer, h)?, &domain))
        .collect::<Result<_>>()?;
    for h in 0..layer.heads {
        fixed.extend(super::transition::transition_start(layer, h, &domain)?);
    }
    let user = match start {
        Some(s) => {
            if s.nrows() != n || s.ncols() != d {
                return Err(Error::shape(
                    "ascent start",
                    format!("{n}x{d}"),
                    format!("{}x{}", s.nrows(), s.ncols()),
                ));
            }
            crate::error::check_finite(
                "ascent start",
                (0..n).flat_map(|i| (0..d).map(move |k| s[(i, k)])),
            )?;
            let mut x = s.to_owned();
            project_rows(&mut x, domain.radius);
            Some(x)
        }
        None => None,
    };
    // Starts in this order: the constructions (one per head), the transition starts (one per
    // head that has one), the random ones, the caller's.
    // The random ones are drawn as they are climbed, not kept in a list, so that memory does not
    // grow with their number.
    let mut rng = SplitMix::new(opts.seed);
    let structured = fixed.len();
    let total = structured + opts.random_starts + usize::from(user.is_some());
    let mut user = user;
    fixed.reverse();
    let mut best: Option<(Point, usize)> = None;
    let mut construction: Option<(f64, Mat<f64>)> = None;
    for i in 0..total {
        let x = if i < structured {
            fixed.pop().expect("the structured starts come first")
        } else if i < structured + opts.random_starts {
            random_start(&mut rng, n, d, domain.radius)
        } else {
            user.take().expect("the caller's start comes last")
        };
        crate::cancel::check()?;
        let p = evaluate(&masked, x, &opts.lanczos, &mut evals)?;
        if i < layer.heads && construction.as_ref().is_none_or(|c| p.sigma > c.0) {
            construction = Some((p.sigma, p.x.clone()));
        }
        let p = climb(&masked, &domain, p, opts, &mut evals)?;
        if best.as_ref().is_none_or(|b| p.sigma > b.0.sigma) {
            best = Some((p, i));
        }
    }
    let (p, best_start) = best.expect("at least one start");
    let (construction_sigma, construction_x) = construction.expect("at least one head");
    debug_assert!(max_row_norm(p.x.as_ref()) <= domain.radius * (1.0 + 1e-12));
    Ok(AscentResult {
        sigma: p.sigma,
        x: p.x,
        vector: p.v,
        construction_sigma,
        construction_x,
        best_start,
        evaluations: evals,
    })
}
