//! `local --scope sublayer-residual-norm|block|model`: the local constant ||J(X)||_2 of a
//! block's attention half, a whole block or the whole model (optionally pooled) at X, by Lanczos
//! or power iteration on the exact linearisation (derivatives::stack), beside the composed
//! certified global bound (bounds::composed). The attention steps hold the state the request's
//! `attention` asks for (`StackWeights::resolve_attention`: `auto` streams where the dense chain
//! would be refused by the memory budget). The local constant is attained (a lower bound on
//! the Lipschitz constant over any domain containing X), never a certificate.

use super::local::{LocalDtype, LocalMethod, LocalRequest};
use super::{OnProgress, Progress};
use crate::bounds::composed::{composed_bound, ComposedBound};
use crate::derivatives::AttentionMemory;
use crate::error::{Error, Result};
use crate::estimation::centre_upper::{centre_upper, CentreUpper};
use crate::estimation::{lanczos, power_iteration, Method};
use crate::linalg::max_row_norm;
use crate::models::{Pool, Scope, StackWeights};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

/// Added to the request's seed for the start of the upper bound's Lanczos run.
pub const UPPER_SEED_OFFSET: u64 = 0x5eed_u64;

/// Which map of a model a local request analyses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeRequest {
    pub scope: Scope,
    pub pool: Pool,
    /// Also compute the probabilistic upper bound on ||J(X)||_2 (Lemma P) failing with at
    /// most this probability.
    pub upper_failure_probability: Option<f64>,
    /// Lanczos steps of that bound (its own run from its own random start).
    pub upper_steps: usize,
}

impl Default for ScopeRequest {
    fn default() -> Self {
        Self {
            scope: Scope::Attention,
            pool: Pool::None,
            upper_failure_probability: None,
            upper_steps: 200,
        }
    }
}

impl ScopeRequest {
    /// The scopes beyond the attention sublayer, and the upper bound, analyse no single head.
    pub fn check_head(&self, head: Option<usize>) -> Result<()> {
        match head {
            Some(h) if self.scope != Scope::Attention => Err(Error::invalid(format!(
                "head {h} was given with scope '{}': a head's contribution is an attention-sublayer quantity (scope 'attention')",
                self.scope.name()
            ))),
            Some(h) if self.upper_failure_probability.is_some() => Err(Error::invalid(format!(
                "head {h} was given with upper_failure_probability: the probabilistic upper bound covers whole scopes, not one head's contribution"
            ))),
            _ => Ok(()),
        }
    }
}

#[derive(Serialize)]
pub struct ScopeLocalReport {
    pub kind: &'static str,
    pub quantity: &'static str,
    pub scope: Scope,
    pub pool: Pool,
    /// The first (or only) layer; None for scope `model`.
    pub layer: Option<usize>,
    pub family: String,
    /// What X is.
    pub input: &'static str,
    pub sigma: f64,
    pub rel_error: f64,
    pub rel_error_is: &'static str,
    pub converged: bool,
    pub iterations: usize,
    pub seconds: f64,
    pub method: &'static str,
    pub tol: Option<f64>,
    pub norm: &'static str,
    pub n: usize,
    pub d: usize,
    /// Shape of the output: (n, d) or (1, d) after pooling.
    pub rows_out: usize,
    pub d_out: usize,
    /// Largest row norm of X.
    pub radius: f64,
    pub dtype: &'static str,
    /// How the attention steps held their state: "dense" (n x n probabilities per head) or
    /// "streaming" (per-row statistics, docs/streaming.md#blocks-and-models).
    pub attention: AttentionMemory,
    /// The composed certified global bound (Frobenius norms, sequences of n tokens).
    pub certified: ComposedBound,
    /// certified / sigma; None where nothing finite is certified.
    pub ratio: Option<f64>,
    /// The probabilistic upper bound on ||J(X)||_2 at X (when requested): the local constant
    /// lies in [sigma, upper.value] except with probability upper.failure_probability.
    pub upper: Option<CentreUpper>,
    pub description: String,
    #[serde(skip)]
    pub vector: Mat<f64>,
    #[serde(skip)]
    pub output: Mat<f64>,
}

/// The local constant of `weights` (loaded for `scope`) at X, and the composed bound.
pub fn run_scope(
    req: &LocalRequest,
    scope: &ScopeRequest,
    weights: &StackWeights,
    family: &str,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<ScopeLocalReport> {
    scope.check_head(req.head)?;
    if req.dtype != LocalDtype::F64 {
        return Err(Error::invalid(format!(
            "`dtype` '{}' runs the attention sublayer alone; scope '{}' and the upper bound run in f64",
            req.dtype.name(),
            weights.scope.name()
        )));
    }
    let stage = req.method.name();
    on_progress(&Progress {
        stage,
        done: 0,
        total: 1,
    });
    let start = std::time::Instant::now();
    let (output, lin) = weights.linearize_with(x, req.attention)?;
    let attention = lin.attention;
    req.check()?;
    let top = match &req.estimator() {
        Method::Lanczos(o) => match req.max_basis {
            Some(k) => crate::estimation::lanczos_restarted(&lin, o, k, None)?,
            None => lanczos(&lin, o, None)?,
        },
        Method::Power(o) => power_iteration(&lin, o, None)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    // Its own start, drawn from another seed, so that the bound's probability is over a start
    // the attained value did not choose.
    let upper = scope
        .upper_failure_probability
        .map(|delta| {
            centre_upper(
                &lin,
                scope.upper_steps,
                delta,
                req.seed.wrapping_add(UPPER_SEED_OFFSET),
            )
        })
        .transpose()?;
    on_progress(&Progress {
        stage,
        done: 1,
        total: 1,
    });
    let n = x.nrows();
    let certified = composed_bound(weights, n)?;
    let t = &top;
    let ratio = certified.value.map(|c| c / t.sigma);
    let layer = weights.scope.has_layer().then_some(weights.first_layer);
    let where_ = match layer {
        Some(l) => format!("layer {l}"),
        None => format!("all {} layers", weights.blocks.len()),
    };
    let description = format!(
        "scope '{}' ({where_}{}) of a {family} model at X = {} (n = {n}, d = {}), Frobenius norms, f64",
        weights.scope.name(),
        match weights.pool {
            Pool::None => String::new(),
            p => format!(", pooled '{}'", p.name()),
        },
        weights.scope.input_description(),
        x.ncols()
    );
    Ok(ScopeLocalReport {
        kind: "attained_lower_bound",
        quantity: "local_lipschitz",
        scope: weights.scope,
        pool: weights.pool,
        layer,
        family: family.to_string(),
        input: weights.scope.input_description(),
        sigma: t.sigma,
        rel_error: t.rel_error,
        rel_error_is: "estimate",
        converged: t.converged,
        iterations: t.iterations,
        seconds,
        method: req.method.name(),
        tol: (req.method == LocalMethod::Lanczos).then_some(req.tol),
        norm: "frobenius",
        n,
        d: x.ncols(),
        rows_out: output.nrows(),
        d_out: output.ncols(),
        radius: max_row_norm(x),
        dtype: "f64",
        attention,
        certified,
        ratio,
        upper,
        description,
        vector: t.vector.clone(),
        output,
    })
}
