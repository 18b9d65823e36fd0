//! `fixed-point`: infinitely deep weight-tied attention. Iterates T(X) = f(X) (plain),
//! (1 - beta) X + beta f(X) (damped) or U + f(X) (injected) in token space, or F(mu) in measure
//! space with exact W1 residuals, with each requested solver. Reports residual traces, steps,
//! the lowest-residual iterate and, when T is a certified contraction, the a-priori and
//! a-posteriori bounds; a solver that diverges is reported, never returned as a result.

use super::json::to_json as to_value;
use super::solvers::{SolverRequest, SolverRun};
use super::{OnProgress, Progress};
use crate::attention::{AttentionLayer, Kernel};
use crate::dynamics::certify::invariant_radius_at_least;
use crate::dynamics::check_contraction_target;
use crate::dynamics::Branch;
use crate::dynamics::{
    MeasureFixedPoint, Solution, SolveOptions, Solver, TokenFixedPoint, Variant,
};
use crate::error::{as_option, Error, Result};
use crate::linalg::frobenius;
use crate::linalg::rounding::max_row_norm_up;
use crate::named_enum;
use crate::operator::{LayerSource, Operator};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

named_enum! {
    /// Where the iteration runs.
    pub enum Space as "space" {
        Tokens = "tokens",
        /// mu = F(mu) on measures with the tokens as atoms, residuals in exact W1.
        Measure = "measure",
    }
}

named_enum! {
    /// The token-space map T.
    pub enum VariantName as "variant" {
        /// X = f(X).
        Plain = "plain",
        /// X = (1 - beta) X + beta f(X).
        Damped = "damped",
        /// X = U + f(X), U the input (the tokens unless given).
        Injected = "injected",
    }
}

/// Solver steps allowed when the request does not say.
pub const DEFAULT_MAX_ITER: usize = 500;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixedPointRequest {
    pub space: Space,
    pub variant: VariantName,
    /// Damping of the damped variant.
    pub beta: f64,
    /// Scale W_O and b_O so that the certified constant of T is at most this (< 1), by
    /// bisection on the scale; the layer is used as given otherwise.
    pub contract: Option<f64>,
    /// Dot-product and rotary layers: radius of the ball the certificate holds on (default: the larger of
    /// the smallest invariant one and the tokens' radius).
    pub radius: Option<f64>,
    pub solve: SolverRequest,
}

impl Default for FixedPointRequest {
    fn default() -> Self {
        Self {
            space: Space::Tokens,
            variant: VariantName::Plain,
            beta: 0.5,
            contract: None,
            radius: None,
            solve: SolverRequest::default(),
        }
    }
}

/// What a fixed-point request runs on: the layer f (plain or rotary attention) and the start.
pub struct FixedPointInputs<'a, B: Branch = AttentionLayer<f64>> {
    pub layer: &'a B,
    /// The start X_0 (and the atoms of the measure in measure space).
    pub x: MatRef<'a, f64>,
    /// The injected input U of the injected variant (default: the start).
    pub input: Option<Mat<f64>>,
    /// The atoms' weights in measure space (default: uniform).
    pub weights: Option<Vec<f64>>,
    /// Where the layer came from (echoed as `layer`), when the caller knows.
    pub source: Option<Value>,
    /// The layer's origin, named by the report's `operator`.
    pub origin: &'a LayerSource,
}

enum Problem<B: Branch> {
    Tokens(TokenFixedPoint<B>),
    Measure(Box<MeasureFixedPoint>),
}

impl<B: Branch> Problem<B> {
    fn contraction(&self) -> Option<f64> {
        match self {
            Problem::Tokens(p) => p.contraction,
            Problem::Measure(p) => p.contraction,
        }
    }

    fn solve(
        &self,
        x: MatRef<'_, f64>,
        s: &Solver,
        opts: &SolveOptions,
    ) -> Result<(Mat<f64>, Solution)> {
        match self {
            Problem::Tokens(p) => p.solve(x, s, opts),
            Problem::Measure(p) => p
                .solve(x, s, opts)
                .map(|(mu, sol)| (mu.points().to_owned(), sol)),
        }
    }
}

