//! `lipattn.AttentionLayer` and `lipattn.Linearization`: forward, JVP, VJP and the local constant.

use crate::bounds as analysis;
use crate::convert::{
    cast, matrix, matrix_f64, matrix_in_place, matrix_shared, optional_vector, to_numpy,
    vector_f64, Floats, MatrixView, SharedMatrix,
};
use crate::errors::{detached, interruptible, IntoPyResult};
use crate::ints::PyInt;
use crate::local::{local_constant_result, PyLocalConstant};
use crate::measure::PyMeasure;
use faer::Mat;
use lipattn::analysis::lipschitz::LipschitzOptions;
use lipattn::estimation::lanczos;
use lipattn::estimation::power_iteration;
use lipattn::estimation::Method;
use lipattn::estimation::{AscentOptions, LanczosOptions};
use lipattn::ops::local::{self, LocalInputs, LocalRequest};
use lipattn::{AttentionLayer, Kernel, LayerSource, Linearization, Operator, Scalar};
use numpy::PyArray2;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The local-constant request of these keyword arguments.
pub(crate) fn local_request(
    method: &str,
    tol: f64,
    max_iter: Option<usize>,
    seed: u64,
) -> PyResult<LocalRequest> {
    Ok(LocalRequest {
        method: method.parse().py_err()?,
        tol,
        max_iter,
        seed,
        head: None,
        dtype: lipattn::ops::local::LocalDtype::F64,
        attention: lipattn::ops::local::AttentionMemory::Auto,
        ..LocalRequest::default()
    })
}

pub fn kernel_of(name: &str) -> PyResult<Kernel> {
    name.parse::<Kernel>().py_err()
}

pub fn kernel_name(k: Kernel) -> &'static str {
    match k {
        Kernel::Dot => "dot",
        Kernel::L2 => "l2",
    }
}

/// One multi-head attention sublayer: ``y = concat_h softmax(s_h(x, X) + log w) V_h W_O^T + b_O``.
///
/// Build it from a Hugging Face checkpoint with ``AttentionLayer.from_model(path, layer)`` or
/// from weight arrays in PyTorch's ``Linear`` convention (``y = x W^T + b``):
/// ``AttentionLayer(wq, bq, wk, bk, wv, bv, wo, bo, heads=H, kernel="dot")``. Weights are held in
/// float64; float32 inputs run in float32 on a float32 copy made once.
#[pyclass(module = "lipattn", name = "AttentionLayer", frozen)]
pub struct PyAttentionLayer {
    pub layer: Arc<AttentionLayer<f64>>,
    f32: OnceLock<Arc<AttentionLayer<f32>>>,
    /// Where the weights came from and the mask and kernel the model computes them with: the
    /// default of every `causal=None`, and what the reports name an override against.
    pub origin: LayerSource,
}

impl PyAttentionLayer {
    /// Weights whose own mask is `causal` and own kernel the layer's.
    pub fn wrap(layer: AttentionLayer<f64>, causal: bool, source: String) -> Self {
        let origin = LayerSource::new(source, causal, layer.kernel);
        Self::wrap_source(layer, origin)
    }

    pub fn wrap_source(layer: AttentionLayer<f64>, origin: LayerSource) -> Self {
        Self {
            layer: Arc::new(layer),
            f32: OnceLock::new(),
            origin,
        }
    }

    fn layer_f32(&self) -> Arc<AttentionLayer<f32>> {
        self.f32
            .get_or_init(|| Arc::new(self.layer.cast::<f32>()))
            .clone()
    }

    fn causal_or_default(&self, causal: Option<bool>) -> bool {
        self.origin.mask(causal)
    }

    /// A checkpoint layer, or head `head`'s contribution alone.
    pub fn of_model(
        full: AttentionLayer<f64>,
        origin: LayerSource,
        head: Option<usize>,
    ) -> PyResult<Self> {
        Ok(match head {
            Some(h) => Self::wrap_source(full.head(h, false).py_err()?, origin.head(h)),
            None => Self::wrap_source(full, origin),
        })
    }
}

