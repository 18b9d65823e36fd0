//! `lipattn.RotaryLayer`: the attention sublayer of a rotary checkpoint (Llama, Mistral, Qwen2,
//! Qwen3, Gemma, Gemma 2) on tokens at positions 0..n-1 with the model's own mask, as
//! ``Model.attention_layer`` returns it. A thin wrapper: the library's `RotaryBranch` does the work.

use crate::convert::{json_to_py, matrix_f64, to_numpy};
use crate::errors::{interruptible, IntoPyResult};
use crate::ints::PyInt;
use crate::layer::local_request;
use crate::local::{local_constant_result, PyLocalConstant};
use lipattn::analysis::lipschitz::LipschitzOptions;
use lipattn::derivatives::LinearizedMap;
use lipattn::dynamics::{Branch, RotaryBranch};
use lipattn::ops::local::{self, LocalRequest, RotaryInputs};
use lipattn::LayerSource;
use pyo3::prelude::*;
use std::sync::Arc;

/// The attention sublayer of a rotary checkpoint: X (n, d) -> f(X) (n, d), token i at position
/// i, the model's causal mask and sliding window, grouped-query heads, qk-norm and soft-capping
/// as the checkpoint has them (docs/rotary.md), in float64. Get one from
/// ``Model.attention_layer(layer)``. It is no map of measures (its output depends on the tokens'
/// positions), so it has no ``weights`` and no measure methods; ``lipattn.flow`` integrates its
/// token flow dX/dt = f(X) (docs/dynamics.md#d6).
#[pyclass(module = "lipattn", name = "RotaryLayer", frozen)]
pub struct PyRotaryLayer {
    pub branch: Arc<RotaryBranch>,
    /// Where the weights came from (the layer, or one head's contribution).
    pub origin: LayerSource,
    /// The query head this layer is the contribution of, if one.
    head: Option<usize>,
    /// The whole sublayer and its source, for the local constant of one head, which reports
    /// (as `Model.local_constant` does) the sublayer's rotary form and source.
    full: Arc<RotaryBranch>,
    full_origin: LayerSource,
}

impl PyRotaryLayer {
    /// The sublayer `full` from `origin`, or query head `head`'s contribution to it.
    pub fn new(full: RotaryBranch, origin: LayerSource, head: Option<usize>) -> PyResult<Self> {
        let (branch, own) = match head {
            Some(h) => (
                RotaryBranch::new(full.layer.head(h).py_err()?, full.family),
                origin.head(h),
            ),
            None => (full.clone(), origin.clone()),
        };
        Ok(Self {
            branch: Arc::new(branch),
            origin: own,
            head,
            full: Arc::new(full),
            full_origin: origin,
        })
    }
}

