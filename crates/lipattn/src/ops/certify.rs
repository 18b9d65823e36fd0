//! `certify`: a local certificate on a ball around a given input X. Proven: sup ||J(Y)||_2 over the
//! ball is at most `certified`, and ||f(Y) - f(X)||_F at most `output_change`, for the attention
//! sublayer of a dot-product checkpoint (docs/bounds.md#ball-certificates) and, through Lemma C
//! (docs/bounds.md#lemma-c, ops::stack_ball), for its blocks and the whole model. The bounds at
//! the centre are Lemma P's (probabilistic, with their failure probability; docs/estimation.md),
//! the growth over the ball Lemma S's and Lemma N's (deterministic). Beside them, `attained`: the
//! largest ||J(Y)||_2 that projected ascent finds inside the ball, a lower bound on the same
//! supremum.

use super::scope_local::UPPER_SEED_OFFSET;
use super::stack_ball::{CentreRun, Intervals, StackCentre};
use super::OnProgress;
use crate::attention::Kernel;
use crate::bounds::ball::{
    attention_ball_slope, attention_ball_slope_streaming, rotary_ball_slope,
    rotary_ball_slope_streaming, rows_bytes, BallKind, BallSlope,
};
use crate::derivatives::{AttentionMemory, AttentionStates};
use crate::error::{check_at_least, check_in, check_positive, Error, Interval, Result};
use crate::estimation::adversarial::{Linearizable, Masked, MaskedStreaming, RotaryStreaming};
use crate::estimation::ball_ascent::{ball_ascent, BallAscentOptions};
use crate::estimation::centre_upper::{centre_upper, CentreUpper};
use crate::linalg::max_row_norm;
use crate::linalg::rounding::{add_up, mul_up};
use crate::models::stack::StackOnState;
use crate::models::{Pool, Scope, StackWeights, SublayerWeights};
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
    /// Scopes block and model: Lanczos steps of Lemma P's bounds on the steps of the chain and
    /// on runs of them (they enter only the growth over the ball).
    pub interval_steps: usize,
    /// Scopes block and model: which runs of steps Lemma P bounds at the centre, `blocks`
    /// (prefixes, suffixes, runs inside a block and from one block boundary to another) or `all`
    /// (every run of two steps or more: tighter at larger radii, time growing like the cube of
    /// the depth). Scope `attention` has no chain: it changes nothing there.
    pub intervals: Intervals,
    /// Random starts and steps of the ascent inside the ball.
    pub attack_starts: usize,
    pub attack_steps: usize,
    /// Relative accuracy of each local constant the ascent evaluates (an estimate).
    pub tol: f64,
    pub seed: u64,
    /// The attention state of every attention sublayer the certificate reads (plain and
    /// rotary; every scope): the dense n x n probabilities or the streaming per-row statistics
    /// (linear in n), for Lemma P's Lanczos runs, Lemma S's centres and the ascent. `auto` picks
    /// by `AttentionMemory::resolve`: at the sublayer's n for scope attention, for the whole
    /// chain of a block or model (`StackWeights::resolve_attention`).
    pub attention: AttentionMemory,
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
            interval_steps: 60,
            intervals: Intervals::Blocks,
            attack_starts: attack.random_starts,
            attack_steps: attack.steps,
            tol: attack.lanczos.tol,
            seed: 0,
            attention: AttentionMemory::Auto,
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
        check_at_least("`interval_steps`", self.interval_steps, 2)?;
        if self.pool != Pool::None && self.scope != Scope::Model {
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
    pub pool: Pool,
    /// The layer (None for scope `model`).
    pub layer: Option<usize>,
    pub family: String,
    pub n: usize,
    pub d: usize,
    /// Largest row norm of X.
    pub radius: f64,
    pub norm: &'static str,
    pub dtype: &'static str,
    /// The attention state the certificate ran on: "dense" (n x n probabilities per head) or
    /// "streaming" (per-row statistics, docs/streaming.md).
    pub attention: AttentionMemory,
    /// Scopes block and model: the runs of steps Lemma P bounded at the centre, "blocks" or
    /// "all" (None for scope attention, which has no chain).
    pub intervals: Option<Intervals>,
    pub seconds: f64,
    /// ||J(X)||_2 at the centre (attained, Lanczos) and Lemma P's upper bound there.
    pub centre_attained: f64,
    pub centre: CentreUpper,
    /// Scope `attention`, Lemma S: ||J(Y) - J(Y')||_2 <= slope ||Y - Y'||_F on the ball.
    pub slope: Option<BallSlope>,
    /// Scopes `block` and `model`, Lemma C: the steps of the chain and the Lemma P runs.
    pub chain: Option<ChainReport>,
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
    if req.scope != Scope::Attention {
        return Err(Error::invalid(format!(
            "scope '{}' is a chain of steps of the model (run_model or run_stack certify it); one attention sublayer's weights certify scope 'attention' only",
            req.scope.name()
        )));
    }
    let (n, d) = (x.nrows(), x.ncols());
    let start = std::time::Instant::now();
    let mut step = super::progress::stages(on_progress, "certify", 3);
    match weights {
        SublayerWeights::Plain(plain) => {
            if plain.kernel != Kernel::Dot {
                return Err(Error::invalid(
                    "the ball bound (Lemma S) is proven for the dot-product kernel",
                ));
            }
            crate::attention::forward::check_shape("X", x, n, plain.d_in())?;
            let causal = source.causal;
            let dense_needs = || {
                crate::estimation::check_search_memory(plain, n, "`n`").and_then(|()| {
                    crate::budget::check(
                        || format!("the ball bound over {n} tokens ({} heads)", plain.heads),
                        rows_bytes(plain.heads, plain.dk.max(plain.dv), n, false, 1),
                    )
                })
            };
            match resolve_sublayer(req.attention, plain, n, dense_needs)? {
                AttentionMemory::Streaming => {
                    crate::estimation::check_streaming_search_memory(plain, n, "`n`")?;
                    let f = MaskedStreaming {
                        layer: plain,
                        causal,
                        block: crate::derivatives::streaming::DEFAULT_BLOCK,
                    };
                    attention_certificate(req, &f, x, &mut step, || {
                        attention_ball_slope_streaming(plain, x, causal, req.epsilon)
                    })
                    .map(|c| (c, AttentionMemory::Streaming))
                }
                _ => {
                    crate::estimation::check_search_memory(plain, n, "`n`")?;
                    let f = Masked {
                        layer: plain,
                        causal,
                    };
                    attention_certificate(req, &f, x, &mut step, || {
                        attention_ball_slope(plain, x, causal, req.epsilon)
                    })
                    .map(|c| (c, AttentionMemory::Dense))
                }
            }
        }
        SublayerWeights::Rotary { layer: rotary, .. } => {
            crate::attention::forward::check_shape("X", x, n, rotary.d_in())?;
            let dense_needs = || {
                crate::estimation::check_rotary_search_memory(rotary, n, "`n`").and_then(|()| {
                    crate::budget::check(
                        || format!("the ball bound over {n} tokens ({} heads)", rotary.heads),
                        rows_bytes(rotary.heads, rotary.head_dim, n, false, 1),
                    )
                })
            };
            match resolve_sublayer(req.attention, &**rotary, n, dense_needs)? {
                AttentionMemory::Streaming => {
                    crate::bounds::ball::check_rotary_covered(rotary)?;
                    crate::estimation::check_rotary_streaming_search_memory(rotary, n, "`n`")?;
                    let f = RotaryStreaming {
                        layer: rotary,
                        block: crate::derivatives::streaming::DEFAULT_BLOCK,
                    };
                    attention_certificate(req, &f, x, &mut step, || {
                        rotary_ball_slope_streaming(rotary, x, req.epsilon)
                    })
                    .map(|c| (c, AttentionMemory::Streaming))
                }
                _ => {
                    crate::estimation::check_rotary_search_memory(rotary, n, "`n`")?;
                    attention_certificate(req, &**rotary, x, &mut step, || {
                        rotary_ball_slope(rotary, x, req.epsilon)
                    })
                    .map(|c| (c, AttentionMemory::Dense))
                }
            }
        }
    }
    .map(|(c, attention)| {
        let description = format!(
            "layer {layer} self-attention of a {family} checkpoint ({}), {} ball of radius {} around X (n = {n}, d = {d}), Frobenius norms, f64",
            source.name,
            req.ball.name(),
            req.epsilon
        );
        let mut report = c.into_report(req, start, layer, family, x, description);
        report.attention = attention;
        report
    })
}