struct Spec<'a> {
    req: &'a FixedPointRequest,
    input: Mat<f64>,
    weights: Option<Vec<f64>>,
}

impl Spec<'_> {
    /// The problem for `layer`; the default radius is the larger of the smallest invariant one
    /// and the start's, so that the start is in the certified domain, which the a-priori count
    /// needs (every radius above the smallest invariant one is invariant too).
    fn build<B: Branch>(&self, layer: B, x: MatRef<'_, f64>) -> Result<Problem<B>> {
        let n = x.nrows();
        let injected = self.req.space == Space::Tokens && self.req.variant == VariantName::Injected;
        let radius = match self.req.radius {
            Some(r) => Some(r),
            None if self.req.space == Space::Measure && layer.kernel() == Kernel::L2 => None,
            None if self.req.space == Space::Tokens && !layer.needs_ball(n)? => None,
            None => {
                let (m, b) = layer.row_bound()?;
                let u = if injected {
                    max_row_norm_up(self.input.as_ref())
                } else {
                    0.0
                };
                let lo = max_row_norm_up(x).max(f64::MIN_POSITIVE);
                invariant_radius_at_least(m, b, u, lo)
            }
        };
        Ok(match self.req.space {
            Space::Tokens => {
                let variant = match self.req.variant {
                    VariantName::Plain => Variant::Plain,
                    VariantName::Damped => Variant::Damped {
                        beta: self.req.beta,
                    },
                    VariantName::Injected => Variant::Injected {
                        input: self.input.clone(),
                    },
                };
                Problem::Tokens(TokenFixedPoint::new(layer, n, variant, radius)?)
            }
            Space::Measure => {
                let w = self.weights.clone().unwrap_or(vec![1.0 / n as f64; n]);
                Problem::Measure(Box::new(MeasureFixedPoint::new(
                    layer.measure_map()?.clone(),
                    w,
                    radius,
                )?))
            }
        })
    }

    /// The largest scale (bisection over 60 halvings) whose scaled layer is a certified
    /// contraction with constant <= c.
    fn contract<B: Branch>(
        &self,
        layer: &B,
        x: MatRef<'_, f64>,
        c: f64,
    ) -> Result<(f64, Problem<B>)> {
        let ok = |s: f64| -> Result<Option<Problem<B>>> {
            let p = self.build(layer.scaled(s), x)?;
            Ok(p.contraction().filter(|l| *l <= c).map(|_| p))
        };
        let mut hi = 1.0;
        while ok(hi)?.is_some() && hi < 1e12 {
            hi *= 2.0;
        }
        let mut lo = 0.0;
        let mut best = None;
        for _ in 0..60 {
            crate::cancel::check()?;
            let mid = 0.5 * (lo + hi);
            match ok(mid)? {
                Some(p) => {
                    lo = mid;
                    best = Some(p);
                }
                None => hi = mid,
            }
        }
        best.map(|p| (lo, p)).ok_or_else(|| {
            Error::Option(format!(
                "no scale makes the layer a certified contraction with constant <= {} (`contract`)",
                crate::fmt::exact(c)
            ))
        })
    }
}

#[derive(Serialize)]
pub struct FixedPointReport {
    /// The layer's map whose certified constant decides the contraction, and where it holds.
    pub operator: Operator,
    pub space: Space,
    pub variant: VariantName,
    pub metric: &'static str,
    pub dtype: &'static str,
    pub n: usize,
    pub d: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Value>,
    /// The factor applied to W_O and b_O (1 without `contract`).
    pub scale: f64,
    pub certified_contraction: Option<f64>,
    pub layer_certificate: Value,
    pub notes: Vec<String>,
    /// "converged" when every solver converged, "no_convergence" otherwise.
    pub status: &'static str,
    pub solvers: Vec<SolverRun>,
    /// The fixed point of each solver that converged, in the order they ran (failures have none).
    #[serde(skip)]
    pub solutions: Vec<Mat<f64>>,
}

impl FixedPointReport {
    /// The residual trace of each converged solver, by name.
    pub fn traces(&self) -> Vec<(String, Vec<f64>)> {
        super::invert::traces(&self.solvers)
    }
}