#[pymethods]
impl PyRotaryLayer {
    /// The checkpoint's model_type.
    #[getter]
    fn family(&self) -> &'static str {
        self.branch.family
    }
    /// Query heads.
    #[getter]
    fn heads(&self) -> usize {
        self.branch.layer.heads
    }
    #[getter]
    fn kv_heads(&self) -> usize {
        self.branch.layer.kv_heads
    }
    #[getter]
    fn head_dim(&self) -> usize {
        self.branch.layer.head_dim
    }
    /// The query head whose contribution alone this layer is (None: the whole sublayer).
    #[getter]
    fn head(&self) -> Option<usize> {
        self.head
    }
    #[getter]
    fn d_in(&self) -> usize {
        self.branch.layer.d_in()
    }
    #[getter]
    fn d_out(&self) -> usize {
        self.branch.layer.d_out()
    }
    /// Query i sees keys i - window < j <= i; None: every j <= i.
    #[getter]
    fn window(&self) -> Option<usize> {
        self.branch.layer.window
    }
    /// Always True: rotary decoders mask causally.
    #[getter]
    fn causal(&self) -> bool {
        true
    }
    /// The rotary settings every report states as ``operator.rotary``: family, positions, rope
    /// type and theta, rotated coordinates, query and kv heads, window, qk-norm, softcap.
    #[getter]
    fn rotary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let form = self.branch.rotary_form();
        json_to_py(py, &lipattn::ops::to_json(&form).py_err()?)
    }

    /// f(X) for tokens ``x`` (n, d_in): float64 (n, d_out), equal to transformers' attention
    /// module at positions 0..n-1.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
        let x = matrix_f64(x, "x")?;
        let b = self.branch.clone();
        let y = interruptible(py, move || b.forward(x.as_ref()))?;
        Ok(to_numpy(py, y.as_ref()))
    }

    /// The Jacobian-vector product J_f(X) g: float64 (n, d_out).
    fn jvp<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        g: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
        let (x, g) = (matrix_f64(x, "x")?, matrix_f64(g, "g")?);
        let b = self.branch.clone();
        let y = interruptible(py, move || b.linearize(x.as_ref())?.jvp(g.as_ref()))?;
        Ok(to_numpy(py, y.as_ref()))
    }

    /// The vector-Jacobian product J_f(X)^T ybar: float64 (n, d_in).
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        ybar: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
        let (x, ybar) = (matrix_f64(x, "x")?, matrix_f64(ybar, "ybar")?);
        let b = self.branch.clone();
        let y = interruptible(py, move || b.linearize(x.as_ref())?.vjp(ybar.as_ref()))?;
        Ok(to_numpy(py, y.as_ref()))
    }

    /// The local constant ``||J(X)||_2`` (Frobenius to Frobenius) at ``x``: what
    /// ``Model.local_constant`` and ``lipattn local --model`` compute. Attained, never a
    /// certificate. ``attention``: 'dense' (probabilities on the visible band), 'streaming'
    /// (per-row statistics, memory linear in n, docs/streaming.md) or 'auto' (dense when it fits
    /// the memory budget); ``to_dict()['attention']`` says which ran.
    #[pyo3(signature = (x, *, method=LocalRequest::default().method.name(), tol=LocalRequest::default().tol, max_iter=None, seed=PyInt::Fits(LocalRequest::default().seed as i128), dtype=LocalRequest::default().dtype.name(), attention=LocalRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn local_constant(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        method: &str,
        tol: f64,
        max_iter: Option<PyInt>,
        seed: PyInt,
        dtype: &str,
        attention: &str,
    ) -> PyResult<PyLocalConstant> {
        crate::ints::unsigned!(max_iter, seed);
        let req = LocalRequest {
            dtype: dtype.parse().py_err()?,
            attention: attention.parse().py_err()?,
            head: self.head,
            ..local_request(method, tol, max_iter, seed)?
        };
        let x = matrix_f64(x, "x")?;
        let (b, origin) = (self.full.clone(), self.full_origin.clone());
        let r = interruptible(py, move || {
            let inputs = RotaryInputs {
                layer: &b.layer,
                x: x.as_ref(),
                source: &origin,
                family: b.family,
            };
            local::run_rotary(&req, inputs, &mut lipattn::ops::silent)
        })?;
        local_constant_result(py, r)
    }

    /// The certified Frobenius Lipschitz constant of f on ``(B_R)^n`` (B7, docs/bounds.md#b7-rotary):
    /// a dict with ``constant``, ``metric``, ``domain``, ``n`` and ``source``; None when no
    /// finite bound is proven (qk-norm with eps = 0).
    fn certified_lipschitz<'py>(
        &self,
        py: Python<'py>,
        radius: f64,
        n: PyInt,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(n);
        let b = self.branch.clone();
        let c = interruptible(py, move || b.token_lipschitz(n, Some(radius)))?;
        json_to_py(py, &lipattn::ops::to_json(&c).py_err()?)
    }

    /// B7 beside the rotary ascent on ``(B_R)^n``: the report of ``Model.lipschitz`` and
    /// ``lipattn lipschitz --model`` for this layer.
    #[pyo3(signature = (radius, n, *, starts=PyInt::Fits(LipschitzOptions::DEFAULT_STARTS as i128), steps=PyInt::Fits(LipschitzOptions::DEFAULT_STEPS as i128), seed=PyInt::Fits(LipschitzOptions::DEFAULT_SEED as i128)))]
    fn lipschitz<'py>(
        &self,
        py: Python<'py>,
        radius: f64,
        n: PyInt,
        starts: PyInt,
        steps: PyInt,
        seed: PyInt,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(n, starts, steps, seed);
        let opts = LipschitzOptions {
            radius,
            n,
            starts,
            steps,
            atoms: LipschitzOptions::DEFAULT_ATOMS,
            seed,
            causal: None,
        };
        crate::bounds::rotary(
            py,
            self.branch.layer.clone(),
            self.branch.family,
            self.origin.clone(),
            opts,
        )
    }

    fn __repr__(&self) -> String {
        let l = &self.branch.layer;
        format!(
            "RotaryLayer({}, family='{}', heads={}, kv_heads={}, head_dim={}, d={}, window={}{})",
            self.origin.name,
            self.branch.family,
            l.heads,
            l.kv_heads,
            l.head_dim,
            l.d_in(),
            l.window.map_or("None".into(), |w| w.to_string()),
            self.head.map_or(String::new(), |h| format!(", head={h}"))
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRotaryLayer>()
}
