//! The dynamics (`lipattn.dynamics` in the core, `lipattn invert`, `fixed-point` and `flow` in
//! the CLI): invertible residual blocks, weight-tied fixed points and attention flows.
//!
//! Results are plain dicts built from the library's serde serialisation, with the keys of the
//! CLI's `--json` output, plus NumPy arrays for the tokens. A solver that does not converge
//! raises `NoConvergenceError` (errors.rs): a diverged iterate is never returned as a result.

use crate::convert::{json_to_py, matrix_f64, optional_vector, to_numpy};
use crate::errors::{detached, interruptible, IntoPyResult};
use crate::ints::PyInt;
use crate::layer::{kernel_of, PyAttentionLayer};
use faer::Mat;
use lipattn::dynamics::flow::{
    clustering as clustering_of, identity_layer as identity_layer_of,
    sphere_sample as sphere_sample_of,
};
use lipattn::dynamics::synthetic;
use lipattn::dynamics::{AnyBranch, Branch, InvertibleBlock};
use lipattn::estimation::SplitMix;
use lipattn::ops::fixed_point::{self as fixed_point_op, FixedPointInputs, FixedPointRequest};
use lipattn::ops::flow::{self as flow_op, FlowInputs, FlowMap, FlowRequest};
use lipattn::ops::invert::{self as invert_op, InvertRequest};
use lipattn::ops::solvers::{SolverRequest, SolverRun};
use lipattn::ops::source::SourceRequest;
use lipattn::ops::to_json;
use lipattn::{Kernel, LayerSource, Operator};
use numpy::ndarray::Array3;
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;
use std::sync::Arc;

fn dict<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyDict>> {
    Ok(json_to_py(py, v)?.cast_into::<PyDict>()?)
}

/// The solver request of these keyword arguments.
#[allow(clippy::too_many_arguments)]
fn solver_request(
    solver: &str,
    atol: f64,
    rtol: f64,
    max_iter: usize,
    anderson_memory: usize,
    anderson_reg: f64,
    anderson_mixing: f64,
    broyden_memory: usize,
) -> PyResult<SolverRequest> {
    let req = SolverRequest {
        solver: solver.parse().py_err()?,
        atol,
        rtol,
        max_iter: Some(max_iter),
        anderson_memory,
        anderson_reg,
        anderson_mixing,
        broyden_memory,
    };
    Ok(req)
}

/// A seeded random layer on R^d (the CLI's synthetic layer: same seed, same weights).
#[pyfunction]
#[pyo3(signature = (d, heads=crate::ints::PyInt::Fits(SourceRequest::default().heads as i128), *, kernel=SourceRequest::default().kernel.name(), bias=SourceRequest::default().bias, seed=crate::ints::PyInt::Fits(SourceRequest::default().seed as i128)))]
fn random_layer(
    d: PyInt,
    heads: PyInt,
    kernel: &str,
    bias: f64,
    seed: PyInt,
) -> PyResult<PyAttentionLayer> {
    crate::ints::unsigned!(d, heads, seed);
    let k = kernel_of(kernel)?;
    let layer = synthetic::random_layer(d, heads, k, bias, seed).py_err()?;
    Ok(PyAttentionLayer::wrap_source(
        layer,
        lipattn::ops::source::synthetic_origin(d, heads, k, bias, seed),
    ))
}

/// n x d float64 tokens against the memory budget, before they are drawn.
fn tokens_fit(n: usize, d: usize) -> PyResult<()> {
    lipattn::budget::check(
        || format!("{n} x {d} tokens"),
        lipattn::budget::bytes_of(&[n, d], 8),
    )
    .py_err()
}