fn check<B: Branch>(req: &FixedPointRequest, inputs: &FixedPointInputs<'_, B>) -> Result<()> {
    if req.space == Space::Measure && req.variant != VariantName::Plain {
        return Err(Error::Option(
            "`space` 'measure' iterates mu = F(mu) only (`variant` 'plain')".into(),
        ));
    }
    if req.space == Space::Measure {
        inputs.layer.measure_map()?;
    }
    if req.space == Space::Tokens && inputs.weights.is_some() {
        return Err(Error::Option(
            "`weights` apply to `space` 'measure' only".into(),
        ));
    }
    if inputs.input.is_some() && req.variant != VariantName::Injected {
        return Err(Error::Option(
            "`input` applies to `variant` 'injected' only".into(),
        ));
    }
    if let Some(w) = &inputs.weights {
        // The measure would name the atoms, not the weights, for this mistake.
        if w.len() != inputs.x.nrows() {
            return Err(Error::Option(format!(
                "`weights`: expected {} entries (one per token of x), found {}",
                inputs.x.nrows(),
                w.len()
            )));
        }
    }
    if let Some(c) = req.contract {
        as_option(check_contraction_target("`contract`", c))?;
    }
    Ok(())
}

pub fn run<B: Branch>(
    req: &FixedPointRequest,
    inputs: FixedPointInputs<'_, B>,
    on_progress: OnProgress,
) -> Result<FixedPointReport> {
    check(req, &inputs)?;
    let opts = req.solve.options(DEFAULT_MAX_ITER)?;
    let x = inputs.x;
    let spec = Spec {
        req,
        input: inputs.input.unwrap_or_else(|| x.to_owned()),
        weights: inputs.weights,
    };
    let solvers = req.solve.solvers();
    let total = solvers.len() + 1;
    on_progress(&Progress {
        stage: "certify",
        done: 0,
        total,
    });
    let (scale, problem) = match req.contract {
        Some(c) => spec.contract(inputs.layer, x, c)?,
        None => (1.0, spec.build(inputs.layer.clone(), x)?),
    };
    let mut runs = vec![];
    let mut solutions: Vec<Mat<f64>> = vec![];
    for (k, s) in solvers.iter().enumerate() {
        on_progress(&Progress {
            stage: s.name(),
            done: k + 1,
            total,
        });
        match problem.solve(x, s, &opts) {
            Ok((xs, sol)) => {
                let mut v = to_value(&sol)?;
                v["status"] = json!("converged");
                v["steps"] = json!(sol.step);
                if let Some(first) = solutions.first() {
                    v["distance_to_first"] = json!(frobenius((&xs - first).as_ref()));
                }
                solutions.push(xs);
                runs.push(SolverRun::Converged(v));
            }
            Err(e) => runs.push(SolverRun::of::<Value>(s, Err(e))?),
        }
    }
    on_progress(&Progress {
        stage: "done",
        done: total,
        total,
    });
    let (metric, layer_certificate, notes) = match &problem {
        Problem::Tokens(p) => (
            "frobenius",
            to_value(&p.layer_certificate)?,
            p.notes.clone(),
        ),
        Problem::Measure(p) => ("w1", to_value(&p.certificate)?, p.notes.clone()),
    };
    let (n, domain) = match &problem {
        Problem::Tokens(p) => (Some(p.n), p.domain),
        Problem::Measure(p) => (None, p.certificate.as_ref().map(|c| c.domain)),
    };
    let kernel = inputs.layer.kernel();
    Ok(FixedPointReport {
        operator: Operator::certified_masked(
            inputs.origin,
            kernel,
            inputs.layer.causal(),
            scale,
            n,
            domain,
        )
        .with_rotary_form(inputs.layer.rotary_form()),
        space: req.space,
        variant: req.variant,
        metric,
        dtype: "f64",
        n: x.nrows(),
        d: x.ncols(),
        layer: inputs.source,
        scale,
        certified_contraction: problem.contraction(),
        layer_certificate,
        notes,
        status: if runs.iter().all(SolverRun::converged) {
            "converged"
        } else {
            "no_convergence"
        },
        solvers: runs,
        solutions,
    })
}
