//! `local`: the local constant ||J(X)||_2 of an attention sublayer (or of one head's
//! contribution) at a token sequence X, plain (BERT, GPT-2) or rotary (docs/rotary.md). An
//! attained value, hence a lower bound on the Lipschitz constant over any domain containing X,
//! never a certificate.

use super::{OnProgress, Progress};
use crate::attention::{
    AttentionLayer, Kernel, RotaryAttention, RotaryLinearization, StreamingRotaryLinearization,
};
use crate::derivatives::streaming::{self, StreamingLinearization};
pub use crate::derivatives::AttentionMemory;
use crate::derivatives::Linearization;
use crate::error::Error;
use crate::error::Result;
use crate::estimation::{
    local_norm, local_norm_of, local_norm_refined, LanczosOptions, LocalNorm, Method, PowerOptions,
};
use crate::linalg::max_row_norm;
use crate::models::SublayerWeights;
use crate::named_enum;
use crate::operator::{LayerSource, Operator, RotaryForm};
use crate::scalar::Scalar;
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

named_enum! {
    /// How the top singular value of J(X) is found.
    pub enum LocalMethod as "method" {
        Lanczos = "lanczos",
        /// Power iteration with the anchor's stopping rule (Rayleigh quotient change below
        /// 1e-4, absolute), whatever `tol` says.
        Power = "power",
    }
}