/// n seeded Gaussian tokens in R^d with standard deviation ``scale`` (the CLI's random tokens use
/// seed + 1 of its --seed).
#[pyfunction]
#[pyo3(signature = (n, d, *, scale=SourceRequest::default().token_scale, seed=crate::ints::PyInt::Fits(SourceRequest::default().seed as i128)))]
fn random_tokens<'py>(
    py: Python<'py>,
    n: PyInt,
    d: PyInt,
    scale: f64,
    seed: PyInt,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    crate::ints::unsigned!(n, d, seed);
    if n == 0 || d == 0 {
        return Err(PyValueError::new_err("n and d must be at least 1"));
    }
    tokens_fit(n, d)?;
    let x = synthetic::random_tokens_checked(n, d, scale, seed, "scale").py_err()?;
    Ok(to_numpy(py, x.as_ref()))
}

/// Geshkovski et al.'s layer: Q = K = V = I on R^d, scores beta <x, y>.
#[pyfunction]
#[pyo3(signature = (d, beta=lipattn::ops::source::IDENTITY_BETA))]
fn identity_layer(d: PyInt, beta: f64) -> PyResult<PyAttentionLayer> {
    crate::ints::unsigned!(d);
    let layer = identity_layer_of(d, beta).py_err()?;
    Ok(PyAttentionLayer::wrap_source(
        layer,
        lipattn::ops::source::identity_origin(d, beta),
    ))
}

/// n seeded points uniform on the unit sphere of R^d.
#[pyfunction]
#[pyo3(signature = (n, d, *, seed=crate::ints::PyInt::Fits(0)))]
fn sphere_sample<'py>(
    py: Python<'py>,
    n: PyInt,
    d: PyInt,
    seed: PyInt,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    crate::ints::unsigned!(n, d, seed);
    if n == 0 || d == 0 {
        return Err(PyValueError::new_err("n and d must be at least 1"));
    }
    tokens_fit(n, d)?;
    Ok(to_numpy(
        py,
        sphere_sample_of(n, d, &mut SplitMix::new(seed)).as_ref(),
    ))
}

/// Mean pairwise cosine and the number of clusters (tokens joined when cos >= 1 - threshold).
#[pyfunction]
#[pyo3(signature = (x, threshold=FlowRequest::default().cluster_threshold))]
fn clustering<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    threshold: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let x = matrix_f64(x, "x")?;
    lipattn::error::check_finite("x", flat(&x)).py_err()?;
    if x.nrows() == 0 {
        return Err(PyValueError::new_err("x is empty (no tokens)"));
    }
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "threshold must be finite and nonnegative, got {threshold}"
        )));
    }
    dict(
        py,
        &to_json(&clustering_of(x.as_ref(), threshold)).py_err()?,
    )
}

fn flat(x: &Mat<f64>) -> Vec<f64> {
    (0..x.nrows())
        .flat_map(|i| (0..x.ncols()).map(move |k| (i, k)))
        .map(|(i, k)| x[(i, k)])
        .collect()
}

/// A residual block y = x + g(x) whose branch g (the layer with W_O, b_O scaled by ``scale``)
/// has certified Lipschitz constant at most c < 1 on sequences of n tokens (Frobenius norm): on
/// all of R^{n x d} for tied L2 attention whose W_V = U W_Q holds exactly (no radius), on the
/// ball (B_R)^n otherwise (``radius`` = R required). The layer is an ``AttentionLayer`` (B1-B5)
/// or a ``RotaryLayer`` (B7, token i at position i under the model's mask). docs/dynamics.md#d1.
#[pyclass(module = "lipattn", name = "InvertibleBlock", frozen)]
pub struct PyInvertibleBlock {
    block: Arc<InvertibleBlock<AnyBranch>>,
    /// The layer's origin, named by `operator`.
    origin: LayerSource,
}

#[pymethods]
impl PyInvertibleBlock {
    #[new]
    #[pyo3(signature = (layer, n, c=InvertRequest::default().c, *, radius=None))]
    fn new(
        py: Python<'_>,
        layer: &Bound<'_, PyAny>,
        n: PyInt,
        c: f64,
        radius: Option<f64>,
    ) -> PyResult<Self> {
        crate::ints::unsigned!(n);
        let (layer, origin) = branch_of(layer)?;
        let block = interruptible(py, move || InvertibleBlock::new(&layer, n, c, radius))?;
        Ok(Self {
            block: Arc::new(block),
            origin,
        })
    }