/// Runs `$body` on the linearisation point of either precision, bound to `$at` (an
/// `&Arc<LinAt<T>>`); the code is the same for both, only the scalar type differs and is
/// inferred in each arm.
macro_rules! with_lin {
    ($inner:expr, $at:ident => $body:expr) => {
        match $inner {
            AnyLin::F64($at) => $body,
            AnyLin::F32($at) => $body,
        }
    };
}

/// A linearisation point in either precision; the layer is shared, never copied.
pub enum AnyLin {
    F64(Arc<LinAt<f64>>),
    F32(Arc<LinAt<f32>>),
}

/// A `Linearization` that owns (a share of) its layer.
pub struct LinAt<T: Scalar> {
    // Declared before `_layer` so that it is dropped first: it borrows from it.
    lin: Linearization<'static, T>,
    /// The linearisation point, for the radius reported with a local constant.
    x: Mat<T>,
    _layer: Arc<AttentionLayer<T>>,
}

impl<T: Scalar> LinAt<T> {
    pub fn new(
        layer: Arc<AttentionLayer<T>>,
        x: &Mat<T>,
        weights: Option<&[f64]>,
        causal: bool,
    ) -> lipattn::Result<Self> {
        // SAFETY: the layer lives on the heap behind an Arc that `self` keeps alive and never
        // mutates; `lin` is dropped before that Arc (field order), and the 'static borrow never
        // leaves this struct (every accessor reborrows it for the lifetime of `&self`).
        let layer_ref: &'static AttentionLayer<T> = unsafe { &*Arc::as_ptr(&layer) };
        let lin = Linearization::new(layer_ref, x.as_ref(), weights, causal)?;
        Ok(Self {
            lin,
            x: x.clone(),
            _layer: layer,
        })
    }

    pub fn lin(&self) -> &Linearization<'_, T> {
        &self.lin
    }
}

