//! The dynamics (`lipattn.dynamics` in the core, `lipattn invert`, `fixed-point` and `flow` in
//! the CLI): invertible residual blocks, weight-tied fixed points and attention flows.
//!
//! Results are plain dicts built from the library's serde serialisation, with the keys of the
//! CLI's `--json` output, plus NumPy arrays for the tokens. A solver that does not converge
//! raises `NoConvergenceError` (errors.rs): a diverged iterate is never returned as a result.

use crate::convert::{json_to_py, matrix_f64, optional_vector, to_numpy};
use crate::errors::{detached, interruptible, IntoPyResult};
use crate::layer::{kernel_of, PyAttentionLayer};
use faer::Mat;
use lipattn::dynamics::certify::{invariant_radius, row_bound, scaled};
use lipattn::dynamics::flow::{
    clustering as clustering_of, gronwall_check, identity_layer as identity_layer_of, integrate,
    mean_field as mean_field_of, sphere_sample as sphere_sample_of,
};
use lipattn::dynamics::logdet::{logdet_exact, logdet_series};
use lipattn::dynamics::synthetic;
use lipattn::dynamics::{
    max_row_norm, FlowOptions, Integrator, InvertibleBlock, MeasureFixedPoint, Projection,
    SolveOptions, Solver, TokenFixedPoint, Variant,
};
use lipattn::estimation::SplitMix;
use lipattn::{AttentionLayer, Error, Kernel, Measure};
use numpy::ndarray::Array3;
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn to_value<T: Serialize>(v: &T) -> lipattn::Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Numerical(format!("serialising a result: {e}")))
}

fn dict<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyDict>> {
    Ok(json_to_py(py, v)?.cast_into::<PyDict>()?)
}

/// One solver, named as in the CLI's --solver (without "all": Python loops over names itself).
fn solver_of(
    name: &str,
    anderson_memory: usize,
    anderson_reg: f64,
    anderson_mixing: f64,
    broyden_memory: usize,
) -> PyResult<Solver> {
    Ok(match name {
        "picard" | "fixed-point" => Solver::Picard,
        "anderson" => Solver::Anderson {
            memory: anderson_memory,
            regularisation: anderson_reg,
            mixing: anderson_mixing,
        },
        "broyden" => Solver::Broyden {
            memory: broyden_memory,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown solver '{other}' (expected 'picard', 'anderson' or 'broyden')"
            )))
        }
    })
}

/// The CLI's stopping rule: `max_iter` steps after the start, i.e. max_iter + 1 evaluations.
fn solve_options(atol: f64, rtol: f64, max_iter: usize) -> PyResult<SolveOptions> {
    let opts = SolveOptions {
        atol,
        rtol,
        max_evals: max_iter.saturating_add(1),
        ..Default::default()
    };
    opts.check().py_err()?;
    Ok(opts)
}

fn check_positive(what: &str, v: f64) -> PyResult<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{what} must be positive and finite, got {v}"
        )));
    }
    Ok(())
}

/// A seeded random layer on R^d (the CLI's synthetic layer: same seed, same weights).
#[pyfunction]
#[pyo3(signature = (d, heads=2, *, kernel="l2", bias=0.1, seed=0))]
fn random_layer(
    d: usize,
    heads: usize,
    kernel: &str,
    bias: f64,
    seed: u64,
) -> PyResult<PyAttentionLayer> {
    let k = kernel_of(kernel)?;
    let layer = synthetic::random_layer(d, heads, k, bias, seed).py_err()?;
    Ok(PyAttentionLayer::wrap(
        layer,
        false,
        format!("random layer (d {d}, {heads} heads, {kernel}, bias {bias}, seed {seed})"),
    ))
}

/// n seeded Gaussian tokens in R^d with standard deviation ``scale`` (the CLI's random tokens use
/// seed + 1 of its --seed).
#[pyfunction]
#[pyo3(signature = (n, d, *, scale=1.0, seed=0))]
fn random_tokens<'py>(
    py: Python<'py>,
    n: usize,
    d: usize,
    scale: f64,
    seed: u64,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    if n == 0 || d == 0 {
        return Err(PyValueError::new_err("n and d must be at least 1"));
    }
    check_positive("scale", scale)?;
    Ok(to_numpy(
        py,
        synthetic::random_tokens(n, d, scale, seed).as_ref(),
    ))
}