    /// The block for the tokens ``x`` as ``lipattn invert`` builds it: for dot-product layers
    /// the radius is ``radius`` or the smallest of 1.25 max|x_i| * 1.5^k for which y = x + g(x)
    /// provably has its preimage and every iterate in the ball.
    #[staticmethod]
    #[pyo3(signature = (layer, x, c=InvertRequest::default().c, *, radius=None))]
    fn for_tokens(
        py: Python<'_>,
        layer: &Bound<'_, PyAny>,
        x: &Bound<'_, PyAny>,
        c: f64,
        radius: Option<f64>,
    ) -> PyResult<Self> {
        let (layer, origin) = branch_of(layer)?;
        let x = matrix_f64(x, "x")?;
        let block = interruptible(py, move || {
            InvertibleBlock::for_tokens(&layer, x.as_ref(), c, radius)
        })?;
        Ok(Self {
            block: Arc::new(block),
            origin,
        })
    }

    /// The branch g: an AttentionLayer, or a RotaryLayer when the block was built from one.
    #[getter]
    fn g<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        const NAME: &str = "branch g of an InvertibleBlock";
        match &self.block.g {
            AnyBranch::Plain(l) => Ok(PyAttentionLayer::wrap((**l).clone(), false, NAME.into())
                .into_pyobject(py)?
                .into_any()),
            AnyBranch::Rotary(b) => {
                let origin = LayerSource::new(NAME, true, Kernel::Dot);
                Ok(
                    crate::rotary::PyRotaryLayer::new((**b).clone(), origin, None)?
                        .into_pyobject(py)?
                        .into_any(),
                )
            }
        }
    }
    /// The factor applied to the layer's W_O and b_O.
    #[getter]
    fn scale(&self) -> f64 {
        self.block.scale
    }
    /// The requested bound c.
    #[getter]
    fn c(&self) -> f64 {
        self.block.target
    }
    #[getter]
    fn n(&self) -> usize {
        self.block.n
    }
    #[getter]
    fn d(&self) -> usize {
        self.block.g.d_in()
    }
    /// Certified Lipschitz constant of g (at most c).
    #[getter]
    fn certified_lipschitz(&self) -> f64 {
        self.block.certificate.constant
    }
    /// The certificate: constant, metric, domain, n and where the proof is written.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict(py, &to_json(&self.block.certificate).py_err()?)
    }
    /// The operator the certificate is about: the branch g, its layer, kernel, domain and norm
    /// (the ``operator`` of ``lipattn.invert``).
    #[getter]
    fn operator<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (b, cert) = (&self.block, &self.block.certificate);
        let op = Operator::certified_masked(
            &self.origin,
            b.g.kernel(),
            b.g.causal(),
            b.scale,
            cert.n,
            Some(cert.domain),
        )
        .with_rotary_form(b.g.rotary_form());
        dict(py, &to_json(&op).py_err()?)
    }

    /// y = x + g(x), float64 (n, d).
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
        let x = matrix_f64(x, "x")?;
        let b = self.block.clone();
        let y = detached(py, move || b.forward(x.as_ref()))?;
        Ok(to_numpy(py, y.as_ref()))
    }

    /// |x + g(x) - y|_F.
    fn residual(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
    ) -> PyResult<f64> {
        let x = matrix_f64(x, "x")?;
        let y = matrix_f64(y, "y")?;
        let b = self.block.clone();
        detached(py, move || b.residual(x.as_ref(), y.as_ref()))
    }

    /// Solves x + g(x) = y from x_0 = y. Returns the dict of one ``lipattn invert --json``
    /// solver entry (solver, iterations, evaluations, residual, error_bound (certified),
    /// a_priori_iterations (certified), abs_trace, rel_trace, certified_lipschitz, domain, ...)
    /// plus ``x``, and ``reconstruction_error`` |x - x_true|_F when ``x_true`` is given. Raises
    /// NoConvergenceError when the solver fails.
    #[pyo3(signature = (y, *, solver="anderson", atol=InvertRequest::default().solve.atol, max_iter=crate::ints::PyInt::Fits(invert_op::DEFAULT_MAX_ITER as i128), anderson_memory=crate::ints::PyInt::Fits(InvertRequest::default().solve.anderson_memory as i128), anderson_reg=InvertRequest::default().solve.anderson_reg, anderson_mixing=InvertRequest::default().solve.anderson_mixing, broyden_memory=crate::ints::PyInt::Fits(InvertRequest::default().solve.broyden_memory as i128), x_true=None))]
    #[allow(clippy::too_many_arguments)]
    fn inverse<'py>(
        &self,
        py: Python<'py>,
        y: &Bound<'py, PyAny>,
        solver: &str,
        atol: f64,
        max_iter: PyInt,
        anderson_memory: PyInt,
        anderson_reg: f64,
        anderson_mixing: f64,
        broyden_memory: PyInt,
        x_true: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::ints::unsigned!(max_iter, anderson_memory, broyden_memory);
        let req = solver_request(
            solver,
            atol,
            InvertRequest::default().solve.rtol,
            max_iter,
            anderson_memory,
            anderson_reg,
            anderson_mixing,
            broyden_memory,
        )?;
        let s = req.single().py_err()?;
        let opts = req.options(invert_op::DEFAULT_MAX_ITER).py_err()?;
        let y = matrix_f64(y, "y")?;
        let x_true = x_true
            .filter(|o| !o.is_none())
            .map(|o| matrix_f64(o, "x_true"))
            .transpose()?;
        let b = self.block.clone();
        let (inv, v) = interruptible(py, move || {
            invert_op::inverse(
                &b,
                y.as_ref(),
                &s,
                &opts,
                x_true.as_ref().map(|t| t.as_ref()),
            )
        })?;
        let d = dict(py, &v)?;
        d.set_item("x", to_numpy(py, inv.x.as_ref()))?;
        Ok(d)
    }

    /// log|det(I + J_g(x))|. ``method="exact"``: dense Jacobian and LU (n d <= 4096), keys
    /// logabsdet, sign, dim. ``"series"``: Hutchinson estimate of the truncated log series with
    /// ``probes`` Rademacher probes, keys estimate, std_error (estimated), truncation_bound
    /// (certified), terms, probes, lipschitz, jvps.
    #[pyo3(signature = (x, *, method="exact", truncation_tol=InvertRequest::default().truncation_tol, probes=crate::ints::PyInt::Fits(InvertRequest::default().probes as i128), seed=crate::ints::PyInt::Fits(InvertRequest::default().seed as i128)))]
    fn logdet<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        method: &str,
        truncation_tol: f64,
        probes: PyInt,
        seed: PyInt,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::ints::unsigned!(probes, seed);
        let method: invert_op::LogDetMethod = method.parse().py_err()?;
        let x = matrix_f64(x, "x")?;
        let b = self.block.clone();
        let v = interruptible(py, move || {
            invert_op::logdet_by(method, &b, x.as_ref(), truncation_tol, probes, seed)
        })?;
        dict(py, &v)
    }

    fn __repr__(&self) -> String {
        format!(
            "InvertibleBlock(n={}, d={}, c={}, certified_lipschitz={:.6e}, scale={:.6e})",
            self.block.n,
            self.block.g.d_in(),
            self.block.target,
            self.block.certificate.constant,
            self.block.scale
        )
    }
}