#[pymethods]
impl PyAttentionLayer {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (wq, bq, wk, bk, wv, bv, wo, bo, *, heads, kernel="dot", causal=false, score_divisor_sq=None))]
    fn new(
        wq: &Bound<'_, PyAny>,
        bq: &Bound<'_, PyAny>,
        wk: &Bound<'_, PyAny>,
        bk: &Bound<'_, PyAny>,
        wv: &Bound<'_, PyAny>,
        bv: &Bound<'_, PyAny>,
        wo: &Bound<'_, PyAny>,
        bo: &Bound<'_, PyAny>,
        heads: PyInt,
        kernel: &str,
        causal: bool,
        score_divisor_sq: Option<PyInt>,
    ) -> PyResult<Self> {
        crate::ints::unsigned!(heads, score_divisor_sq);
        let kernel = kernel_of(kernel)?;
        let layer = AttentionLayer::new(
            heads,
            kernel,
            matrix_f64(wq, "W_Q")?,
            vector_f64(bq, "b_Q")?,
            matrix_f64(wk, "W_K")?,
            vector_f64(bk, "b_K")?,
            matrix_f64(wv, "W_V")?,
            vector_f64(bv, "b_V")?,
            matrix_f64(wo, "W_O")?,
            vector_f64(bo, "b_O")?,
        )
        .py_err()?;
        // A checkpoint's layer may carry another score scale (GPT-2's config keys); rebuilding
        // it from `weights()` must be able to keep it.
        let layer = match score_divisor_sq {
            Some::<usize>(t) => layer.with_score_divisor_sq(t).py_err()?,
            None => layer,
        };
        Ok(Self::wrap(layer, causal, "weights from arrays".into()))
    }

    /// The attention sublayer of layer ``layer`` of a Hugging Face checkpoint directory (BERT or
    /// GPT-2 family; GPT-2 layers are causal), or head ``head``'s contribution alone. The rotary
    /// families (Llama, ...) raise ModelError: their attention is another operator.
    #[staticmethod]
    #[pyo3(signature = (path, layer, *, head=None, kernel="dot"))]
    fn from_model(
        py: Python<'_>,
        path: PathBuf,
        layer: PyInt,
        head: Option<PyInt>,
        kernel: &str,
    ) -> PyResult<Self> {
        crate::ints::unsigned!(layer, head);
        let kernel = kernel_of(kernel)?;
        let (full, origin) = interruptible(py, move || {
            lipattn::models::load_attention_layer_source(&path, layer)
        })?;
        Self::of_model(full.with_kernel(kernel), origin, head)
    }

    #[getter]
    fn heads(&self) -> usize {
        self.layer.heads
    }
    #[getter]
    fn dk(&self) -> usize {
        self.layer.dk
    }
    #[getter]
    fn dv(&self) -> usize {
        self.layer.dv
    }
    #[getter]
    fn d_in(&self) -> usize {
        self.layer.d_in()
    }
    #[getter]
    fn d_out(&self) -> usize {
        self.layer.d_out()
    }
    /// Scores are divided by sqrt(score_divisor_sq): dk unless the checkpoint's config sets
    /// another scale (docs/models.md#config-keys).
    #[getter]
    fn score_divisor_sq(&self) -> usize {
        self.layer.score_divisor_sq
    }
    #[getter]
    fn kernel(&self) -> &'static str {
        kernel_name(self.layer.kernel)
    }
    /// Whether the model applies a causal mask to this layer (the default of ``causal=None``).
    #[getter]
    fn causal(&self) -> bool {
        self.origin.causal
    }

    /// The weights as float64 arrays: wq, bq, wk, bk, wv, bv, wo, bo.
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = &self.layer;
        let d = PyDict::new(py);
        for (k, m) in [("wq", &l.wq), ("wk", &l.wk), ("wv", &l.wv), ("wo", &l.wo)] {
            d.set_item(k, to_numpy(py, m.as_ref()))?;
        }
        for (k, v) in [("bq", &l.bq), ("bk", &l.bk), ("bv", &l.bv), ("bo", &l.bo)] {
            d.set_item(k, crate::convert::vec_to_numpy(py, v))?;
        }
        Ok(d)
    }

    /// Head ``h``'s contribution ``W_O^h Gamma^h`` as a one-head layer (no output bias unless
    /// ``keep_output_bias``).
    #[pyo3(signature = (h, keep_output_bias=false))]
    fn head(&self, h: PyInt, keep_output_bias: bool) -> PyResult<Self> {
        crate::ints::unsigned!(h);
        let l = self.layer.head(h, keep_output_bias).py_err()?;
        let origin = if keep_output_bias {
            LayerSource::new(
                format!("{}, head {h} with the output bias", self.origin.name),
                self.origin.causal,
                self.origin.kernel,
            )
        } else {
            self.origin.head(h)
        };
        Ok(Self::wrap_source(l, origin))
    }

    /// The same weights with another score kernel ('dot' or 'l2').
    fn with_kernel(&self, kernel: &str) -> PyResult<Self> {
        let k = kernel_of(kernel)?;
        Ok(Self::wrap_source(
            (*self.layer).clone().with_kernel(k),
            self.origin.clone(),
        ))
    }

    /// The sublayer on a token sequence ``x`` (n, d): row i is ``Gamma_mu(x_i)`` with ``mu`` the
    /// measure of the rows with masses ``weights`` (uniform when None). Output (n, d_out) in the
    /// dtype of ``x``; no residual and no LayerNorm. A Fortran-ordered ``x`` is read in place
    /// (not to be written by another thread during the call).
    #[pyo3(signature = (x, weights=None, causal=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let w = optional_vector(weights, "weights")?;
        let causal = self.causal_or_default(causal);
        let input = matrix_in_place(x, "tokens")?;
        Ok(match input.view()? {
            MatrixView::F64(x) => {
                let l = &self.layer;
                let y = detached(py, || l.forward(x, w.as_deref(), causal))?;
                to_numpy(py, y.as_ref()).into_any()
            }
            MatrixView::F32(x) => {
                let l = self.layer_f32();
                let y = detached(py, || l.forward(x, w.as_deref(), causal))?;
                to_numpy(py, y.as_ref()).into_any()
            }
        })
    }

    /// ``Gamma_mu`` at each row of ``queries`` for the context measure with atoms ``context`` and
    /// masses ``weights``: (nq, d_out), float64.
    #[pyo3(signature = (queries, context, weights=None, causal=false))]
    fn gamma<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        context: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
        causal: bool,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let q = matrix_f64(queries, "queries")?;
        let c = matrix_f64(context, "context")?;
        let w = optional_vector(weights, "weights")?;
        let l = &self.layer;
        let y = detached(py, || l.gamma(q.as_ref(), c.as_ref(), w.as_deref(), causal))?;
        Ok(to_numpy(py, y.as_ref()))
    }

    /// Self-attention on measures: ``F(mu) = (Gamma_mu)_# mu``.
    fn self_attention(&self, py: Python<'_>, mu: &PyMeasure) -> PyResult<PyMeasure> {
        let l = &self.layer;
        let m = &mu.inner;
        let inner = detached(py, || l.self_attention(m))?;
        Ok(PyMeasure { inner })
    }

    /// Cross-attention: ``C(mu, nu) = (Gamma_nu)_# mu``.
    fn cross_attention(
        &self,
        py: Python<'_>,
        mu: &PyMeasure,
        nu: &PyMeasure,
    ) -> PyResult<PyMeasure> {
        let l = &self.layer;
        let (a, b) = (&mu.inner, &nu.inner);
        let inner = detached(py, || l.cross_attention(a, b))?;
        Ok(PyMeasure { inner })
    }

    /// Head ``h``'s attention kernel as a row-stochastic (nq, nc) matrix.
    #[pyo3(signature = (h, queries, context=None, weights=None, causal=false))]
    fn probabilities<'py>(
        &self,
        py: Python<'py>,
        h: PyInt,
        queries: &Bound<'py, PyAny>,
        context: Option<&Bound<'py, PyAny>>,
        weights: Option<&Bound<'py, PyAny>>,
        causal: bool,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        crate::ints::unsigned!(h);
        let q = matrix_f64(queries, "queries")?;
        let c = match context {
            Some(c) if !c.is_none() => matrix_f64(c, "context")?,
            _ => q.clone(),
        };
        let w = optional_vector(weights, "weights")?;
        let l = &self.layer;
        let p = detached(py, || {
            l.probabilities(h, q.as_ref(), c.as_ref(), w.as_deref(), causal)
        })?;
        Ok(to_numpy(py, p.as_ref()))
    }

    /// Head ``h``'s scores ``s(x_i, y_j)`` (before log-weights and softmax), (nq, nc).
    #[pyo3(signature = (h, queries, context=None))]
    fn scores<'py>(
        &self,
        py: Python<'py>,
        h: PyInt,
        queries: &Bound<'py, PyAny>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        crate::ints::unsigned!(h);
        let q = matrix_f64(queries, "queries")?;
        let c = match context {
            Some(c) if !c.is_none() => matrix_f64(c, "context")?,
            _ => q.clone(),
        };
        let l = &self.layer;
        let s = detached(py, || l.scores(h, q.as_ref(), c.as_ref()))?;
        Ok(to_numpy(py, s.as_ref()))
    }

    /// ``D Gamma_mu(x)``, the (d_out, d) Jacobian in the query point ``x`` (d,) alone.
    fn query_jacobian<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        mu: &PyMeasure,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let x = vector_f64(x, "query point")?;
        let l = &self.layer;
        let m = &mu.inner;
        let j = detached(py, || lipattn::query_jacobian(l, &x, m))?;
        Ok(to_numpy(py, j.as_ref()))
    }

    /// Linearises ``X -> f(X)`` at ``x`` (context weights fixed); reuse the returned object for
    /// many JVPs and VJPs (everything that depends on ``x`` alone is computed once).
    #[pyo3(signature = (x, weights=None, causal=None))]
    fn linearize(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        causal: Option<bool>,
    ) -> PyResult<PyLinearization> {
        let w = optional_vector(weights, "weights")?;
        let causal = self.causal_or_default(causal);
        let inner = match matrix(x, "tokens")? {
            Floats::F64(x) => {
                let l = self.layer.clone();
                AnyLin::F64(Arc::new(detached(py, || {
                    LinAt::new(l, &x, w.as_deref(), causal)
                })?))
            }
            Floats::F32(x) => {
                let l = self.layer_f32();
                AnyLin::F32(Arc::new(detached(py, || {
                    LinAt::new(l, &x, w.as_deref(), causal)
                })?))
            }
        };
        Ok(PyLinearization {
            inner,
            weights: w.is_some(),
            origin: self.origin.clone(),
            kernel: self.layer.kernel,
        })
    }

    /// ``J(X) G`` at ``x`` for one tangent ``g`` (n, d); see ``linearize`` to reuse ``x``.
    #[pyo3(signature = (x, g, weights=None, causal=None))]
    fn jvp<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        g: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.linearize(py, x, weights, causal)?.jvp(py, g)
    }

    /// ``J(X)^T Ybar`` at ``x`` for one cotangent ``ybar`` (n, d_out).
    #[pyo3(signature = (x, ybar, weights=None, causal=None))]
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        ybar: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.linearize(py, x, weights, causal)?.vjp(py, ybar)
    }

    /// The local constant ``||J(X)||_2`` (Frobenius to Frobenius) at ``x``: an attained value,
    /// hence a lower bound on the Lipschitz constant over any domain containing ``x``.
    /// ``method`` 'lanczos' (``tol`` = requested relative accuracy, an estimate) or 'power'
    /// (the anchor's rule: Rayleigh quotient change below 1e-4). Runs in the dtype of ``x``.
    /// Ctrl-C raises KeyboardInterrupt at once and stops the computation at its next iteration.
    #[pyo3(signature = (x, *, method=LocalRequest::default().method.name(), tol=LocalRequest::default().tol, max_iter=None, seed=crate::ints::PyInt::Fits(LocalRequest::default().seed as i128), weights=None, causal=None, attention=LocalRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn local_constant(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        method: &str,
        tol: f64,
        max_iter: Option<PyInt>,
        seed: PyInt,
        weights: Option<&Bound<'_, PyAny>>,
        causal: Option<bool>,
        attention: &str,
    ) -> PyResult<PyLocalConstant> {
        crate::ints::unsigned!(max_iter, seed);
        let req = LocalRequest {
            attention: attention.parse().py_err()?,
            ..local_request(method, tol, max_iter, seed)?
        };
        let w = optional_vector(weights, "weights")?;
        macro_rules! run {
            ($layer:expr, $x:expr) => {{
                let (l, x, origin) = ($layer, $x, self.origin.clone());
                let r = interruptible(py, move || {
                    let inputs = LocalInputs {
                        layer: &l,
                        x: x.view(),
                        weights: w.as_deref(),
                        causal,
                        source: &origin,
                    };
                    local::run(&req, inputs, &mut lipattn::ops::silent)
                })?;
                local_constant_result(py, r)
            }};
        }
        // A contiguous float32/float64 array is read where it lies (`SharedMatrix`).
        match matrix_shared(x, "tokens")? {
            SharedMatrix::F64(x) => run!(self.layer.clone(), x),
            SharedMatrix::F32(x) => run!(self.layer_f32(), x),
            SharedMatrix::Copied(Floats::F64(x)) => run!(self.layer.clone(), Owned(x)),
            SharedMatrix::Copied(Floats::F32(x)) => run!(self.layer_f32(), Owned(x)),
        }
    }

    /// Certified upper bounds on the domain: tokens in the ball ``B_R`` (``radius``), sequences
    /// of ``n`` tokens, masked as the model masks this layer unless ``causal`` says otherwise. A
    /// dict: ``operator`` (what is certified, and any departure from the model's own operator),
    /// ``domain``, ``certified`` (frobenius, w1, w2, anchor, anchor_code; None where nothing is
    /// proven), every individual ``bounds`` entry with its proof reference, and ``notes``.
    #[pyo3(signature = (radius, n, *, causal=None))]
    fn certified_bounds<'py>(
        &self,
        py: Python<'py>,
        radius: f64,
        n: PyInt,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(n);
        analysis::certified_bounds(py, &self.layer, &self.origin, radius, n, causal)
    }

    /// Certified upper bounds beside attained lower bounds, as ``lipattn lipschitz --json``
    /// computes them (same keys, same searches, same seeds), plus ``inputs``: the arrays
    /// attaining the lower bounds (``frobenius_x``, ``frobenius_vector``, and the measure pair
    /// ``w1_mu``, ``w1_nu``; no pair under a causal mask). Masked as the model masks this
    /// layer unless ``causal`` says otherwise.
    #[pyo3(signature = (radius, n, *, starts=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_STARTS as i128), steps=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_STEPS as i128), atoms=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_ATOMS as i128), seed=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_SEED as i128), causal=None))]
    #[allow(clippy::too_many_arguments)]
    fn lipschitz<'py>(
        &self,
        py: Python<'py>,
        radius: f64,
        n: PyInt,
        starts: PyInt,
        steps: PyInt,
        atoms: PyInt,
        seed: PyInt,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(n, starts, steps, atoms, seed);
        let opts = LipschitzOptions {
            radius,
            n,
            starts,
            steps,
            atoms,
            seed,
            causal,
        };
        analysis::lipschitz(py, self.layer.clone(), self.origin.clone(), opts)
    }

    /// Projected multi-start gradient ascent on ``||J(X)||_2`` over ``(B_R)^n`` (uniform weights,
    /// masked as the model masks this layer unless ``causal`` says otherwise). Returns a dict with ``sigma`` and the input ``x`` attaining it, its singular
    /// ``vector``, the adversarial construction's value and input, ``best_start`` and
    /// ``evaluations``. Every value is attained: a lower bound, never a certificate.
    #[pyo3(signature = (n, radius, *, random_starts=crate::ints::PyInt::Fits(4), steps=crate::ints::PyInt::Fits(20), seed=crate::ints::PyInt::Fits(0), start=None, tol=1e-8, causal=None))]
    #[allow(clippy::too_many_arguments)]
    fn ascent<'py>(
        &self,
        py: Python<'py>,
        n: PyInt,
        radius: f64,
        random_starts: PyInt,
        steps: PyInt,
        seed: PyInt,
        start: Option<&Bound<'py, PyAny>>,
        tol: f64,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::ints::unsigned!(n, random_starts, steps, seed);
        let start = match start {
            Some(s) if !s.is_none() => Some(matrix_f64(s, "ascent start")?),
            _ => None,
        };
        let opts = AscentOptions {
            radius,
            random_starts,
            steps,
            lanczos: LanczosOptions {
                tol,
                ..AscentOptions::default().lanczos
            },
            seed,
            causal: self.causal_or_default(causal),
            ..AscentOptions::default()
        };
        analysis::ascent(py, self.layer.clone(), &self.origin, n, start, opts)
    }

    /// The adversarial construction of Castin et al. for head ``head``: (n, d) tokens on ``B_R``.
    fn adversarial_input<'py>(
        &self,
        py: Python<'py>,
        head: PyInt,
        n: PyInt,
        radius: f64,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        crate::ints::unsigned!(head, n);
        let l = &self.layer;
        let x = detached(py, || {
            lipattn::estimation::adversarial_input(l, head, n, radius)
        })?;
        Ok(to_numpy(py, x.as_ref()))
    }

    /// Search for measure pairs on ``B_R`` with a large attained ratio
    /// ``W1(F mu, F nu) / W1(mu, nu)`` (W1 exact). A dict with ``mu``, ``nu`` (Measures),
    /// ``w1_in``, ``w1_out``, ``ratio``, ``phase``, ``evaluations``, ``phase_best``.
    #[pyo3(signature = (radius, *, atoms=crate::ints::PyInt::Fits(8), random_pairs=crate::ints::PyInt::Fits(20), perturbed_pairs=crate::ints::PyInt::Fits(20), perturbation=1e-2, local_steps=crate::ints::PyInt::Fits(100), seed=crate::ints::PyInt::Fits(0)))]
    #[allow(clippy::too_many_arguments)]
    fn search_pairs<'py>(
        &self,
        py: Python<'py>,
        radius: f64,
        atoms: PyInt,
        random_pairs: PyInt,
        perturbed_pairs: PyInt,
        perturbation: f64,
        local_steps: PyInt,
        seed: PyInt,
    ) -> PyResult<Bound<'py, PyDict>> {
        crate::ints::unsigned!(atoms, random_pairs, perturbed_pairs, local_steps, seed);
        let opts = lipattn::estimation::PairSearchOptions {
            radius,
            atoms,
            random_pairs,
            perturbed_pairs,
            perturbation,
            local_steps,
            seed,
            ..Default::default()
        };
        analysis::search_pairs(py, self.layer.clone(), opts)
    }

    /// Per-head constants (``a = ||W_Q^T W_K||_2 / sqrt(dk)``, ``c``, ``m``, ``v``, ``o``,
    /// ``ma``, ``va``) entering the certified bounds, one dict per head.
    fn head_constants<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = &self.layer;
        let hc = detached(py, || lipattn::bounds::head_constants(l))?;
        crate::convert::json_to_py(py, &serde_json::to_value(hc).expect("plain numbers"))
    }

    fn __repr__(&self) -> String {
        format!(
            "AttentionLayer(heads={}, d_in={}, d_out={}, dk={}, dv={}, kernel='{}', causal={}, source='{}')",
            self.layer.heads,
            self.layer.d_in(),
            self.layer.d_out(),
            self.layer.dk,
            self.layer.dv,
            kernel_name(self.layer.kernel),
            if self.origin.causal { "True" } else { "False" },
            self.origin.name
        )
    }
}