/// Geshkovski et al.'s layer: Q = K = V = I on R^d, scores beta <x, y>.
#[pyfunction]
#[pyo3(signature = (d, beta=1.0))]
fn identity_layer(d: usize, beta: f64) -> PyResult<PyAttentionLayer> {
    let layer = identity_layer_of(d, beta).py_err()?;
    Ok(PyAttentionLayer::wrap(
        layer,
        false,
        format!("identity layer (d {d}, beta {beta})"),
    ))
}

/// n seeded points uniform on the unit sphere of R^d.
#[pyfunction]
#[pyo3(signature = (n, d, *, seed=0))]
fn sphere_sample<'py>(
    py: Python<'py>,
    n: usize,
    d: usize,
    seed: u64,
) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    if n == 0 || d == 0 {
        return Err(PyValueError::new_err("n and d must be at least 1"));
    }
    Ok(to_numpy(
        py,
        sphere_sample_of(n, d, &mut SplitMix::new(seed)).as_ref(),
    ))
}

/// Mean pairwise cosine and the number of clusters (tokens joined when cos >= 1 - threshold).
#[pyfunction]
#[pyo3(signature = (x, threshold=1e-2))]
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
        &to_value(&clustering_of(x.as_ref(), threshold)).py_err()?,
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
/// all of R^{n x d} for tied L2 attention (no radius), on the ball (B_R)^n for the dot product
/// (``radius`` = R required). docs/dynamics.md#d1.
#[pyclass(module = "lipattn", name = "InvertibleBlock", frozen)]
pub struct PyInvertibleBlock {
    block: Arc<InvertibleBlock>,
}

#[pymethods]
impl PyInvertibleBlock {
    #[new]
    #[pyo3(signature = (layer, n, c=0.9, *, radius=None))]
    fn new(
        py: Python<'_>,
        layer: PyRef<'_, PyAttentionLayer>,
        n: usize,
        c: f64,
        radius: Option<f64>,
    ) -> PyResult<Self> {
        let layer = layer.layer.clone();
        let block = interruptible(py, move || InvertibleBlock::new(&layer, n, c, radius))?;
        Ok(Self {
            block: Arc::new(block),
        })
    }

    /// The block for the tokens ``x`` as ``lipattn invert`` builds it: for dot-product layers
    /// the radius is ``radius`` or the smallest of 1.25 max|x_i| * 1.5^k for which y = x + g(x)
    /// provably has its preimage and every iterate in the ball.
    #[staticmethod]
    #[pyo3(signature = (layer, x, c=0.9, *, radius=None))]
    fn for_tokens(
        py: Python<'_>,
        layer: PyRef<'_, PyAttentionLayer>,
        x: &Bound<'_, PyAny>,
        c: f64,
        radius: Option<f64>,
    ) -> PyResult<Self> {
        let layer = layer.layer.clone();
        let x = matrix_f64(x, "x")?;
        let block = interruptible(py, move || block_for(&layer, &x, c, radius))?;
        Ok(Self {
            block: Arc::new(block),
        })
    }