/// The command ``lipattn invert`` on a layer (an ``AttentionLayer``, or a ``RotaryLayer`` with
/// token i at position i) and tokens ``x``: the residual block
/// y = x + g(x) with g scaled to certified Lip(g) <= ``c`` (``InvertibleBlock.for_tokens``),
/// inverted from y by each solver of ``solver`` ('picard', 'anderson', 'broyden' or 'all'),
/// the attained local constant of g at x and, with ``logdet``, log|det(I + J_g(x))|.
///
/// Returns the keys of ``lipattn invert --json`` (certified_lipschitz, domain, the first
/// converged solver's iterations, residual, reconstruction_error, error_bound (certified),
/// a_priori_iterations (certified), solvers, status, logdet, ...) and ``x``: the first converged
/// solver's reconstruction. A solver that fails is reported in ``solvers`` with its status;
/// when none converges, the first failure is raised as NoConvergenceError.
#[pyfunction]
#[pyo3(signature = (layer, x, c=InvertRequest::default().c, *, radius=None, solver=InvertRequest::default().solve.solver.name(), atol=InvertRequest::default().solve.atol, max_iter=crate::ints::PyInt::Fits(invert_op::DEFAULT_MAX_ITER as i128), anderson_memory=crate::ints::PyInt::Fits(InvertRequest::default().solve.anderson_memory as i128), anderson_reg=InvertRequest::default().solve.anderson_reg, anderson_mixing=InvertRequest::default().solve.anderson_mixing, broyden_memory=crate::ints::PyInt::Fits(InvertRequest::default().solve.broyden_memory as i128), logdet=false, probes=crate::ints::PyInt::Fits(InvertRequest::default().probes as i128), logdet_series=false, truncation_tol=InvertRequest::default().truncation_tol, seed=crate::ints::PyInt::Fits(InvertRequest::default().seed as i128)))]
#[allow(clippy::too_many_arguments)]
fn invert<'py>(
    py: Python<'py>,
    layer: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    c: f64,
    radius: Option<f64>,
    solver: &str,
    atol: f64,
    max_iter: PyInt,
    anderson_memory: PyInt,
    anderson_reg: f64,
    anderson_mixing: f64,
    broyden_memory: PyInt,
    logdet: bool,
    probes: PyInt,
    logdet_series: bool,
    truncation_tol: f64,
    seed: PyInt,
) -> PyResult<Bound<'py, PyDict>> {
    crate::ints::unsigned!(max_iter, anderson_memory, broyden_memory, probes, seed);
    let req = InvertRequest {
        c,
        radius,
        solve: solver_request(
            solver,
            atol,
            InvertRequest::default().solve.rtol,
            max_iter,
            anderson_memory,
            anderson_reg,
            anderson_mixing,
            broyden_memory,
        )?,
        logdet,
        probes,
        logdet_series,
        truncation_tol,
        seed,
    };
    let x = matrix_f64(x, "x")?;
    let (layer, origin) = branch_of(layer)?;
    let (v, xr) = interruptible(py, move || {
        let inputs = invert_op::InvertInputs {
            layer: &layer,
            x: x.as_ref(),
            source: None,
            origin: &origin,
        };
        let mut report = invert_op::run(&req, inputs, &mut lipattn::ops::silent)?;
        let v = to_json(&report)?;
        if report.reconstructions.is_empty() {
            let first = report.solvers.drain(..).find_map(|r| match r {
                SolverRun::Failed { error, .. } => Some(error),
                SolverRun::Converged(_) => None,
            });
            return Err(first.expect("no reconstruction means a failed solver"));
        }
        Ok((v, report.reconstructions.swap_remove(0)))
    })?;
    let out = dict(py, &v)?;
    out.set_item("x", to_numpy(py, xr.as_ref()))?;
    Ok(out)
}