named_enum! {
    /// The arithmetic of the Krylov iteration.
    pub enum LocalDtype as "dtype" {
        F64 = "f64",
        /// Lanczos in f32, then the f32 top vector refined in f64 (one f64 JVP and VJP, more f64
        /// Lanczos steps only if that estimate misses `tol`): the reported sigma is the f64
        /// value ||J v|| and its error estimate is the f64 residual's
        /// (`estimation::local_norm_refined`). Lanczos only.
        F32 = "f32",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalRequest {
    pub method: LocalMethod,
    /// Lanczos: requested relative accuracy of sigma (an estimate).
    pub tol: f64,
    /// Iteration cap; None: 300 for Lanczos, 100 for power iteration.
    pub max_iter: Option<usize>,
    /// Seed of the random start vector.
    pub seed: u64,
    /// Analyse head h's contribution W_O^h Gamma^h alone (no output bias).
    pub head: Option<usize>,
    /// f64, or f32 Lanczos refined in f64 (2.8x faster at the Llama shape of bench/rotary_local).
    pub dtype: LocalDtype,
    /// Dense or streaming attention state (plain and rotary sublayers; every scope: the blocks
    /// and the model resolve it for their whole chain, `StackWeights::resolve_attention`).
    pub attention: AttentionMemory,
    /// Lanczos keeps at most this many Krylov vectors (and images), restarting from its top
    /// Ritz vector when full (`estimation::lanczos_restarted`); None: one a step, up to
    /// `max_iter`. f64 Lanczos only.
    pub max_basis: Option<usize>,
}

impl Default for LocalRequest {
    fn default() -> Self {
        Self {
            method: LocalMethod::Lanczos,
            tol: LanczosOptions::default().tol,
            max_iter: None,
            seed: 0,
            head: None,
            dtype: LocalDtype::F64,
            attention: AttentionMemory::Auto,
            max_basis: None,
        }
    }
}

impl LocalRequest {
    /// The f32 iteration exists for Lanczos only: power iteration's stopping rule is absolute
    /// and its answer is not refined.
    pub fn check(&self) -> Result<()> {
        if self.dtype == LocalDtype::F32 && self.method != LocalMethod::Lanczos {
            return Err(Error::invalid(format!(
                "`dtype` 'f32' needs `method` 'lanczos' (got '{}'): power iteration runs in f64",
                self.method.name()
            )));
        }
        if let Some(k) = self.max_basis {
            if self.method != LocalMethod::Lanczos || self.dtype != LocalDtype::F64 {
                return Err(Error::invalid(format!(
                    "`max_basis` caps the basis of f64 Lanczos (got `method` '{}', `dtype` '{}')",
                    self.method.name(),
                    self.dtype.name()
                )));
            }
            if k < 2 {
                return Err(Error::invalid(format!(
                    "`max_basis` must be at least 2 (a restarted cycle needs two steps to estimate its error), got {k}"
                )));
            }
        }
        Ok(())
    }

    /// The estimator this request asks for, with its per-method defaults.
    pub fn estimator(&self) -> Method {
        match self.method {
            LocalMethod::Lanczos => Method::Lanczos(LanczosOptions {
                tol: self.tol,
                max_iter: self.max_iter.unwrap_or(LanczosOptions::default().max_iter),
                seed: self.seed,
            }),
            LocalMethod::Power => Method::Power(PowerOptions {
                max_iter: self.max_iter.unwrap_or(PowerOptions::default().max_iter),
                seed: self.seed,
                ..Default::default()
            }),
        }
    }
}

/// What a local request runs on.
pub struct LocalInputs<'a, T: Scalar> {
    pub layer: &'a AttentionLayer<T>,
    /// Tokens X, n x d.
    pub x: MatRef<'a, T>,
    /// Context weights of the tokens (uniform when absent).
    pub weights: Option<&'a [f64]>,
    /// The mask; None: the model's own (`source.mask`).
    pub causal: Option<bool>,
    /// Where the layer comes from (the whole layer's, also when `head` picks one).
    pub source: &'a LayerSource,
}

/// The attained local constant and everything needed to check it; the serialised fields are
/// the command's JSON.
#[derive(Serialize)]
pub struct LocalReport<T: Scalar> {
    /// The map whose local constant this is.
    pub operator: Operator,
    pub kind: &'static str,
    pub quantity: &'static str,
    /// ||J v||_F for the unit `vector`.
    pub sigma: f64,
    /// Estimated relative error of `sigma` against ||J(X)||_2 (an estimate, not a bound).
    pub rel_error: f64,
    pub rel_error_is: &'static str,
    pub converged: bool,
    /// Matvecs with J^T J (each one JVP and one VJP).
    pub iterations: usize,
    /// Matvecs with J^T J restricted to a few tokens that built the start vector (`--dtype f32`
    /// on a map with a restricted step, `estimation::local_norm_refined`; 0 otherwise), not in
    /// `iterations`.
    pub start_steps: usize,
    /// Wall time inside the estimator, linearisation included.
    pub seconds: f64,
    pub method: &'static str,
    /// The requested accuracy (Lanczos only).
    pub tol: Option<f64>,
    pub norm: &'static str,
    pub n: usize,
    pub d: usize,
    pub d_out: usize,
    /// Largest row norm of X (the smallest R with X in (B_R)^n).
    pub radius: f64,
    pub dtype: &'static str,
    /// How the attention state was held: "dense" (n x n probabilities per head) or
    /// "streaming" (per-row statistics, docs/streaming.md).
    pub attention: AttentionMemory,
    pub head: Option<usize>,
    pub causal: bool,
    /// "uniform" or "given".
    pub weights: &'static str,
    /// The estimator's result: history, top singular vectors, X.
    #[serde(skip)]
    pub result: LocalNorm<T>,
}

pub fn run<T: Scalar>(
    req: &LocalRequest,
    inputs: LocalInputs<'_, T>,
    on_progress: OnProgress,
) -> Result<LocalReport<T>> {
    let head_layer;
    let (layer, source) = match req.head {
        Some(h) => {
            head_layer = inputs.layer.head(h, false)?;
            (&head_layer, inputs.source.head(h))
        }
        None => (inputs.layer, inputs.source.clone()),
    };
    req.check()?;
    let causal = source.mask(inputs.causal);
    let stage = req.method.name();
    on_progress(&Progress {
        stage,
        done: 0,
        total: 1,
    });
    let estimate = |streaming: bool| -> Result<LocalNorm<T>> {
        let block = streaming::DEFAULT_BLOCK;
        let w = inputs.weights;
        Ok(match (req.dtype, &req.estimator(), streaming) {
            (LocalDtype::F32, Method::Lanczos(o), false) => {
                let (l32, l64) = (layer.cast::<f32>(), layer.cast::<f64>());
                let (x32, x64) = (Converted::new(inputs.x), Converted::new(inputs.x));
                recast(local_norm_refined(
                    o,
                    || Linearization::new(&l32, x32.get(T::as_f32), w, causal),
                    || Linearization::new(&l64, x64.get(T::as_f64), w, causal),
                )?)
            }
            (LocalDtype::F32, Method::Lanczos(o), true) => {
                let (l32, l64) = (layer.cast::<f32>(), layer.cast::<f64>());
                let (x32, x64) = (Converted::new(inputs.x), Converted::new(inputs.x));
                recast(local_norm_refined(
                    o,
                    || StreamingLinearization::new(&l32, x32.get(T::as_f32), w, causal, block),
                    || StreamingLinearization::new(&l64, x64.get(T::as_f64), w, causal, block),
                )?)
            }
            (_, Method::Lanczos(o), false) if req.max_basis.is_some() => {
                restarted(o, req.max_basis, || {
                    Linearization::new(layer, inputs.x, w, causal)
                })?
            }
            (_, Method::Lanczos(o), true) if req.max_basis.is_some() => {
                restarted(o, req.max_basis, || {
                    StreamingLinearization::new(layer, inputs.x, w, causal, block)
                })?
            }
            (_, m, false) => local_norm(layer, inputs.x, w, causal, m)?,
            (_, m, true) => local_norm_of(m, || {
                StreamingLinearization::new(layer, inputs.x, w, causal, block)
            })?,
        })
    };
    // The f32 run also linearises in f64 (its refinement): the f64 state decides.
    let attention = match req.dtype {
        LocalDtype::F32 => req
            .attention
            .resolve(&layer.cast::<f64>(), inputs.x.nrows())?,
        LocalDtype::F64 => req.attention.resolve(layer, inputs.x.nrows())?,
    };
    let r = estimate(attention == AttentionMemory::Streaming)?;
    on_progress(&Progress {
        stage,
        done: 1,
        total: 1,
    });
    let weighted = inputs.weights.is_some();
    let operator =
        Operator::token_map_at(&source, layer.kernel, causal, inputs.x.nrows(), weighted);
    let mut report = report(req, r, inputs.x, layer.d_out(), operator);
    report.attention = attention;
    Ok(report)
}

/// What a local request on a rotary sublayer runs on. The map is the sublayer on positions
/// 0..n-1 with the model's own mask (causal, windowed where the model windows), uniform token
/// weights, in f64.
pub struct RotaryInputs<'a> {
    pub layer: &'a RotaryAttention,
    /// Tokens X, n x d.
    pub x: MatRef<'a, f64>,
    /// Where the layer comes from (the whole layer's, also when `head` picks one).
    pub source: &'a LayerSource,
    /// The checkpoint's model_type.
    pub family: &'static str,
}

