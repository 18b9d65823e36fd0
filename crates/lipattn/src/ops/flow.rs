//! `flow`: continuous-depth attention, optionally on the sphere or through a LayerNorm, with RK4
//! or Dormand-Prince: the flow of measures dx_i/dt = Gamma_{mu_t}(x_i) of a plain layer, or the
//! flow of tokens dX/dt = f(X) of a rotary one (no map of measures). Reports the clustering of
//! the tokens over time (measured) and, on request, the certified Gronwall bound against
//! measured W1 (measures) or Frobenius (tokens) distances and the measured mean-field rate.

use super::source::{gronwall_seed, mean_field_seed};
use super::{OnProgress, Progress};
use crate::attention::AttentionLayer;
use crate::dynamics::flow::{
    clustering, gronwall_check, integrate, mean_field, Clustering, GronwallCheck, MeanField,
};
use crate::dynamics::token_flow::{integrate_tokens, token_gronwall_check};
use crate::dynamics::{AnyBranch, Branch, FlowOptions, Integrator, Projection, RotaryBranch};
use crate::error::{as_option, check_nonnegative, check_positive, Error, Result};
use crate::estimation::SplitMix;
use crate::measure::Measure;
use crate::named_enum;
use crate::operator::{LayerSource, Operator};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

named_enum! {
    /// Where the tokens live during the flow.
    pub enum ProjectionName as "projection" {
        None = "none",
        /// Tangential velocity, tokens renormalised after each step.
        Sphere = "sphere",
        /// Velocity Gamma_{LN#mu}(LN(x)), LN without affine parameters.
        LayerNorm = "layernorm",
    }
}