/// Infinitely deep weight-tied attention: the fixed point of T from the tokens ``x``
/// (``lipattn fixed-point``). Token space: ``variant`` plain X = f(X), damped
/// X = (1 - beta) X + beta f(X), or injected X = U + f(X) with U = ``input`` (default: x);
/// measure space: mu = F(mu) with the atoms x and ``weights`` (default uniform), residuals in
/// exact W1. ``contract`` scales the layer to a certified contraction constant <= contract.
/// ``layer`` is an ``AttentionLayer`` or a ``RotaryLayer``; a RotaryLayer is no map of measures,
/// so it runs in token space only (B7, docs/dynamics.md#branches).
///
/// Returns the keys of ``lipattn fixed-point --json`` (space, variant, metric, n, d, scale,
/// certified_contraction, layer_certificate, notes) merged with its solver entry (solver,
/// steps, evaluations, residual, relative_residual, abs_trace, rel_trace, contraction,
/// error_bound, a_priori_steps, ...), and ``x``: the fixed point (lowest-residual iterate).
/// Raises NoConvergenceError when the solver diverges or runs out of steps.
#[pyfunction]
#[pyo3(signature = (layer, x, *, space=FixedPointRequest::default().space.name(), variant=FixedPointRequest::default().variant.name(), beta=FixedPointRequest::default().beta, input=None, weights=None, contract=None, radius=None, solver="anderson", atol=FixedPointRequest::default().solve.atol, rtol=FixedPointRequest::default().solve.rtol, max_iter=crate::ints::PyInt::Fits(fixed_point_op::DEFAULT_MAX_ITER as i128), anderson_memory=crate::ints::PyInt::Fits(FixedPointRequest::default().solve.anderson_memory as i128), anderson_reg=FixedPointRequest::default().solve.anderson_reg, anderson_mixing=FixedPointRequest::default().solve.anderson_mixing, broyden_memory=crate::ints::PyInt::Fits(FixedPointRequest::default().solve.broyden_memory as i128)))]
#[allow(clippy::too_many_arguments)]
fn fixed_point<'py>(
    py: Python<'py>,
    layer: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    space: &str,
    variant: &str,
    beta: f64,
    input: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    contract: Option<f64>,
    radius: Option<f64>,
    solver: &str,
    atol: f64,
    rtol: f64,
    max_iter: PyInt,
    anderson_memory: PyInt,
    anderson_reg: f64,
    anderson_mixing: f64,
    broyden_memory: PyInt,
) -> PyResult<Bound<'py, PyDict>> {
    crate::ints::unsigned!(max_iter, anderson_memory, broyden_memory);
    let req = FixedPointRequest {
        space: space.parse().py_err()?,
        variant: variant.parse().py_err()?,
        beta,
        contract,
        radius,
        solve: solver_request(
            solver,
            atol,
            rtol,
            max_iter,
            anderson_memory,
            anderson_reg,
            anderson_mixing,
            broyden_memory,
        )?,
    };
    // This function returns one solver's result.
    req.solve.single().py_err()?;
    let x = matrix_f64(x, "x")?;
    let input = input
        .filter(|o| !o.is_none())
        .map(|u| matrix_f64(u, "input"))
        .transpose()?;
    let weights = optional_vector(weights, "weights")?;
    let (layer, origin) = branch_of(layer)?;
    let (v, xs) = interruptible(py, move || {
        let inputs = FixedPointInputs {
            layer: &layer,
            x: x.as_ref(),
            input,
            weights,
            source: None,
            origin: &origin,
        };
        let mut report = fixed_point_op::run(&req, inputs, &mut lipattn::ops::silent)?;
        let mut top = to_json(&report)?;
        let run = report.solvers.pop().expect("one solver");
        let mut v = match run {
            SolverRun::Converged(v) => v,
            SolverRun::Failed { error, .. } => return Err(error),
        };
        // The solver's entry with the command's keys beside it.
        if let (Value::Object(entry), Some(top)) = (&mut v, top.as_object_mut()) {
            top.remove("solvers");
            entry.extend(std::mem::take(top));
        }
        Ok((
            v,
            report
                .solutions
                .pop()
                .expect("a converged solver's fixed point"),
        ))
    })?;
    let out = dict(py, &v)?;
    out.set_item("x", to_numpy(py, xs.as_ref()))?;
    Ok(out)
}