/// The state a sublayer's certificate runs on: `AttentionMemory::resolve`, and for `auto`
/// streaming also where the dense state fits but the dense certificate's own larger needs
/// (`dense_needs`: the search's 4 H n^2 and Lemma S's stored rows) would be refused, so that
/// `auto` never stops where `streaming` would run.
fn resolve_sublayer<L: AttentionStates + ?Sized>(
    attention: AttentionMemory,
    layer: &L,
    n: usize,
    dense_needs: impl FnOnce() -> Result<()>,
) -> Result<AttentionMemory> {
    let resolved = attention.resolve(layer, n)?;
    if attention != AttentionMemory::Auto || resolved != AttentionMemory::Dense {
        return Ok(resolved);
    }
    match dense_needs() {
        Ok(()) => Ok(AttentionMemory::Dense),
        Err(Error::Budget { .. } | Error::OutOfMemory { .. }) => Ok(AttentionMemory::Streaming),
        Err(e) => Err(e),
    }
}

/// What the attention scope's certificate found, before the report states its domain.
struct AttentionCertificate {
    centre: CentreUpper,
    slope: BallSlope,
    certified: f64,
    output_change: f64,
    attack: crate::estimation::ball_ascent::BallAscentResult,
}

/// Lemma P at X, `slope` (Lemma S for the kind of attention of `f`), the ball theorem and the
/// ascent inside the ball, for one attention sublayer `f`.
fn attention_certificate<F: Linearizable>(
    req: &CertifyRequest,
    f: &F,
    x: MatRef<'_, f64>,
    step: &mut dyn FnMut(usize),
    slope: impl FnOnce() -> Result<BallSlope>,
) -> Result<AttentionCertificate> {
    step(0);
    let lin = f.linearize(x)?;
    let centre = centre_upper(
        &lin,
        req.upper_steps,
        req.failure_probability,
        req.seed.wrapping_add(UPPER_SEED_OFFSET),
    )?;
    drop(lin);
    step(1);
    let slope = slope()?;
    let rho = req.ball.frobenius_radius(req.epsilon, x.nrows());
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
    let mut attack = ball_ascent(f, x, req.ball, req.epsilon, &req.attack())?;
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
    check_attained(attack.sigma, certified, req.failure_probability)?;
    Ok(AttentionCertificate {
        centre,
        slope,
        certified,
        output_change,
        attack,
    })
}