    /// The branch g as an AttentionLayer.
    #[getter]
    fn g(&self) -> PyAttentionLayer {
        PyAttentionLayer::wrap(
            self.block.g.clone(),
            false,
            "branch g of an InvertibleBlock".into(),
        )
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
        dict(py, &to_value(&self.block.certificate).py_err()?)
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
    #[pyo3(signature = (y, *, solver="anderson", atol=1e-10, max_iter=1000, anderson_memory=6, anderson_reg=1e-4, anderson_mixing=1.0, broyden_memory=30, x_true=None))]
    #[allow(clippy::too_many_arguments)]
    fn inverse<'py>(
        &self,
        py: Python<'py>,
        y: &Bound<'py, PyAny>,
        solver: &str,
        atol: f64,
        max_iter: usize,
        anderson_memory: usize,
        anderson_reg: f64,
        anderson_mixing: f64,
        broyden_memory: usize,
        x_true: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let s = solver_of(
            solver,
            anderson_memory,
            anderson_reg,
            anderson_mixing,
            broyden_memory,
        )?;
        let opts = solve_options(atol, 0.0, max_iter)?;
        let y = matrix_f64(y, "y")?;
        let x_true = x_true
            .filter(|o| !o.is_none())
            .map(|o| matrix_f64(o, "x_true"))
            .transpose()?;
        if let Some(t) = &x_true {
            if (t.nrows(), t.ncols()) != (y.nrows(), y.ncols()) {
                return Err(PyValueError::new_err(format!(
                    "x_true: expected shape ({}, {}), found ({}, {})",
                    y.nrows(),
                    y.ncols(),
                    t.nrows(),
                    t.ncols()
                )));
            }
        }
        let b = self.block.clone();
        let inv = interruptible(py, move || b.inverse(y.as_ref(), &s, &opts))?;
        let mut v = to_value(&inv).py_err()?;
        v["status"] = json!("converged");
        if let Some(t) = &x_true {
            v["reconstruction_error"] = json!(lipattn::dynamics::frobenius((&inv.x - t).as_ref()));
        }
        let d = dict(py, &v)?;
        d.set_item("x", to_numpy(py, inv.x.as_ref()))?;
        Ok(d)
    }

    /// log|det(I + J_g(x))|. ``method="exact"``: dense Jacobian and LU (n d <= 4096), keys
    /// logabsdet, sign, dim. ``"series"``: Hutchinson estimate of the truncated log series with
    /// ``probes`` Rademacher probes, keys estimate, std_error (estimated), truncation_bound
    /// (certified), terms, probes, lipschitz, jvps.
    #[pyo3(signature = (x, *, method="exact", truncation_tol=1e-3, probes=16, seed=0))]
    fn logdet<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        method: &str,
        truncation_tol: f64,
        probes: usize,
        seed: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let x = matrix_f64(x, "x")?;
        let b = self.block.clone();
        let v = match method {
            "exact" => interruptible(py, move || to_value(&logdet_exact(&b.g, x.as_ref())?))?,
            "series" => interruptible(py, move || {
                to_value(&logdet_series(
                    &b.g,
                    x.as_ref(),
                    b.certificate.constant,
                    truncation_tol,
                    probes,
                    seed,
                )?)
            })?,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown log-determinant method '{other}' (expected 'exact' or 'series')"
                )))
            }
        };
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