/// Continuous-depth attention (``lipattn flow``): dx_i/dt = Gamma_{mu_t}(x_i) from the tokens
/// ``x`` (weighted by ``weights``, default uniform) for an ``AttentionLayer`` (a flow of
/// measures), or dX/dt = f(X) for a ``RotaryLayer`` (a flow of token matrices, token i at
/// position i; no ``weights``; docs/dynamics.md#d6), with ``projection`` 'sphere' (tangential
/// velocity, renormalised tokens), 'layernorm' or 'none', and ``integrator`` 'rk4',
/// 'dopri-fixed' (fixed step ``dt``) or 'dopri' (adaptive, ``rtol``/``atol``, first step ``h0``,
/// default dt). States are recorded every ``record`` and at ``t``.
///
/// Returns the keys of ``lipattn flow --json``: n, d, dtype, options, steps (accepted,
/// rejected, evaluations), times, clustering (per recorded time; measured), gronwall, plus
/// ``states``: float64 (len(times), n, d). ``gronwall``: a perturbation size eps (the CLI's
/// seeded Gaussian noise of ``seed``) or the second initial tokens; the certified Gronwall rate
/// and bound are then compared with exact W1 distances between the two flows (Frobenius
/// distances between token matrices for a ``RotaryLayer``; ``space`` says which).
#[pyfunction]
#[pyo3(signature = (layer, x, *, t=FlowRequest::default().t, projection=FlowRequest::default().projection.name(), integrator=FlowRequest::default().integrator.name(), dt=FlowRequest::default().dt, rtol=FlowRequest::default().rtol, atol=FlowRequest::default().atol, h0=None, record=FlowRequest::default().record, max_steps=crate::ints::PyInt::Fits(FlowRequest::default().max_steps as i128), weights=None, layernorm_eps=FlowRequest::default().layernorm_eps, cluster_threshold=FlowRequest::default().cluster_threshold, gronwall=None, seed=crate::ints::PyInt::Fits(FlowRequest::default().seed as i128)))]
#[allow(clippy::too_many_arguments)]
fn flow<'py>(
    py: Python<'py>,
    layer: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    t: f64,
    projection: &str,
    integrator: &str,
    dt: f64,
    rtol: f64,
    atol: f64,
    h0: Option<f64>,
    record: f64,
    max_steps: PyInt,
    weights: Option<&Bound<'py, PyAny>>,
    layernorm_eps: f64,
    cluster_threshold: f64,
    gronwall: Option<&Bound<'py, PyAny>>,
    seed: PyInt,
) -> PyResult<Bound<'py, PyDict>> {
    crate::ints::unsigned!(max_steps, seed);
    let (eps, gronwall_tokens) = match gronwall.filter(|o| !o.is_none()) {
        None => (None, None),
        Some(g) => match g.extract::<f64>() {
            Ok(eps) => (Some(eps), None),
            Err(_) => (None, Some(matrix_f64(g, "gronwall")?)),
        },
    };
    let req = FlowRequest {
        t,
        projection: projection.parse().py_err()?,
        integrator: integrator.parse().py_err()?,
        dt,
        rtol,
        atol,
        h0,
        record,
        max_steps,
        layernorm_eps,
        cluster_threshold,
        gronwall: eps,
        seed,
        ..FlowRequest::default()
    };
    let weights = optional_vector(weights, "weights")?;
    let x0 = matrix_f64(x, "x")?;
    let (layer, origin) = branch_of(layer)?;
    let (v, states) = interruptible(py, move || {
        let inputs = FlowInputs {
            map: FlowMap::of(&layer),
            x: x0.as_ref(),
            weights,
            gronwall_tokens,
            source: None,
            origin: &origin,
        };
        let report = flow_op::run(&req, inputs, &mut lipattn::ops::silent)?;
        let mut v = to_json(&report)?;
        // This function never measures the mean field (lipattn.mean_field does).
        if let Value::Object(o) = &mut v {
            o.remove("mean_field");
        }
        Ok((v, report.states))
    })?;
    let out = dict(py, &v)?;
    let (k, n, d) = (states.len(), states[0].nrows(), states[0].ncols());
    let arr = Array3::from_shape_fn((k, n, d), |(s, i, j)| states[s][(i, j)]);
    out.set_item("states", arr.into_pyarray(py))?;
    Ok(out)
}