/// `run` for a rotary sublayer: Lanczos or power iteration on its cached linearisation.
pub fn run_rotary(
    req: &LocalRequest,
    inputs: RotaryInputs<'_>,
    on_progress: OnProgress,
) -> Result<LocalReport<f64>> {
    let form = RotaryForm::of(inputs.family, inputs.layer);
    let head_layer;
    let (layer, source) = match req.head {
        Some(h) => {
            head_layer = inputs.layer.head(h)?;
            (&head_layer, inputs.source.head(h))
        }
        None => (inputs.layer, inputs.source.clone()),
    };
    let stage = req.method.name();
    on_progress(&Progress {
        stage,
        done: 0,
        total: 1,
    });
    req.check()?;
    // The f32 run also linearises in f64 (its refinement): the f64 state decides, as for plain
    // sublayers.
    let attention = req.attention.resolve(layer, inputs.x.nrows())?;
    let block = streaming::DEFAULT_BLOCK;
    let r = match (
        req.dtype,
        &req.estimator(),
        attention == AttentionMemory::Streaming,
    ) {
        (LocalDtype::F32, Method::Lanczos(o), false) => {
            let l32 = layer.cast::<f32>();
            let x32 = cast_mat::<f64, f32>(inputs.x);
            local_norm_refined(
                o,
                || RotaryLinearization::new(&l32, x32.as_ref()),
                || RotaryLinearization::new(layer, inputs.x),
            )?
        }
        (LocalDtype::F32, Method::Lanczos(o), true) => {
            let l32 = layer.cast::<f32>();
            let x32 = cast_mat::<f64, f32>(inputs.x);
            local_norm_refined(
                o,
                || StreamingRotaryLinearization::new(&l32, x32.as_ref(), block),
                || StreamingRotaryLinearization::new(layer, inputs.x, block),
            )?
        }
        (_, Method::Lanczos(o), false) if req.max_basis.is_some() => {
            restarted(o, req.max_basis, || {
                RotaryLinearization::new(layer, inputs.x)
            })?
        }
        (_, Method::Lanczos(o), true) if req.max_basis.is_some() => {
            restarted(o, req.max_basis, || {
                StreamingRotaryLinearization::new(layer, inputs.x, block)
            })?
        }
        (_, m, false) => local_norm_of(m, || RotaryLinearization::new(layer, inputs.x))?,
        (_, m, true) => local_norm_of(m, || {
            StreamingRotaryLinearization::new(layer, inputs.x, block)
        })?,
    };
    on_progress(&Progress {
        stage,
        done: 1,
        total: 1,
    });
    let operator = Operator::token_map_at(&source, Kernel::Dot, true, inputs.x.nrows(), false)
        .with_rotary(form);
    let mut report = report(req, r, inputs.x, layer.d_out(), operator);
    report.attention = attention;
    Ok(report)
}