/// `lipattn invert`'s block: for the dot product, the smallest tried radius that certifies the
/// inverse at y = x + g(x).
fn block_for(
    layer: &AttentionLayer<f64>,
    x: &Mat<f64>,
    c: f64,
    radius: Option<f64>,
) -> lipattn::Result<InvertibleBlock> {
    let n = x.nrows();
    if layer.kernel == Kernel::L2 {
        if radius.is_some() {
            return Err(Error::Invalid(
                "radius applies to dot-product layers only (tied L2 is certified on all of R^(n x d))".into(),
            ));
        }
        return InvertibleBlock::new(layer, n, c, None);
    }
    let mut r = match radius {
        Some(r) => r,
        None => 1.25 * max_row_norm(x.as_ref()).max(1e-3),
    };
    for _ in 0..40 {
        let b = InvertibleBlock::new(layer, n, c, Some(r))?;
        let y = b.forward(x.as_ref())?;
        if b.inverse_problem(y.as_ref()).is_ok() {
            return Ok(b);
        }
        if radius.is_some() {
            return Err(Error::Invalid(format!("with radius {r}, y = x + g(x) lies outside the range where the inverse is certified; choose a larger radius")));
        }
        r *= 1.5;
    }
    Err(Error::Invalid(
        "found no radius for which the inverse is certified".into(),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Space {
    Tokens,
    Measure,
}

enum Problem {
    Tokens(TokenFixedPoint),
    Measure(MeasureFixedPoint),
}

impl Problem {
    fn contraction(&self) -> Option<f64> {
        match self {
            Problem::Tokens(p) => p.contraction,
            Problem::Measure(p) => p.contraction,
        }
    }
}

struct FixedPointSpec {
    space: Space,
    variant: &'static str,
    beta: f64,
    radius: Option<f64>,
    /// The injected input U (the starting tokens unless given).
    input: Mat<f64>,
    weights: Option<Vec<f64>>,
}

/// The problem as `lipattn fixed-point` builds it; the default radius is the larger of the
/// smallest invariant one and the start's, so that the start is in the certified domain.
fn build(
    spec: &FixedPointSpec,
    layer: AttentionLayer<f64>,
    x: &Mat<f64>,
) -> lipattn::Result<Problem> {
    let n = x.nrows();
    let radius = match (spec.radius, layer.kernel) {
        (Some(r), _) => Some(r),
        (None, Kernel::Dot) => {
            let (m, b) = row_bound(&layer)?;
            let u = if spec.space == Space::Tokens && spec.variant == "injected" {
                max_row_norm(spec.input.as_ref())
            } else {
                0.0
            };
            invariant_radius(m, b, u).map(|r| r.max(max_row_norm(x.as_ref())))
        }
        (None, Kernel::L2) => None,
    };
    Ok(match spec.space {
        Space::Tokens => {
            let variant = match spec.variant {
                "plain" => Variant::Plain,
                "damped" => Variant::Damped { beta: spec.beta },
                _ => Variant::Injected {
                    input: spec.input.clone(),
                },
            };
            Problem::Tokens(TokenFixedPoint::new(layer, n, variant, radius)?)
        }
        Space::Measure => {
            let w = spec.weights.clone().unwrap_or(vec![1.0 / n as f64; n]);
            Problem::Measure(MeasureFixedPoint::new(layer, w, radius)?)
        }
    })
}

/// `--contract c`: the largest scale (bisection over 60 halvings) whose scaled layer is a
/// certified contraction with constant <= c.
fn contract_scale(
    spec: &FixedPointSpec,
    layer: &AttentionLayer<f64>,
    x: &Mat<f64>,
    c: f64,
) -> lipattn::Result<(f64, Problem)> {
    let ok = |s: f64| -> lipattn::Result<Option<Problem>> {
        let p = build(spec, scaled(layer, s), x)?;
        Ok(p.contraction().filter(|l| *l <= c).map(|_| p))
    };
    let mut hi = 1.0;
    while ok(hi)?.is_some() && hi < 1e12 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    let mut best = None;
    for _ in 0..60 {
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
        Error::Invalid(format!(
            "no scale makes the layer a certified contraction with constant <= {c}"
        ))
    })
}

/// Infinitely deep weight-tied attention: the fixed point of T from the tokens ``x``
/// (``lipattn fixed-point``). Token space: ``variant`` plain X = f(X), damped
/// X = (1 - beta) X + beta f(X), or injected X = U + f(X) with U = ``input`` (default: x);
/// measure space: mu = F(mu) with the atoms x and ``weights`` (default uniform), residuals in
/// exact W1. ``contract`` scales the layer to a certified contraction constant <= contract.
///
/// Returns the keys of ``lipattn fixed-point --json`` (space, variant, metric, n, d, scale,
/// certified_contraction, layer_certificate, notes) merged with its solver entry (solver,
/// steps, evaluations, residual, relative_residual, abs_trace, rel_trace, contraction,
/// error_bound, a_priori_steps, ...), and ``x``: the fixed point (lowest-residual iterate).
/// Raises NoConvergenceError when the solver diverges or runs out of steps.
#[pyfunction]
#[pyo3(signature = (layer, x, *, space="tokens", variant="plain", beta=0.5, input=None, weights=None, contract=None, radius=None, solver="anderson", atol=1e-10, rtol=0.0, max_iter=500, anderson_memory=6, anderson_reg=1e-4, anderson_mixing=1.0, broyden_memory=30))]
#[allow(clippy::too_many_arguments)]
fn fixed_point<'py>(
    py: Python<'py>,
    layer: PyRef<'py, PyAttentionLayer>,
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
    max_iter: usize,
    anderson_memory: usize,
    anderson_reg: f64,
    anderson_mixing: f64,
    broyden_memory: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let space = match space {
        "tokens" => Space::Tokens,
        "measure" => Space::Measure,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown space '{other}' (expected 'tokens' or 'measure')"
            )))
        }
    };
    let variant: &'static str = match variant {
        "plain" => "plain",
        "damped" => "damped",
        "injected" => "injected",
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown variant '{other}' (expected 'plain', 'damped' or 'injected')"
            )))
        }
    };
    if space == Space::Measure && variant != "plain" {
        return Err(PyValueError::new_err(
            "space 'measure' iterates mu = F(mu) only (variant 'plain')",
        ));
    }
    if space == Space::Tokens && weights.is_some_and(|w| !w.is_none()) {
        return Err(PyValueError::new_err(
            "weights apply to space 'measure' only",
        ));
    }
    if let Some(c) = contract {
        if !(c.is_finite() && c > 0.0 && c < 1.0) {
            return Err(PyValueError::new_err(format!(
                "contract must lie in (0, 1), got {c}"
            )));
        }
    }
    let s = solver_of(
        solver,
        anderson_memory,
        anderson_reg,
        anderson_mixing,
        broyden_memory,
    )?;
    let opts = solve_options(atol, rtol, max_iter)?;
    let x = matrix_f64(x, "x")?;
    let input = match input.filter(|o| !o.is_none()) {
        Some(u) => {
            if variant != "injected" {
                return Err(PyValueError::new_err(
                    "input applies to variant 'injected' only",
                ));
            }
            matrix_f64(u, "input")?
        }
        None => x.clone(),
    };
    let weights = optional_vector(weights, "weights")?;
    if let Some(w) = &weights {
        // The library would name the atoms, not the weights, for this mistake.
        if w.len() != x.nrows() {
            return Err(PyValueError::new_err(format!(
                "weights: expected {} entries (one per token of x), found {}",
                x.nrows(),
                w.len()
            )));
        }
    }
    let spec = FixedPointSpec {
        space,
        variant,
        beta,
        radius,
        input,
        weights,
    };
    let layer = layer.layer.clone();
    let (n, d) = (x.nrows(), x.ncols());
    let (v, xs) = interruptible(py, move || {
        let (scale, problem) = match contract {
            Some(c) => contract_scale(&spec, &layer, &x, c)?,
            None => (1.0, build(&spec, (*layer).clone(), &x)?),
        };
        let (xs, sol) = match &problem {
            Problem::Tokens(p) => p.solve(x.as_ref(), &s, &opts)?,
            Problem::Measure(p) => {
                let (mu, sol) = p.solve(x.as_ref(), &s, &opts)?;
                (mu.points().to_owned(), sol)
            }
        };
        let (space, metric, certificate, notes) = match &problem {
            Problem::Tokens(p) => (
                "tokens",
                "frobenius",
                to_value(&p.layer_certificate)?,
                p.notes.clone(),
            ),
            Problem::Measure(p) => ("measure", "w1", to_value(&p.certificate)?, p.notes.clone()),
        };
        let mut v = to_value(&sol)?;
        v["status"] = json!("converged");
        v["steps"] = json!(sol.step);
        for (k, x) in [
            ("space", json!(space)),
            ("variant", json!(spec.variant)),
            ("metric", json!(metric)),
            ("dtype", json!("f64")),
            ("n", json!(n)),
            ("d", json!(d)),
            ("scale", json!(scale)),
            ("certified_contraction", json!(problem.contraction())),
            ("layer_certificate", certificate),
            ("notes", json!(notes)),
        ] {
            v[k] = x;
        }
        Ok((v, xs))
    })?;
    let out = dict(py, &v)?;
    out.set_item("x", to_numpy(py, xs.as_ref()))?;
    Ok(out)
}

