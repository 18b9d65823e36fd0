//! `certify`: a local certificate on a ball around a given input X. Proven: sup ||J(Y)||_2 over the
//! ball is at most `certified`, and ||f(Y) - f(X)||_F at most `output_change`, for the attention
//! sublayer of a dot-product checkpoint (docs/bounds.md#ball-certificates). The bound at the
//! centre is Lemma P's (probabilistic, with its failure probability; docs/estimation.md), the
//! growth over the ball Lemma S's (deterministic). Beside them, `attained`: the largest
//! ||J(Y)||_2 that projected ascent finds inside the ball, a lower bound on the same supremum.

use super::scope_local::UPPER_SEED_OFFSET;
use super::{OnProgress, Progress};
use crate::attention::Kernel;
use crate::bounds::ball::{attention_ball_slope, BallKind, BallSlope};
use crate::error::{check_at_least, check_in, check_positive, Error, Interval, Result};
use crate::estimation::adversarial::Masked;
use crate::estimation::ball_ascent::{ball_ascent, BallAscentOptions};
use crate::estimation::centre_upper::{centre_upper, CentreUpper};
use crate::linalg::max_row_norm;
use crate::linalg::rounding::{add_up, mul_up};
use crate::models::{Pool, Scope, SublayerWeights};
use crate::operator::LayerSource;
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

/// Added to the request's seed for the ascent's random starts.
pub const ATTACK_SEED_OFFSET: u64 = 0x00a7_7ac4;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertifyRequest {
    pub scope: Scope,
    pub pool: Pool,
    /// Radius of the ball around X (Frobenius, or per token).
    pub epsilon: f64,
    pub ball: BallKind,
    /// The certificate holds except with at most this probability (Lemma P at the centre).
    pub failure_probability: f64,
    /// Lanczos steps of Lemma P's bound at the centre.
    pub upper_steps: usize,
    /// Random starts and steps of the ascent inside the ball.
    pub attack_starts: usize,
    pub attack_steps: usize,
    /// Relative accuracy of each local constant the ascent evaluates (an estimate).
    pub tol: f64,
    pub seed: u64,
}

impl Default for CertifyRequest {
    fn default() -> Self {
        let attack = BallAscentOptions::default();
        Self {
            scope: Scope::Attention,
            pool: Pool::None,
            epsilon: 0.0,
            ball: BallKind::Frobenius,
            failure_probability: 1e-6,
            upper_steps: 200,
            attack_starts: attack.random_starts,
            attack_steps: attack.steps,
            tol: attack.lanczos.tol,
            seed: 0,
        }
    }
}

impl CertifyRequest {
    /// Every option's own rule, before anything is loaded.
    pub fn check(&self) -> Result<()> {
        check_positive("`epsilon`", self.epsilon)?;
        check_in(
            "`failure_probability`",
            self.failure_probability,
            Interval::open(0.0, 1.0),
        )?;
        check_at_least("`upper_steps`", self.upper_steps, 2)?;
        if self.scope != Scope::Attention {
            return Err(Error::invalid(format!(
                "scope '{}' has no proven ball bound yet: certify covers scope 'attention' (Lemma S bounds the second derivative of the attention sublayer; the norms, feed-forward and their composition are not bounded yet)",
                self.scope.name()
            )));
        }
        if self.pool != Pool::None {
            return Err(Error::invalid(format!(
                "pool '{}' follows scope 'model' only",
                self.pool.name()
            )));
        }
        self.attack().check()
    }

    fn attack(&self) -> BallAscentOptions {
        BallAscentOptions {
            random_starts: self.attack_starts,
            steps: self.attack_steps,
            seed: self.seed.wrapping_add(ATTACK_SEED_OFFSET),
            lanczos: crate::estimation::LanczosOptions {
                tol: self.tol,
                seed: self.seed,
                ..Default::default()
            },
        }
    }
}

#[derive(Serialize)]
pub struct CertifyReport {
    pub kind: &'static str,
    pub quantity: &'static str,
    /// Upper bound on sup ||J(Y)||_2 over the ball (Frobenius norms).
    pub certified: f64,
    /// "probabilistic": holds except with `failure_probability` (over Lemma P's random start).
    pub certified_kind: &'static str,
    pub failure_probability: f64,
    /// The largest ||J(Y)||_2 found in the ball (attained; a lower bound on the supremum).
    pub attained: f64,
    /// certified / attained.
    pub ratio: f64,
    /// Upper bound on ||f(Y) - f(X)||_F over the ball (same probability).
    pub output_change: f64,
    pub epsilon: f64,
    pub ball: BallKind,
    /// The largest ||Y - X||_F in the ball.
    pub frobenius_radius: f64,
    pub scope: Scope,
    pub layer: usize,
    pub family: String,
    pub n: usize,
    pub d: usize,
    /// Largest row norm of X.
    pub radius: f64,
    pub norm: &'static str,
    pub dtype: &'static str,
    pub seconds: f64,
    /// ||J(X)||_2 at the centre (attained, Lanczos) and Lemma P's upper bound there.
    pub centre_attained: f64,
    pub centre: CentreUpper,
    /// Lemma S: ||J(Y) - J(Y')||_2 <= slope ||Y - Y'||_F on the ball.
    pub slope: BallSlope,
    pub attack_evaluations: usize,
    pub description: String,
    #[serde(skip)]
    pub attained_input: Mat<f64>,
}