/// The token map linearised at one input: ``jvp`` and ``vjp`` share everything that depends on
/// the input alone. Tangents are cast to the linearisation's dtype.
#[pyclass(module = "lipattn", name = "Linearization", frozen)]
pub struct PyLinearization {
    inner: AnyLin,
    weights: bool,
    /// The layer's source, for the operator its local constants name.
    origin: LayerSource,
    kernel: Kernel,
}

fn tangent<T: Scalar>(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Mat<T>> {
    Ok(match matrix(obj, what)? {
        Floats::F64(m) => cast(m.as_ref()),
        Floats::F32(m) => cast(m.as_ref()),
    })
}

#[pymethods]
impl PyLinearization {
    /// ``J(X) G`` for a tangent ``g`` (n, d): (n, d_out).
    fn jvp<'py>(&self, py: Python<'py>, g: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        Ok(with_lin!(&self.inner, l => {
            let g = tangent(g, "JVP tangent")?;
            let y = detached(py, || l.lin().jvp(g.as_ref()))?;
            to_numpy(py, y.as_ref()).into_any()
        }))
    }

    /// ``J(X)^T Ybar`` for a cotangent ``ybar`` (n, d_out): (n, d).
    fn vjp<'py>(&self, py: Python<'py>, ybar: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        Ok(with_lin!(&self.inner, l => {
            let g = tangent(ybar, "VJP cotangent")?;
            let y = detached(py, || l.lin().vjp(g.as_ref()))?;
            to_numpy(py, y.as_ref()).into_any()
        }))
    }

    /// ``f(X)``, the layer's output at the linearisation point.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        with_lin!(&self.inner, l => to_numpy(py, l.lin().output()).into_any())
    }

    #[getter]
    fn n(&self) -> usize {
        with_lin!(&self.inner, l => l.lin().n())
    }

    #[getter]
    fn d_in(&self) -> usize {
        with_lin!(&self.inner, l => l.lin().d_in())
    }

    #[getter]
    fn d_out(&self) -> usize {
        with_lin!(&self.inner, l => l.lin().d_out())
    }

    #[getter]
    fn causal(&self) -> bool {
        with_lin!(&self.inner, l => l.lin().causal())
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        match &self.inner {
            AnyLin::F64(_) => "float64",
            AnyLin::F32(_) => "float32",
        }
    }

    /// ``||J(X)||_2`` at this point by Lanczos or power iteration, optionally from ``start``
    /// (an (n, d) tangent; random Gaussian with ``seed`` when None). Interruptible with Ctrl-C.
    #[pyo3(signature = (*, method=LocalRequest::default().method.name(), tol=LocalRequest::default().tol, max_iter=None, seed=crate::ints::PyInt::Fits(LocalRequest::default().seed as i128), start=None))]
    fn top_singular(
        &self,
        py: Python<'_>,
        method: &str,
        tol: f64,
        max_iter: Option<PyInt>,
        seed: PyInt,
        start: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLocalConstant> {
        crate::ints::unsigned!(max_iter, seed);
        let req = local_request(method, tol, max_iter, seed)?;
        let start = start.filter(|s| !s.is_none());
        with_lin!(&self.inner, l => {
            let s = start.map(|s| tangent(s, "start vector")).transpose()?;
            let r = run_top(py, l.clone(), req.estimator(), s)?;
            let (d_out, causal, n) = (l.lin().d_out(), l.lin().causal(), l.lin().n());
            let op = Operator::token_map_at(&self.origin, self.kernel, causal, n, self.weights);
            local_constant_result(py, local::report(&req, r, l.x.as_ref(), d_out, op))
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Linearization(n={}, d_in={}, d_out={}, causal={}, dtype={})",
            self.n(),
            self.d_in(),
            self.d_out(),
            if self.causal() { "True" } else { "False" },
            self.dtype()
        )
    }
}

/// Lanczos or power iteration at an existing linearisation, shaped like `local_norm`'s result.
fn run_top<T: Scalar>(
    py: Python<'_>,
    at: Arc<LinAt<T>>,
    method: Method,
    start: Option<Mat<T>>,
) -> PyResult<lipattn::estimation::LocalNorm<T>> {
    interruptible(py, move || {
        let t0 = std::time::Instant::now();
        let lin = at.lin();
        let s = start.as_ref().map(|s| s.as_ref());
        let top = match &method {
            Method::Lanczos(o) => lanczos(lin, o, s)?,
            Method::Power(o) => power_iteration(lin, o, s)?,
        };
        Ok(lipattn::estimation::LocalNorm {
            top,
            seconds: t0.elapsed().as_secs_f64(),
            method: method.name(),
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAttentionLayer>()?;
    m.add_class::<PyLinearization>()?;
    Ok(())
}

/// An owned matrix with the `view` of a `SharedArray`, for the copied inputs.
struct Owned<T: Scalar>(Mat<T>);

impl<T: Scalar> Owned<T> {
    fn view(&self) -> faer::MatRef<'_, T> {
        self.0.as_ref()
    }
}