/// The branch of the dynamics that the Python layer `layer` holds (an AttentionLayer or a
/// RotaryLayer; the weights are shared, not copied) and its origin.
fn branch_of(layer: &Bound<'_, PyAny>) -> PyResult<(AnyBranch, LayerSource)> {
    if let Ok(l) = layer.cast::<PyAttentionLayer>() {
        let l = l.get();
        return Ok((AnyBranch::Plain(l.layer.clone()), l.origin.clone()));
    }
    if let Ok(l) = layer.cast::<crate::rotary::PyRotaryLayer>() {
        let l = l.get();
        return Ok((AnyBranch::Rotary(l.branch.clone()), l.origin.clone()));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "layer: expected an AttentionLayer or a RotaryLayer, got {}",
        layer.get_type().name()?
    )))
}

/// Mean-field consistency (``lipattn flow --mean-field``): ``replicates`` samples of n points
/// uniform on the sphere for each n in ``ns``, flowed to ``t`` and compared in exact W1 with a
/// reference flow of ``reference`` points (seeded by ``seed``; the CLI uses its --seed + 11).
/// Keys: ns, reference_n, replicates, w1_final, w1_initial, rate_final, rate_initial (all
/// measured).
#[pyfunction]
#[pyo3(signature = (layer, ns, *, reference=crate::ints::PyInt::Fits(FlowRequest::default().mean_field_reference as i128), replicates=crate::ints::PyInt::Fits(FlowRequest::default().mean_field_replicates as i128), seed=crate::ints::PyInt::Fits(FlowRequest::default().seed as i128), t=FlowRequest::default().t, projection=FlowRequest::default().projection.name(), integrator=FlowRequest::default().integrator.name(), dt=FlowRequest::default().dt, rtol=FlowRequest::default().rtol, atol=FlowRequest::default().atol, h0=None, record=FlowRequest::default().record, max_steps=crate::ints::PyInt::Fits(FlowRequest::default().max_steps as i128), layernorm_eps=FlowRequest::default().layernorm_eps))]
#[allow(clippy::too_many_arguments)]
fn mean_field<'py>(
    py: Python<'py>,
    layer: PyRef<'py, PyAttentionLayer>,
    ns: Vec<PyInt>,
    reference: PyInt,
    replicates: PyInt,
    seed: PyInt,
    t: f64,
    projection: &str,
    integrator: &str,
    dt: f64,
    rtol: f64,
    atol: f64,
    h0: Option<f64>,
    record: f64,
    max_steps: PyInt,
    layernorm_eps: f64,
) -> PyResult<Bound<'py, PyDict>> {
    crate::ints::unsigned!(ns, reference, replicates, seed, max_steps);
    let req = FlowRequest {
        t,
        projection: projection.parse().py_err()?,
        integrator: integrator.parse().py_err()?,
        dt,
        rtol,
        atol,
        h0,
        record,
        max_steps,
        layernorm_eps,
        mean_field_reference: reference,
        mean_field_replicates: replicates,
        ..FlowRequest::default()
    };
    let layer = layer.layer.clone();
    let v = interruptible(py, move || to_json(&req.mean_field(&layer, &ns, seed)?))?;
    dict(py, &v)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyInvertibleBlock>()?;
    m.add_function(wrap_pyfunction!(random_layer, m)?)?;
    m.add_function(wrap_pyfunction!(random_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(identity_layer, m)?)?;
    m.add_function(wrap_pyfunction!(sphere_sample, m)?)?;
    m.add_function(wrap_pyfunction!(clustering, m)?)?;
    m.add_function(wrap_pyfunction!(invert, m)?)?;
    m.add_function(wrap_pyfunction!(fixed_point, m)?)?;
    m.add_function(wrap_pyfunction!(flow, m)?)?;
    m.add_function(wrap_pyfunction!(mean_field, m)?)?;
    Ok(())
}