/// The certificate for `weights` (layer `layer` of a `family` checkpoint) on the ball around `x`.
pub fn run(
    req: &CertifyRequest,
    weights: &SublayerWeights,
    source: &LayerSource,
    family: &str,
    layer: usize,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<CertifyReport> {
    req.check()?;
    let plain = match weights {
        SublayerWeights::Plain(l) => l,
        SublayerWeights::Rotary { family, .. } => {
            return Err(Error::invalid(format!(
                "a {family} checkpoint has rotary attention, for which no ball bound is proven yet: certify covers the dot-product sublayers of BERT and GPT-2 checkpoints"
            )))
        }
    };
    if plain.kernel != Kernel::Dot {
        return Err(Error::invalid(
            "the ball bound (Lemma S) is proven for the dot-product kernel",
        ));
    }
    let (n, d) = (x.nrows(), x.ncols());
    crate::attention::forward::check_shape("X", x, n, plain.d_in())?;
    crate::estimation::check_search_memory(plain, n, "`n`")?;
    let start = std::time::Instant::now();
    let total = 3;
    let mut step = |done| {
        on_progress(&Progress {
            stage: "certify",
            done,
            total,
        })
    };
    step(0);
    let f = Masked {
        layer: plain,
        causal: source.causal,
    };
    let lin = crate::derivatives::Linearization::new(plain, x, None, source.causal)?;
    let centre = centre_upper(
        &lin,
        req.upper_steps,
        req.failure_probability,
        req.seed.wrapping_add(UPPER_SEED_OFFSET),
    )?;
    drop(lin);
    step(1);
    let slope = attention_ball_slope(plain, x, source.causal, req.epsilon)?;
    let rho = req.ball.frobenius_radius(req.epsilon, n);
    let certified = add_up(centre.value, mul_up(rho, slope.value));
    let output_change = add_up(
        mul_up(rho, centre.value),
        mul_up(0.5, mul_up(slope.value, mul_up(rho, rho))),
    );
    if !(certified.is_finite() && output_change.is_finite()) {
        return Err(Error::invalid(format!(
            "the certificate overflows f64 on a ball of radius `epsilon` = {} (slope bound {}): take a smaller ball",
            req.epsilon, slope.value
        )));
    }
    step(2);
    let mut attack = ball_ascent(&f, x, req.ball, req.epsilon, &req.attack())?;
    // Lemma P's own Lanczos run reaches a Ritz value at X too: an attained value at the centre,
    // sometimes above the ascent's (its Lanczos stops at `tol` and may settle below the top).
    if centre.ritz_sigma > attack.centre_sigma {
        attack.centre_sigma = centre.ritz_sigma;
    }
    if centre.ritz_sigma > attack.sigma {
        attack.sigma = centre.ritz_sigma;
        attack.y = x.to_owned();
    }
    step(3);
    if attack.sigma > certified {
        // Lemma P's failure event, or a bug: never report it as a certificate.
        return Err(Error::Numerical(format!(
            "the ascent found ||J(Y)||_2 = {} in the ball, above the bound {certified}: Lemma P's bound at the centre failed (probability at most {}) or the bound is wrong; rerun with another --seed and report it",
            attack.sigma, req.failure_probability
        )));
    }
    let description = format!(
        "layer {layer} self-attention of a {family} checkpoint ({}), {} ball of radius {} around X (n = {n}, d = {d}), Frobenius norms, f64",
        source.name,
        req.ball.name(),
        req.epsilon
    );
    Ok(CertifyReport {
        kind: "certificate",
        quantity: "local_lipschitz_on_ball",
        certified,
        certified_kind: centre.kind,
        failure_probability: centre.failure_probability,
        attained: attack.sigma,
        ratio: certified / attack.sigma,
        output_change,
        epsilon: req.epsilon,
        ball: req.ball,
        frobenius_radius: rho,
        scope: req.scope,
        layer,
        family: family.to_string(),
        n,
        d,
        radius: max_row_norm(x),
        norm: "frobenius",
        dtype: "f64",
        seconds: start.elapsed().as_secs_f64(),
        centre_attained: attack.centre_sigma,
        centre,
        slope,
        attack_evaluations: attack.evaluations,
        description,
        attained_input: attack.y,
    })
}