named_enum! {
    /// The time integrator.
    pub enum IntegratorName as "integrator" {
        Rk4 = "rk4",
        /// Adaptive Dormand-Prince 5(4).
        Dopri = "dopri",
        /// Dormand-Prince's fifth-order solution with the fixed step `dt`.
        DopriFixed = "dopri-fixed" | "dopri_fixed",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowRequest {
    /// Final time T.
    pub t: f64,
    pub projection: ProjectionName,
    pub integrator: IntegratorName,
    /// Step of rk4 and dopri-fixed.
    pub dt: f64,
    /// Tolerances of the adaptive dopri.
    pub rtol: f64,
    pub atol: f64,
    /// First step of the adaptive dopri (default: dt).
    pub h0: Option<f64>,
    /// Record the state every this much time (and at T).
    pub record: f64,
    /// Step cap (accepted plus rejected).
    pub max_steps: usize,
    pub layernorm_eps: f64,
    /// Cosine threshold of the cluster count: tokens with cos >= 1 - this are joined.
    pub cluster_threshold: f64,
    /// Also check the Gronwall bound against the tokens moved by seeded Gaussian noise of this
    /// size (unless the inputs give the second initial tokens).
    pub gronwall: Option<f64>,
    /// Also measure mean-field consistency with these sample sizes.
    pub mean_field: Option<Vec<usize>>,
    /// Samples of the mean-field reference flow.
    pub mean_field_reference: usize,
    /// Independent samples per size (their W1 values are averaged).
    pub mean_field_replicates: usize,
    /// Seed of the command's draws (offset per use, see `ops::source`).
    pub seed: u64,
}

impl Default for FlowRequest {
    fn default() -> Self {
        Self {
            t: 15.0,
            projection: ProjectionName::Sphere,
            integrator: IntegratorName::Rk4,
            dt: 0.1,
            rtol: 1e-6,
            atol: 1e-9,
            h0: None,
            record: 0.5,
            max_steps: 10_000_000,
            layernorm_eps: 1e-5,
            cluster_threshold: 1e-2,
            gronwall: None,
            mean_field: None,
            mean_field_reference: 1024,
            mean_field_replicates: 4,
            seed: 0,
        }
    }
}

impl FlowRequest {
    /// The integration options of this request.
    pub fn options(&self) -> FlowOptions {
        let projection = match self.projection {
            ProjectionName::None => Projection::None,
            ProjectionName::Sphere => Projection::Sphere,
            ProjectionName::LayerNorm => Projection::LayerNorm {
                eps: self.layernorm_eps,
            },
        };
        let integrator = match self.integrator {
            IntegratorName::Rk4 => Integrator::Rk4 { dt: self.dt },
            IntegratorName::DopriFixed => Integrator::DoPri5Fixed { dt: self.dt },
            IntegratorName::Dopri => Integrator::DoPri5 {
                rtol: self.rtol,
                atol: self.atol,
                h0: self.h0.unwrap_or(self.dt),
            },
        };
        FlowOptions {
            projection,
            integrator,
            t_end: self.t,
            record_every: self.record,
            max_steps: self.max_steps,
        }
    }

    fn check(&self) -> Result<()> {
        as_option(check_nonnegative(
            "`cluster_threshold`",
            self.cluster_threshold,
        ))?;
        if let Some(eps) = self.gronwall {
            as_option(check_positive("`gronwall` perturbation size", eps))?;
        }
        Ok(())
    }

    /// The mean-field measurement of this request's sizes and integration options, drawn with
    /// `seed` as given.
    pub fn mean_field(
        &self,
        layer: &AttentionLayer<f64>,
        ns: &[usize],
        seed: u64,
    ) -> Result<MeanField> {
        mean_field(
            layer,
            ns,
            self.mean_field_reference,
            self.mean_field_replicates,
            &self.options(),
            seed,
        )
    }
}

/// The map a flow integrates.
#[derive(Clone, Copy)]
pub enum FlowMap<'a> {
    /// A map of measures (plain attention, any token weights): dx_i/dt = Gamma_{mu_t}(x_i).
    Measures(&'a AttentionLayer<f64>),
    /// A map of token matrices (rotary attention at positions 0..n-1 with its own mask):
    /// dX/dt = f(X), in the Frobenius norm.
    Tokens(&'a RotaryBranch),
}

impl<'a> FlowMap<'a> {
    /// The flow of a model or synthetic branch: of measures for plain attention, of tokens for
    /// rotary attention.
    pub fn of(branch: &'a AnyBranch) -> Self {
        match branch {
            AnyBranch::Plain(l) => FlowMap::Measures(l),
            AnyBranch::Rotary(r) => FlowMap::Tokens(r),
        }
    }

    /// "measures" or "tokens".
    pub fn space(&self) -> &'static str {
        match self {
            FlowMap::Measures(_) => "measures",
            FlowMap::Tokens(_) => "tokens",
        }
    }
}

impl<'a> From<&'a AttentionLayer<f64>> for FlowMap<'a> {
    fn from(layer: &'a AttentionLayer<f64>) -> Self {
        FlowMap::Measures(layer)
    }
}

/// What a flow request runs on.
pub struct FlowInputs<'a> {
    pub map: FlowMap<'a>,
    /// The initial tokens.
    pub x: MatRef<'a, f64>,
    /// Their weights (default: uniform; measures only).
    pub weights: Option<Vec<f64>>,
    /// The second initial tokens of the Gronwall check, instead of a seeded perturbation.
    pub gronwall_tokens: Option<Mat<f64>>,
    /// Where the layer came from (echoed as `layer`), when the caller knows.
    pub source: Option<Value>,
    /// The layer's origin, named by the report's `operator`.
    pub origin: &'a LayerSource,
}

#[derive(Serialize)]
pub struct FlowReport {
    /// "measures" (plain attention: the tokens are the atoms of a measure) or "tokens" (rotary
    /// attention: the n x d matrix of tokens at positions 0..n-1 flows).
    pub space: &'static str,
    /// What the Gronwall bound certifies; None without one (the rest is measured).
    pub operator: Option<Operator>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Value>,
    pub n: usize,
    pub d: usize,
    pub dtype: &'static str,
    pub options: FlowOptions,
    pub steps: Value,
    pub times: Vec<f64>,
    /// Per recorded time; measured.
    pub clustering: Vec<Clustering>,
    pub clustering_is: &'static str,
    pub gronwall: Option<GronwallCheck>,
    pub mean_field: Option<MeanField>,
    /// The recorded states, one n x d matrix per time.
    #[serde(skip)]
    pub states: Vec<Mat<f64>>,
}

