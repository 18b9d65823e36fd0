//! `invert`: a residual block y = x + g(x) whose attention branch g is scaled to a certified
//! Lipschitz constant c < 1, inverted from y by each requested solver, with the certified
//! a-priori step count and a-posteriori error bound beside the measured residual and
//! reconstruction error, the attained local constant of g at x, and optionally log|det(I + J_g)|.

use super::json::to_json as to_value;
use super::solvers::{SolverRequest, SolverRun};
use super::{OnProgress, Progress};
use crate::attention::AttentionLayer;
use crate::dynamics::logdet::{logdet_exact, logdet_series, EXACT_MAX_DIM};
use crate::dynamics::Branch;
use crate::dynamics::{check_contraction_target, Inversion, InvertibleBlock, SolveOptions, Solver};
use crate::error::{as_option, Error, Result};
use crate::estimation::{local_norm_of, LanczosOptions, Method};
use crate::linalg::frobenius;
use crate::named_enum;
use crate::operator::{LayerSource, Operator};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Solver steps allowed when the request does not say.
pub const DEFAULT_MAX_ITER: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvertRequest {
    /// Certified Lipschitz constant required of the branch g (0 < c < 1).
    pub c: f64,
    /// Dot-product and rotary layers: radius R of the ball (B_R)^n the certificate holds on (default: the
    /// smallest tried radius, from 1.25 max |x_i| up, for which y provably has its preimage and
    /// every iterate in the ball).
    pub radius: Option<f64>,
    pub solve: SolverRequest,
    /// Also compute log|det(I + J_g(x))| (exact for n d <= 4096, else the series estimator).
    pub logdet: bool,
    /// Probes of the series estimator.
    pub probes: usize,
    /// Use the series estimator even where the exact value is affordable (and report both).
    pub logdet_series: bool,
    /// Certified bound on the series' truncation error.
    pub truncation_tol: f64,
    /// Seed of the series estimator's probes.
    pub seed: u64,
}

impl Default for InvertRequest {
    fn default() -> Self {
        Self {
            c: 0.9,
            radius: None,
            solve: SolverRequest::default(),
            logdet: false,
            probes: 16,
            logdet_series: false,
            truncation_tol: 1e-3,
            seed: 0,
        }
    }
}

/// What an invert request runs on: the branch f (plain or rotary attention) and the tokens.
pub struct InvertInputs<'a, B: Branch = AttentionLayer<f64>> {
    pub layer: &'a B,
    /// The true tokens x; the command inverts y = x + g(x).
    pub x: MatRef<'a, f64>,
    /// Where the layer came from (echoed as `layer`), when the caller knows.
    pub source: Option<Value>,
    /// The layer's origin, named by the report's `operator`.
    pub origin: &'a LayerSource,
}

/// One solver's inversion of y, with |x - x_true|_F when the true x is known.
pub fn inverse<B: Branch>(
    block: &InvertibleBlock<B>,
    y: MatRef<'_, f64>,
    solver: &Solver,
    opts: &SolveOptions,
    x_true: Option<MatRef<'_, f64>>,
) -> Result<(Inversion, Value)> {
    if let Some(t) = x_true {
        if (t.nrows(), t.ncols()) != (y.nrows(), y.ncols()) {
            return Err(Error::shape(
                "x_true",
                format!("({}, {})", y.nrows(), y.ncols()),
                format!("({}, {})", t.nrows(), t.ncols()),
            ));
        }
    }
    let inv = block.inverse(y, solver, opts)?;
    let mut v = to_value(&inv)?;
    v["status"] = json!("converged");
    if let Some(t) = x_true {
        v["reconstruction_error"] = json!(frobenius((&inv.x - t).as_ref()));
    }
    Ok((inv, v))
}

/// log|det(I + J_g(x))| exactly and/or by the series estimator, as JSON.
pub fn logdet<B: Branch>(
    req: &InvertRequest,
    block: &InvertibleBlock<B>,
    x: MatRef<'_, f64>,
) -> Result<Value> {
    let dim = x.nrows() * x.ncols();
    let mut out = json!({});
    let by = |m| logdet_by(m, block, x, req.truncation_tol, req.probes, req.seed);
    if dim <= EXACT_MAX_DIM {
        out["exact"] = by(LogDetMethod::Exact)?;
    }
    if dim > EXACT_MAX_DIM || req.logdet_series {
        out["series"] = by(LogDetMethod::Series)?;
        out["series_error_is"] =
            json!("truncation_bound certified; std_error an estimate of the statistical error");
    }
    Ok(out)
}

named_enum! {
    /// How log|det(I + J_g(x))| is computed.
    pub enum LogDetMethod as "log-determinant method" {
        /// Dense Jacobian and LU (n d <= 4096).
        Exact = "exact",
        /// Hutchinson estimate of the truncated log series (certified truncation bound).
        Series = "series",
    }
}

/// log|det(I + J_g(x))| by one method, as JSON: exact (logabsdet, sign, dim) or the series
/// estimate (estimate, std_error (estimated), truncation_bound (certified), terms, probes, ...).
pub fn logdet_by<B: Branch>(
    method: LogDetMethod,
    block: &InvertibleBlock<B>,
    x: MatRef<'_, f64>,
    truncation_tol: f64,
    probes: usize,
    seed: u64,
) -> Result<Value> {
    match method {
        LogDetMethod::Exact => to_value(&logdet_exact(&block.g, x)?),
        LogDetMethod::Series => to_value(&logdet_series(
            &block.g,
            x,
            block.certificate.constant,
            truncation_tol,
            probes,
            seed,
        )?),
    }
}