struct FlowSpec {
    opts: FlowOptions,
    weights: Option<Vec<f64>>,
}

#[allow(clippy::too_many_arguments)]
fn flow_spec(
    t: f64,
    projection: &str,
    integrator: &str,
    dt: f64,
    rtol: f64,
    atol: f64,
    h0: Option<f64>,
    record: f64,
    max_steps: usize,
    layernorm_eps: f64,
) -> PyResult<FlowOptions> {
    let projection = match projection {
        "none" => Projection::None,
        "sphere" => Projection::Sphere,
        "layernorm" => Projection::LayerNorm { eps: layernorm_eps },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown projection '{other}' (expected 'none', 'sphere' or 'layernorm')"
            )))
        }
    };
    let integrator = match integrator {
        "rk4" => Integrator::Rk4 { dt },
        "dopri-fixed" | "dopri_fixed" => Integrator::DoPri5Fixed { dt },
        "dopri" => Integrator::DoPri5 {
            rtol,
            atol,
            h0: h0.unwrap_or(dt),
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown integrator '{other}' (expected 'rk4', 'dopri' or 'dopri-fixed')"
            )))
        }
    };
    Ok(FlowOptions {
        projection,
        integrator,
        t_end: t,
        record_every: record,
        max_steps,
    })
}

/// Continuous-depth attention (``lipattn flow``): dx_i/dt = Gamma_{mu_t}(x_i) from the tokens
/// ``x`` (weighted by ``weights``, default uniform), with ``projection`` 'sphere' (tangential
/// velocity, renormalised tokens), 'layernorm' or 'none', and ``integrator`` 'rk4',
/// 'dopri-fixed' (fixed step ``dt``) or 'dopri' (adaptive, ``rtol``/``atol``, first step ``h0``,
/// default dt). States are recorded every ``record`` and at ``t``.
///
/// Returns the keys of ``lipattn flow --json``: n, d, dtype, options, steps (accepted,
/// rejected, evaluations), times, clustering (per recorded time; measured), gronwall, plus
/// ``states``: float64 (len(times), n, d). ``gronwall``: a perturbation size eps (the CLI's
/// seeded Gaussian noise of ``seed``) or the second initial tokens; the certified Gronwall rate
/// and bound are then compared with exact W1 distances between the two flows.
#[pyfunction]
#[pyo3(signature = (layer, x, *, t=15.0, projection="sphere", integrator="rk4", dt=0.1, rtol=1e-6, atol=1e-9, h0=None, record=0.5, max_steps=10_000_000, weights=None, layernorm_eps=1e-5, cluster_threshold=1e-2, gronwall=None, seed=0))]
#[allow(clippy::too_many_arguments)]
fn flow<'py>(
    py: Python<'py>,
    layer: PyRef<'py, PyAttentionLayer>,
    x: &Bound<'py, PyAny>,
    t: f64,
    projection: &str,
    integrator: &str,
    dt: f64,
    rtol: f64,
    atol: f64,
    h0: Option<f64>,
    record: f64,
    max_steps: usize,
    weights: Option<&Bound<'py, PyAny>>,
    layernorm_eps: f64,
    cluster_threshold: f64,
    gronwall: Option<&Bound<'py, PyAny>>,
    seed: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = flow_spec(
        t,
        projection,
        integrator,
        dt,
        rtol,
        atol,
        h0,
        record,
        max_steps,
        layernorm_eps,
    )?;
    if !(cluster_threshold.is_finite() && cluster_threshold >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "cluster_threshold must be finite and nonnegative, got {cluster_threshold}"
        )));
    }
    let spec = FlowSpec {
        opts,
        weights: optional_vector(weights, "weights")?,
    };
    let x0 = matrix_f64(x, "x")?;
    enum Other {
        Eps(f64),
        Tokens(Mat<f64>),
    }
    let other = match gronwall.filter(|o| !o.is_none()) {
        None => None,
        Some(g) => match g.extract::<f64>() {
            Ok(eps) => {
                check_positive("gronwall perturbation size", eps)?;
                Some(Other::Eps(eps))
            }
            Err(_) => Some(Other::Tokens(matrix_f64(g, "gronwall")?)),
        },
    };
    let layer = layer.layer.clone();
    let (v, states) = interruptible(py, move || {
        let w = spec.weights.as_deref();
        let traj = integrate(&layer, x0.as_ref(), w, &spec.opts)?;
        let stats: Vec<_> = traj
            .states
            .iter()
            .map(|s| clustering_of(s.as_ref(), cluster_threshold))
            .collect();
        let measure = |p: Mat<f64>| match &spec.weights {
            Some(w) => Measure::new(p, w.clone()),
            None => Measure::uniform(p),
        };
        let gron = match other {
            None => None,
            Some(o) => {
                let nu_pts = match o {
                    Other::Eps(eps) => {
                        let mut rng = SplitMix::new(seed.wrapping_add(7));
                        Mat::from_fn(x0.nrows(), x0.ncols(), |i, k| {
                            x0[(i, k)] + eps * rng.gauss()
                        })
                    }
                    Other::Tokens(m) => m,
                };
                let mu = measure(x0.clone())?;
                let nu = measure(nu_pts)?;
                Some(gronwall_check(&layer, &mu, &nu, &spec.opts)?)
            }
        };
        let v = json!({
            "n": x0.nrows(),
            "d": x0.ncols(),
            "dtype": "f64",
            "options": to_value(&spec.opts)?,
            "steps": {"accepted": traj.accepted, "rejected": traj.rejected, "evaluations": traj.evaluations},
            "times": traj.times,
            "clustering": to_value(&stats)?,
            "clustering_is": "measured",
            "gronwall": to_value(&gron)?,
        });
        Ok((v, traj.states))
    })?;
    let out = dict(py, &v)?;
    let (k, n, d) = (states.len(), states[0].nrows(), states[0].ncols());
    let arr = Array3::from_shape_fn((k, n, d), |(s, i, j)| states[s][(i, j)]);
    out.set_item("states", arr.into_pyarray(py))?;
    Ok(out)
}