impl AttentionCertificate {
    fn into_report(
        self,
        req: &CertifyRequest,
        start: std::time::Instant,
        layer: usize,
        family: &str,
        x: MatRef<'_, f64>,
        description: String,
    ) -> CertifyReport {
        let (n, d) = (x.nrows(), x.ncols());
        let attack = self.attack;
        CertifyReport {
            kind: "certificate",
            quantity: "local_lipschitz_on_ball",
            certified: self.certified,
            certified_kind: self.centre.kind,
            failure_probability: self.centre.failure_probability,
            attained: attack.sigma,
            ratio: self.certified / attack.sigma,
            output_change: self.output_change,
            epsilon: req.epsilon,
            ball: req.ball,
            frobenius_radius: req.ball.frobenius_radius(req.epsilon, n),
            scope: req.scope,
            pool: req.pool,
            layer: Some(layer),
            family: family.to_string(),
            n,
            d,
            radius: max_row_norm(x),
            norm: "frobenius",
            dtype: "f64",
            attention: AttentionMemory::Dense,
            intervals: None,
            seconds: start.elapsed().as_secs_f64(),
            centre_attained: attack.centre_sigma,
            centre: self.centre,
            slope: Some(self.slope),
            chain: None,
            attack_evaluations: attack.evaluations,
            description,
            attained_input: attack.y,
        }
    }
}

/// Lemma C's account of a block or model certificate.
#[derive(Serialize)]
pub struct ChainReport {
    pub theorem: &'static str,
    pub steps: Vec<ChainStepReport>,
    /// The Lemma P runs, each failing with at most failure_probability / runs.len().
    pub runs: Vec<CentreRun>,
    /// The radius of the last image ball (one bound on ||f(Y) - f(X)||_F beside the integral).
    pub output_radius: f64,
}

#[derive(Serialize)]
pub struct ChainStepReport {
    pub step: String,
    /// Upper bound on ||J|| of the step at its input.
    pub centre: f64,
    /// Upper bounds on sup ||J|| and on the slope of J over the ball around its input.
    pub sup: f64,
    pub slope: f64,
    /// That ball: Frobenius radius and largest token displacement.
    pub frobenius_radius: f64,
    pub token_radius: f64,
}