pub fn run(
    req: &FlowRequest,
    inputs: FlowInputs<'_>,
    on_progress: OnProgress,
) -> Result<FlowReport> {
    req.check()?;
    let opts = req.options();
    let (map, x0) = (inputs.map, inputs.x);
    if let FlowMap::Tokens(branch) = map {
        refuse_measure_options(branch, req, inputs.weights.is_some())?;
    }
    let total = 1
        + usize::from(req.gronwall.is_some() || inputs.gronwall_tokens.is_some())
        + usize::from(req.mean_field.is_some());
    let mut done = 0;
    let mut step = |stage: &str, done: &mut usize| {
        on_progress(&Progress {
            stage,
            done: *done,
            total,
        });
        *done += 1;
    };
    step("flow", &mut done);
    let traj = match map {
        FlowMap::Measures(layer) => integrate(layer, x0, inputs.weights.as_deref(), &opts)?,
        FlowMap::Tokens(branch) => integrate_tokens(branch, x0, &opts)?,
    };
    let stats: Vec<Clustering> = traj
        .states
        .iter()
        .map(|s| clustering(s.as_ref(), req.cluster_threshold))
        .collect();
    let measure = |p: Mat<f64>| Measure::with_weights(p, inputs.weights.clone(), false);
    let other = match (inputs.gronwall_tokens, req.gronwall) {
        (Some(t), _) => Some(t),
        (None, Some(eps)) => {
            let mut rng = SplitMix::new(gronwall_seed(req.seed));
            Some(Mat::from_fn(x0.nrows(), x0.ncols(), |i, k| {
                x0[(i, k)] + eps * rng.gauss()
            }))
        }
        (None, None) => None,
    };
    let gronwall = match other {
        Some(other) => {
            step("gronwall", &mut done);
            Some(match map {
                FlowMap::Measures(layer) => {
                    let mu = measure(x0.to_owned())?;
                    let nu = measure(other)?;
                    gronwall_check(layer, &mu, &nu, &opts)?
                }
                FlowMap::Tokens(branch) => token_gronwall_check(branch, x0, other.as_ref(), &opts)?,
            })
        }
        None => None,
    };
    let mean_field = match (&req.mean_field, map) {
        (Some(ns), FlowMap::Measures(layer)) => {
            step("mean field", &mut done);
            Some(req.mean_field(layer, ns, mean_field_seed(req.seed))?)
        }
        _ => None,
    };
    let operator = gronwall.as_ref().map(|g| match map {
        FlowMap::Measures(layer) => Operator::flow(inputs.origin, layer.kernel, g.radius),
        FlowMap::Tokens(branch) => Operator::token_flow(
            inputs.origin,
            Branch::kernel(branch),
            branch.causal(),
            g.radius,
            x0.nrows(),
        )
        .with_rotary_form(branch.rotary_form()),
    });
    step("done", &mut done);
    Ok(FlowReport {
        space: map.space(),
        operator,
        layer: inputs.source,
        n: x0.nrows(),
        d: x0.ncols(),
        dtype: "f64",
        options: opts,
        steps: json!({"accepted": traj.accepted, "rejected": traj.rejected, "evaluations": traj.evaluations}),
        times: traj.times,
        clustering: stats,
        clustering_is: "measured",
        gronwall,
        mean_field,
        states: traj.states,
    })
}

/// The token flow takes neither token weights nor a mean-field measurement: both are about
/// measures, which a rotary layer does not map.
fn refuse_measure_options(branch: &RotaryBranch, req: &FlowRequest, weighted: bool) -> Result<()> {
    let what = match (weighted, &req.mean_field) {
        (true, _) => "token `weights`",
        (false, Some(_)) => "the mean-field limit (`mean_field`)",
        (false, None) => return Ok(()),
    };
    Err(Error::Option(format!(
        "model_type '{}': {what} belongs to the flow of measures, and rotary attention depends on the positions of the tokens, so it is no map of measures (docs/bounds.md#b7-measure-view); its flow runs in token space (dX/dt = f(X), token i at position i, Frobenius norm) without them",
        branch.family
    )))
}