/// `run` on a checkpoint's sublayer of any family, at tokens `x` with the model's own mask and
/// uniform weights.
pub fn run_sublayer(
    req: &LocalRequest,
    weights: &SublayerWeights,
    source: &LayerSource,
    x: MatRef<'_, f64>,
    on_progress: OnProgress,
) -> Result<LocalReport<f64>> {
    match weights {
        SublayerWeights::Plain(layer) => run(
            req,
            LocalInputs {
                layer,
                x,
                weights: None,
                causal: None,
                source,
            },
            on_progress,
        ),
        SublayerWeights::Rotary { layer, family } => run_rotary(
            req,
            RotaryInputs {
                layer,
                x,
                source,
                family,
            },
            on_progress,
        ),
    }
}

/// The report of an estimator's result `r` at `x` for `operator`, a layer of output width `d_out`.
pub fn report<T: Scalar>(
    req: &LocalRequest,
    r: LocalNorm<T>,
    x: MatRef<'_, T>,
    d_out: usize,
    operator: Operator,
) -> LocalReport<T> {
    let t = &r.top;
    let (causal, weighted) = (operator.mask.causal(), operator.weights == "given");
    LocalReport {
        operator,
        kind: "attained_lower_bound",
        quantity: "local_lipschitz",
        sigma: t.sigma,
        rel_error: t.rel_error,
        rel_error_is: "estimate",
        converged: t.converged,
        iterations: t.iterations,
        start_steps: t.start_steps,
        seconds: r.seconds,
        method: r.method,
        tol: (req.method == LocalMethod::Lanczos).then_some(req.tol),
        norm: "frobenius",
        n: x.nrows(),
        d: x.ncols(),
        d_out,
        radius: max_row_norm(x),
        // The arithmetic of the iteration: "f32" for the refined f32 run, whose sigma is f64.
        dtype: match req.dtype {
            LocalDtype::F32 => "f32",
            LocalDtype::F64 => T::NAME,
        },
        attention: AttentionMemory::Dense,
        head: req.head,
        causal,
        weights: if weighted { "given" } else { "uniform" },
        result: r,
    }
}