/// The certificate of `req.scope` for `model` (with `layer` for the one-layer scopes) at X.
pub fn run_model(
    req: &CertifyRequest,
    model: &crate::models::Model,
    layer: Option<usize>,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<CertifyReport> {
    req.check()?;
    let layer = req.scope.check(layer, req.pool)?;
    match (req.scope, layer) {
        (Scope::Attention, Some(l)) => run(
            req,
            &model.sublayer(l)?,
            &model.layer_source(l),
            model.family().name(),
            l,
            x,
            on_progress,
        ),
        _ => {
            let weights = model.stack(req.scope, layer, req.pool)?;
            run_stack(req, &weights, model.family().name(), x, on_progress)
        }
    }
}

/// The certificate for a block or a whole model (Lemma C).
pub fn run_stack(
    req: &CertifyRequest,
    weights: &StackWeights,
    family: &str,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<CertifyReport> {
    req.check()?;
    let (n, d) = (x.nrows(), x.ncols());
    let start = std::time::Instant::now();
    let mut step = super::progress::stages(on_progress, "certify", 3);
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
    step(1);
    let (chain, output_change) = centre.at(req.ball, req.epsilon)?;
    step(2);
    let on_state = StackOnState {
        weights,
        attention: centre.attention(),
    };
    let mut attack = ball_ascent(&on_state, x, req.ball, req.epsilon, &req.attack())?;
    let ritz = centre.whole.ritz_sigma;
    if ritz > attack.centre_sigma {
        attack.centre_sigma = ritz;
    }
    if ritz > attack.sigma {
        attack.sigma = ritz;
        attack.y = x.to_owned();
    }
    step(3);
    let certified = chain.sup;
    check_attained(attack.sigma, certified, req.failure_probability)?;
    let names = centre.step_names();
    let steps = chain
        .steps
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (s, step))| ChainStepReport {
            step,
            centre: centre.chain.interval[i][i + 1],
            sup: s.bound.sup,
            slope: s.bound.slope,
            frobenius_radius: s.ball.frobenius,
            token_radius: s.ball.token,
        })
        .collect();
    let layer = (weights.scope != Scope::Model).then_some(weights.first_layer);
    let what = match layer {
        Some(l) => format!("block {l}"),
        None if weights.pool == Pool::None => {
            "the whole model (input embeddings to final hidden states)".into()
        }
        None => format!("the whole model with pool '{}'", weights.pool.name()),
    };
    let description = format!(
        "{what} of a {family} checkpoint, {} ball of radius {} around X (n = {n}, d = {d}), Frobenius norms, f64",
        req.ball.name(),
        req.epsilon
    );
    Ok(CertifyReport {
        kind: "certificate",
        quantity: "local_lipschitz_on_ball",
        certified,
        certified_kind: centre.whole.kind,
        failure_probability: centre.failure_probability,
        attained: attack.sigma,
        ratio: certified / attack.sigma,
        output_change,
        epsilon: req.epsilon,
        ball: req.ball,
        frobenius_radius: req.ball.frobenius_radius(req.epsilon, n),
        scope: req.scope,
        pool: req.pool,
        layer,
        family: family.to_string(),
        n,
        d,
        radius: max_row_norm(x),
        norm: "frobenius",
        dtype: "f64",
        attention: centre.attention(),
        intervals: Some(req.intervals),
        seconds: start.elapsed().as_secs_f64(),
        centre_attained: attack.centre_sigma,
        centre: centre.whole.clone(),
        slope: None,
        chain: Some(ChainReport {
            theorem: "Lemma C, docs/bounds.md#lemma-c (steps: Lemma S for attention, Lemma N for the norms, feed-forward and pooling)",
            steps,
            runs: centre.runs.clone(),
            output_radius: chain.output_radius,
        }),
        attack_evaluations: attack.evaluations,
        description,
        attained_input: attack.y,
    })
}

/// Never print a certificate below a value attained inside its ball.
pub(crate) fn check_attained(attained: f64, certified: f64, failure: f64) -> Result<()> {
    if attained > certified {
        // Lemma P's failure event, or a bug.
        return Err(Error::Numerical(format!(
            "the ascent found ||J(Y)||_2 = {attained} in the ball, above the bound {certified}: Lemma P's bound at the centre failed (probability at most {failure}) or the bound is wrong; rerun with another --seed and report it"
        )));
    }
    Ok(())
}