/// Mean-field consistency (``lipattn flow --mean-field``): ``replicates`` samples of n points
/// uniform on the sphere for each n in ``ns``, flowed to ``t`` and compared in exact W1 with a
/// reference flow of ``reference`` points (seeded by ``seed``; the CLI uses its --seed + 11).
/// Keys: ns, reference_n, replicates, w1_final, w1_initial, rate_final, rate_initial (all
/// measured).
#[pyfunction]
#[pyo3(signature = (layer, ns, *, reference=1024, replicates=4, seed=0, t=15.0, projection="sphere", integrator="rk4", dt=0.1, rtol=1e-6, atol=1e-9, h0=None, record=0.5, max_steps=10_000_000, layernorm_eps=1e-5))]
#[allow(clippy::too_many_arguments)]
fn mean_field<'py>(
    py: Python<'py>,
    layer: PyRef<'py, PyAttentionLayer>,
    ns: Vec<usize>,
    reference: usize,
    replicates: usize,
    seed: u64,
    t: f64,
    projection: &str,
    integrator: &str,
    dt: f64,
    rtol: f64,
    atol: f64,
    h0: Option<f64>,
    record: f64,
    max_steps: usize,
    layernorm_eps: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = flow_spec(
        t,
        projection,
        integrator,
        dt,
        rtol,
        atol,
        h0,
        record,
        max_steps,
        layernorm_eps,
    )?;
    let layer = layer.layer.clone();
    let v = interruptible(py, move || {
        to_value(&mean_field_of(
            &layer, &ns, reference, replicates, &opts, seed,
        )?)
    })?;
    dict(py, &v)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyInvertibleBlock>()?;
    m.add_function(wrap_pyfunction!(random_layer, m)?)?;
    m.add_function(wrap_pyfunction!(random_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(identity_layer, m)?)?;
    m.add_function(wrap_pyfunction!(sphere_sample, m)?)?;
    m.add_function(wrap_pyfunction!(clustering, m)?)?;
    m.add_function(wrap_pyfunction!(fixed_point, m)?)?;
    m.add_function(wrap_pyfunction!(flow, m)?)?;
    m.add_function(wrap_pyfunction!(mean_field, m)?)?;
    Ok(())
}