fn cast_mat<T: Scalar, U: Scalar>(m: MatRef<'_, T>) -> Mat<U> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| U::of(m[(i, j)].f64()))
}

/// The caller's X in another dtype: X itself when it already has it, else a conversion made
/// on first use (the f64 refinement's copy exists only once the f32 run has ended).
struct Converted<'a, T: Scalar, U: Scalar> {
    x: MatRef<'a, T>,
    copy: std::cell::OnceCell<Mat<U>>,
}

impl<'a, T: Scalar, U: Scalar> Converted<'a, T, U> {
    fn new(x: MatRef<'a, T>) -> Self {
        Self {
            x,
            copy: std::cell::OnceCell::new(),
        }
    }

    /// `view` is `T::as_f32` or `T::as_f64`, the one for U.
    fn get(&self, view: fn(MatRef<'a, T>) -> Option<MatRef<'a, U>>) -> MatRef<'_, U> {
        match view(self.x) {
            Some(x) => x,
            None => self.copy.get_or_init(|| cast_mat(self.x)).as_ref(),
        }
    }
}

/// The refined (f64) result in the caller's type: the identity for f64, a rounding of the
/// vectors (not of sigma, which stays f64) for f32.
fn recast<T: Scalar>(r: LocalNorm<f64>) -> LocalNorm<T> {
    let t = r.top;
    LocalNorm {
        top: crate::estimation::lanczos::TopSingular {
            sigma: t.sigma,
            rel_error: t.rel_error,
            iterations: t.iterations,
            start_steps: t.start_steps,
            converged: t.converged,
            history: t.history,
            vector: cast_mat(t.vector.as_ref()),
            left: cast_mat(t.left.as_ref()),
        },
        seconds: r.seconds,
        method: r.method,
    }
}

/// `local_norm_of` with Lanczos restarted at `max_basis` vectors.
fn restarted<T: Scalar, L: crate::derivatives::LinearizedMap<T>>(
    o: &LanczosOptions,
    max_basis: Option<usize>,
    linearize: impl FnOnce() -> Result<L>,
) -> Result<LocalNorm<T>> {
    let start = std::time::Instant::now();
    let lin = linearize()?;
    let top = crate::estimation::lanczos_restarted(&lin, o, max_basis.expect("checked"), None)?;
    Ok(LocalNorm {
        top,
        seconds: start.elapsed().as_secs_f64(),
        method: "lanczos",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_already_in_the_dtype_is_read_where_it_lies() {
        let x32 = Mat::from_fn(5, 3, |i, j| (i * 3 + j) as f32);
        let same = Converted::<f32, f32>::new(x32.as_ref());
        assert_eq!(same.get(f32::as_f32).as_ptr(), x32.as_ptr());
        assert!(same.copy.get().is_none());
        // Another dtype is converted once, on first use, with the same values.
        let wide = Converted::<f32, f64>::new(x32.as_ref());
        assert!(wide.copy.get().is_none());
        let (a, b) = (wide.get(f32::as_f64), wide.get(f32::as_f64));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(a[(4, 2)], 14.0);
        let x64 = Mat::from_fn(2, 2, |i, j| (i + j) as f64 + 0.5);
        assert_eq!(
            Converted::<f64, f64>::new(x64.as_ref())
                .get(f64::as_f64)
                .as_ptr(),
            x64.as_ptr()
        );
        assert!(f64::as_f32(x64.as_ref()).is_none() && f32::as_f64(x32.as_ref()).is_none());
    }
}