/// The first converged solver's run, flattened into the report.
#[derive(Serialize)]
pub struct PrimaryRun {
    pub solver: String,
    pub iterations: usize,
    pub evaluations: usize,
    pub residual: f64,
    pub reconstruction_error: f64,
    pub error_bound: Option<f64>,
    pub a_priori_iterations: Option<usize>,
}

#[derive(Serialize)]
pub struct InvertReport<B: Branch = AttentionLayer<f64>> {
    /// The branch g = s f whose Lipschitz constant is certified, and where.
    pub operator: Operator,
    pub certified_lipschitz: f64,
    pub certified_lipschitz_source: String,
    pub requested_c: f64,
    pub scale: f64,
    pub norm: &'static str,
    pub domain: crate::dynamics::certify::CertifiedDomain,
    pub dtype: &'static str,
    pub n: usize,
    pub d: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Value>,
    /// "converged" when every solver converged; "no_convergence" otherwise (the failures are in
    /// `solvers`, never results).
    pub status: &'static str,
    #[serde(flatten)]
    pub primary: Option<PrimaryRun>,
    pub attained_local_lipschitz: f64,
    pub attained_local_lipschitz_is: &'static str,
    pub logdet: Option<Value>,
    pub solvers: Vec<SolverRun>,
    /// The block that was inverted.
    #[serde(skip)]
    pub block: InvertibleBlock<B>,
    /// The reconstruction of each solver that converged, in the order they ran (failures have none).
    #[serde(skip)]
    pub reconstructions: Vec<Mat<f64>>,
}

impl<B: Branch> InvertReport<B> {
    /// The residual trace of each converged solver, by name.
    pub fn traces(&self) -> Vec<(String, Vec<f64>)> {
        traces(&self.solvers)
    }
}

/// The residual trace of each converged solver, by name.
pub(crate) fn traces(runs: &[SolverRun]) -> Vec<(String, Vec<f64>)> {
    runs.iter()
        .filter_map(|r| match r {
            SolverRun::Converged(v) => {
                let name = v["solver"].as_str().unwrap_or_default().to_string();
                let trace = v["abs_trace"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                Some((name, trace))
            }
            SolverRun::Failed { .. } => None,
        })
        .collect()
}

pub fn run<B: Branch>(
    req: &InvertRequest,
    inputs: InvertInputs<'_, B>,
    on_progress: OnProgress,
) -> Result<InvertReport<B>> {
    let x = inputs.x;
    as_option(check_contraction_target("`c`", req.c))?;
    let block = InvertibleBlock::for_tokens(inputs.layer, x, req.c, req.radius)?;
    let y = block.forward(x)?;
    let opts = req.solve.options(DEFAULT_MAX_ITER)?;
    let solvers = req.solve.solvers();
    let total = solvers.len() + 1 + usize::from(req.logdet || req.logdet_series);
    let mut runs = vec![];
    let mut reconstructions = vec![];
    let mut primary = None;
    for (k, s) in solvers.iter().enumerate() {
        on_progress(&Progress {
            stage: s.name(),
            done: k,
            total,
        });
        match inverse(&block, y.as_ref(), s, &opts, Some(x)) {
            Ok((inv, v)) => {
                if primary.is_none() {
                    primary = Some(PrimaryRun {
                        solver: inv.solver.clone(),
                        iterations: inv.iterations,
                        evaluations: inv.evaluations,
                        residual: inv.residual,
                        reconstruction_error: v["reconstruction_error"]
                            .as_f64()
                            .unwrap_or(f64::NAN),
                        error_bound: inv.error_bound,
                        a_priori_iterations: inv.a_priori_iterations,
                    });
                }
                reconstructions.push(inv.x);
                runs.push(SolverRun::Converged(v));
            }
            Err(e) => runs.push(SolverRun::of::<Value>(s, Err(e))?),
        }
    }
    on_progress(&Progress {
        stage: "local constant",
        done: solvers.len(),
        total,
    });
    let local = local_norm_of(&Method::Lanczos(LanczosOptions::default()), || {
        block.g.linearize(x)
    })?;
    let logdet = if req.logdet || req.logdet_series {
        on_progress(&Progress {
            stage: "log-determinant",
            done: total - 1,
            total,
        });
        Some(logdet(req, &block, x)?)
    } else {
        None
    };
    on_progress(&Progress {
        stage: "done",
        done: total,
        total,
    });
    let cert = &block.certificate;
    Ok(InvertReport {
        operator: Operator::certified_masked(
            inputs.origin,
            inputs.layer.kernel(),
            inputs.layer.causal(),
            block.scale,
            cert.n,
            Some(cert.domain),
        )
        .with_rotary_form(inputs.layer.rotary_form()),
        certified_lipschitz: block.certificate.constant,
        certified_lipschitz_source: block.certificate.source.to_string(),
        requested_c: req.c,
        scale: block.scale,
        norm: "frobenius",
        domain: block.certificate.domain,
        dtype: "f64",
        n: x.nrows(),
        d: x.ncols(),
        layer: inputs.source,
        status: if runs.iter().all(SolverRun::converged) {
            "converged"
        } else {
            "no_convergence"
        },
        primary,
        attained_local_lipschitz: local.top.sigma,
        attained_local_lipschitz_is: "lower bound on Lip(g) (Lanczos at x)",
        logdet,
        solvers: runs,
        block,
        reconstructions,
    })
}
