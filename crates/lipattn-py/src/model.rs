//! `lipattn.Model`: a whole checkpoint, its tokenizer and its hidden states on real text.

use crate::convert::matrix_f64;
use crate::convert::{to_numpy, vec_to_numpy};
use crate::errors::{interruptible, IntoPyResult};
use crate::ints::PyInt;
use crate::layer::{kernel_of, local_request, PyAttentionLayer};
use crate::local::{local_constant_result, PyLocalConstant};
use lipattn::analysis::lipschitz::LipschitzOptions;
use lipattn::analysis::AnalysisOptions;
use lipattn::models::{Model, SublayerWeights, TextTokenizer};
use lipattn::ops::certify::CertifyRequest;
use lipattn::ops::local::{self, LocalRequest};
use lipattn::ops::robustness::RobustnessRequest;
use lipattn::ops::scope_local::{run_scope, ScopeRequest};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// What `lipattn._torch.model_parts` returns: (label, config.json text, named arrays,
/// tokenizer.json text).
type Parts<'py> = (
    String,
    String,
    Vec<(String, Bound<'py, PyAny>)>,
    Option<String>,
);

/// A Hugging Face checkpoint directory (config.json, model.safetensors or a sharded index,
/// tokenizer.json; BERT, GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma and Gemma 2 families), or a
/// live transformers model of one (``from_transformers``), run in float64. The rotary families
/// (all but BERT and GPT-2) give hidden states, token ids, local constants, ``lipschitz`` and
/// ``analyze`` (B7 on the RMSNorm radius), and ``attention_layer`` gives their sublayer as a
/// ``RotaryLayer`` (forward, jvp, vjp, local constant, B7, the token flow).
#[pyclass(module = "lipattn", name = "Model", frozen)]
pub struct PyModel {
    model: Arc<Model>,
    tokenizer: OnceLock<Arc<TextTokenizer>>,
}

/// A scope's input as a caller gives it: the array X itself, or token ids to run the model on.
enum ScopeInput {
    Given(faer::Mat<f64>),
    Ids(Vec<u32>),
}

impl ScopeInput {
    fn resolve(
        self,
        model: &Model,
        w: &lipattn::models::StackWeights,
    ) -> lipattn::Result<faer::Mat<f64>> {
        match self {
            ScopeInput::Given(x) => Ok(x),
            ScopeInput::Ids(ids) => model.stack_input(w, &ids),
        }
    }
}

impl PyModel {
    /// Exactly one of ``x``, ``text`` and ``ids``.
    fn scope_input(
        &self,
        py: Python<'_>,
        x: Option<&Bound<'_, PyAny>>,
        text: Option<&str>,
        ids: Option<Vec<u32>>,
        max_tokens: Option<usize>,
    ) -> PyResult<ScopeInput> {
        match x {
            Some(x) if text.is_none() && ids.is_none() => {
                Ok(ScopeInput::Given(matrix_f64(x, "x")?))
            }
            None => Ok(ScopeInput::Ids(self.ids(py, text, ids, max_tokens)?)),
            Some(_) => Err(PyValueError::new_err("give exactly one of x, text and ids")),
        }
    }

    fn tokenizer(&self, py: Python<'_>) -> PyResult<Arc<TextTokenizer>> {
        if let Some(t) = self.tokenizer.get() {
            return Ok(t.clone());
        }
        let Some(dir) = self.model.dir().map(Path::to_path_buf) else {
            return Err(PyValueError::new_err(format!(
                "{}: no tokenizer was given to Model.from_transformers, so this model takes token ids only (pass tokenizer=, a transformers fast tokenizer, to give it text)",
                self.model.origin()
            )));
        };
        let t = Arc::new(py.detach(|| TextTokenizer::from_dir(&dir)).py_err()?);
        Ok(self.tokenizer.get_or_init(|| t).clone())
    }

    fn ids(
        &self,
        py: Python<'_>,
        text: Option<&str>,
        ids: Option<Vec<u32>>,
        max_tokens: Option<usize>,
    ) -> PyResult<Vec<u32>> {
        match (text, ids) {
            (Some(t), None) => {
                let tok = self.tokenizer(py)?;
                py.detach(|| tok.encode(t, max_tokens)).py_err()
            }
            (None, Some(mut ids)) => {
                if ids.is_empty() {
                    return Err(PyValueError::new_err("ids is empty"));
                }
                if let Some(k) = max_tokens {
                    if k == 0 {
                        return Err(PyValueError::new_err("max_tokens must be at least 1"));
                    }
                    ids.truncate(k);
                }
                Ok(ids)
            }
            _ => Err(PyValueError::new_err("give exactly one of text and ids")),
        }
    }
}

#[pymethods]
impl PyModel {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let model = interruptible(py, move || Model::open(&path))?;
        Ok(Self {
            model: Arc::new(model),
            tokenizer: OnceLock::new(),
        })
    }

    /// A model of a live transformers model: its config, weights and (optionally) fast
    /// tokenizer read in memory, as ``Model(path)`` reads them from the directory that
    /// ``save_pretrained`` would write; nothing is written to disk.
    #[classmethod]
    #[pyo3(signature = (model, tokenizer=None))]
    fn from_transformers(
        _cls: &Bound<'_, pyo3::types::PyType>,
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        tokenizer: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let parts = py
            .import("lipattn._torch")?
            .call_method1("model_parts", (model, tokenizer))?;
        let (origin, config, arrays, tokenizer_json): Parts<'_> = parts.extract()?;
        let tensors = crate::tensors::named_tensors(&origin, arrays)?;
        let tokenizer = OnceLock::new();
        if let Some(text) = tokenizer_json {
            let label = PathBuf::from(format!("{origin} tokenizer"));
            let t = py
                .detach(|| TextTokenizer::from_json_text(&label, &text))
                .py_err()?;
            let _ = tokenizer.set(Arc::new(t));
        }
        let model = interruptible(py, move || Model::from_parts(&origin, &config, tensors))?;
        Ok(Self {
            model: Arc::new(model),
            tokenizer,
        })
    }

    /// The checkpoint directory; None for a model made by ``from_transformers``.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.model.dir().map(Path::to_path_buf)
    }
    /// 'bert', 'gpt2', 'llama', 'mistral', 'qwen2', 'qwen3', 'gemma' or 'gemma2'.
    #[getter]
    fn family(&self) -> &'static str {
        self.model.family().name()
    }
    #[getter]
    fn model_type(&self) -> String {
        self.model.config().model_type.clone()
    }
    #[getter]
    fn num_layers(&self) -> usize {
        self.model.num_layers()
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.model.hidden_size()
    }
    #[getter]
    fn num_heads(&self) -> usize {
        self.model.config().num_attention_heads
    }
    /// Whether attention is causally masked (every family but BERT).
    #[getter]
    fn causal(&self) -> bool {
        self.model.is_causal()
    }

    /// The attention sublayer of ``layer`` (or head ``head``'s contribution alone, no output
    /// bias): an ``AttentionLayer`` for BERT and GPT-2, a ``RotaryLayer`` (positions 0..n-1,
    /// the model's own mask) for the rotary families, which score by dot products only.
    #[pyo3(signature = (layer, *, head=None, kernel="dot"))]
    fn attention_layer<'py>(
        &self,
        py: Python<'py>,
        layer: PyInt,
        head: Option<PyInt>,
        kernel: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(layer, head);
        let k = kernel_of(kernel)?;
        let model = self.model.clone();
        let weights = interruptible(py, move || model.sublayer(layer))?;
        let source = self.model.layer_source(layer);
        match weights {
            SublayerWeights::Plain(full) => {
                let l = PyAttentionLayer::of_model(full.with_kernel(k), source, head)?;
                Ok(Bound::new(py, l)?.into_any())
            }
            SublayerWeights::Rotary {
                layer: full,
                family,
            } => {
                if k != lipattn::Kernel::Dot {
                    return Err(PyValueError::new_err(format!(
                        "kernel '{kernel}': model_type '{family}' scores by rotated dot products, which a different kernel would replace; rotary layers take kernel='dot' only"
                    )));
                }
                let branch = lipattn::dynamics::RotaryBranch::new(*full, family);
                let l = crate::rotary::PyRotaryLayer::new(branch, source, head)?;
                Ok(Bound::new(py, l)?.into_any())
            }
        }
    }

    /// Token ids of ``text`` with the model's own tokenizer (special tokens included), at most
    /// ``max_tokens`` of them (cutting the end), as an int64 array.
    #[pyo3(signature = (text, *, max_tokens=None))]
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        max_tokens: Option<PyInt>,
    ) -> PyResult<Bound<'py, numpy::PyArray1<i64>>> {
        crate::ints::unsigned!(max_tokens);
        let ids = self.ids(py, Some(text), None, max_tokens)?;
        let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        Ok(vec_to_numpy(py, &v))
    }

    /// Hidden states on ``text`` (or token ``ids``), float64 (n, hidden_size). With ``layer`` L
    /// the state entering layer L (L = num_layers: the final output, after the final norm of
    /// GPT-2 and the rotary families), running only the blocks before it, as ``lipattn hidden`` does; without it,
    /// the list of all num_layers + 1 states.
    #[pyo3(signature = (text=None, *, ids=None, layer=None, max_tokens=None))]
    fn hidden_states<'py>(
        &self,
        py: Python<'py>,
        text: Option<&str>,
        ids: Option<Vec<PyInt>>,
        layer: Option<PyInt>,
        max_tokens: Option<PyInt>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(ids, layer, max_tokens);
        let n_layers = self.model.num_layers();
        if let Some(l) = layer {
            // Checked before tokenising or running anything, so a typo costs nothing.
            if l > n_layers {
                return Err(PyValueError::new_err(format!(
                    "layer {l} out of range: the model has {n_layers} layers, so hidden states exist for 0..={n_layers} ({n_layers} = the final output)"
                )));
            }
        }
        let ids = self.ids(py, text, ids, max_tokens)?;
        let model = self.model.clone();
        let last = layer.unwrap_or(n_layers);
        let states = interruptible(py, move || model.hidden_states_upto(&ids, last))?;
        Ok(match layer {
            Some(l) => to_numpy(py, states[l].as_ref()).into_any(),
            None => {
                let list = PyList::empty(py);
                for s in &states {
                    list.append(to_numpy(py, s.as_ref()))?;
                }
                list.into_any()
            }
        })
    }

    /// The local constant ``||J(X)||_2`` (Frobenius to Frobenius) of the attention sublayer of
    /// ``layer`` (or of query head ``head``'s contribution alone, no output bias) at the tokens
    /// ``x`` (n, d), with the model's own mask, uniform token weights, in float64, token i at
    /// position i for the rotary families: ``lipattn local --model``. An attained value, hence a
    /// lower bound on the Lipschitz constant over any domain containing ``x``, never a
    /// certificate. ``method`` 'lanczos' (``tol`` = requested relative accuracy, an estimate) or
    /// 'power'. ``dtype`` 'f32' runs Lanczos in float32 and refines its vector in float64 (the
    /// reported sigma and error estimate are the float64 ones): ``lipattn local --dtype f32``.
    /// ``attention``: 'dense' (n x n probabilities), 'streaming' (per-row statistics, memory
    /// linear in n; plain or rotary sublayers) or 'auto' (dense when it fits the memory budget).
    #[pyo3(signature = (layer, x, *, head=None, method=LocalRequest::default().method.name(), tol=LocalRequest::default().tol, max_iter=None, seed=crate::ints::PyInt::Fits(LocalRequest::default().seed as i128), dtype=LocalRequest::default().dtype.name(), attention=LocalRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn local_constant(
        &self,
        py: Python<'_>,
        layer: PyInt,
        x: &Bound<'_, PyAny>,
        head: Option<PyInt>,
        method: &str,
        tol: f64,
        max_iter: Option<PyInt>,
        seed: PyInt,
        dtype: &str,
        attention: &str,
    ) -> PyResult<PyLocalConstant> {
        crate::ints::unsigned!(layer, head, max_iter, seed);
        let req = LocalRequest {
            head,
            dtype: dtype.parse().py_err()?,
            attention: attention.parse().py_err()?,
            ..local_request(method, tol, max_iter, seed)?
        };
        let x = matrix_f64(x, "tokens")?;
        let model = self.model.clone();
        let r = interruptible(py, move || {
            let weights = model.sublayer(layer)?;
            let source = model.layer_source(layer);
            local::run_sublayer(
                &req,
                &weights,
                &source,
                x.as_ref(),
                &mut lipattn::ops::silent,
            )
        })?;
        local_constant_result(py, r)
    }

    /// The local constant ``||J(X)||_2`` (Frobenius norms) of a wider map than one attention
    /// sublayer, beside its composed certified global bound: ``lipattn local --scope``.
    /// ``scope``: 'attention', 'sublayer-residual-norm' (the attention half of the block with its
    /// norms and residual; BERT's ``BertAttention``), 'block' or 'model' (from the input
    /// embeddings, word + position + token type before the first norm, to the final hidden
    /// states), ``pool`` ('none', 'mean', 'mean-normalised') after 'model'. X is ``x`` (n, d),
    /// or what the model computes at the scope's input on ``text`` (or token ``ids``). Returns
    /// the dict ``lipattn local --scope ... --json`` prints plus ``x``, ``vector`` (the top right
    /// singular vector) and ``output`` (the scope's output at X). The local constant is
    /// attained, never a certificate; with ``upper_failure_probability`` the report's ``upper``
    /// is a probabilistic upper bound on it (Lemma P, ``upper_steps`` Lanczos steps from their
    /// own random start). ``attention`` ('auto', 'dense', 'streaming'): the attention state of
    /// every attention step of the scope (``lipattn local --attention``; 'auto' streams where the
    /// memory budget refuses the dense chain); the dict's ``attention`` says which ran.
    #[pyo3(signature = (scope, x=None, *, layer=None, text=None, ids=None, max_tokens=None, pool="none", method=LocalRequest::default().method.name(), tol=LocalRequest::default().tol, max_iter=None, seed=crate::ints::PyInt::Fits(LocalRequest::default().seed as i128), upper_failure_probability=None, upper_steps=crate::ints::PyInt::Fits(ScopeRequest::default().upper_steps as i128), attention=LocalRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn scope_local_constant<'py>(
        &self,
        py: Python<'py>,
        scope: &str,
        x: Option<&Bound<'py, PyAny>>,
        layer: Option<PyInt>,
        text: Option<&str>,
        ids: Option<Vec<PyInt>>,
        max_tokens: Option<PyInt>,
        pool: &str,
        method: &str,
        tol: f64,
        max_iter: Option<PyInt>,
        seed: PyInt,
        upper_failure_probability: Option<f64>,
        upper_steps: PyInt,
        attention: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(ids, layer, max_tokens, max_iter, seed, upper_steps);
        let scope_req = ScopeRequest {
            scope: scope.parse().py_err()?,
            pool: pool.parse().py_err()?,
            upper_failure_probability,
            upper_steps,
        };
        let req = LocalRequest {
            attention: attention.parse().py_err()?,
            ..local_request(method, tol, max_iter, seed)?
        };
        scope_req.scope.check(layer, scope_req.pool).py_err()?;
        let input = self.scope_input(py, x, text, ids, max_tokens)?;
        let model = self.model.clone();
        let (r, x) = interruptible(py, move || {
            let w = model.stack(scope_req.scope, layer, scope_req.pool)?;
            let x = input.resolve(&model, &w)?;
            let r = run_scope(
                &req,
                &scope_req,
                &w,
                model.family().name(),
                x.as_ref(),
                &mut lipattn::ops::silent,
            )?;
            Ok((r, x))
        })?;
        crate::convert::report_dict(
            py,
            &r,
            &[
                ("x", Some(x.as_ref())),
                ("vector", Some(r.vector.as_ref())),
                ("output", Some(r.output.as_ref())),
            ],
        )
    }

    /// A local certificate on a ball around X (BERT and GPT-2 families): ``lipattn certify``.
    /// ``scope``: 'attention' (the sublayer of ``layer``), 'block' (block ``layer``) or 'model'
    /// (``layer`` None; from the input embeddings, then ``pool``). X is ``x`` (n, d), or what the
    /// model computes at the scope's input on ``text`` (or token ``ids``). ``ball``: 'frobenius' (||Y - X||_F <= epsilon) or 'tokens'
    /// (every token within epsilon). Returns the dict ``lipattn certify --json`` prints
    /// (``certified``: proven bound on sup ||J(Y)||_2 over the ball, probabilistic with
    /// ``failure_probability`` through Lemma P at the centre; ``output_change``: the bound on
    /// ||f(Y) - f(X)||_F; ``attained``: the largest ||J(Y)||_2 ascent found in the ball; ...)
    /// plus ``x`` and ``attained_input``. ``attention`` ('auto', 'dense', 'streaming'): the
    /// attention state of every attention sublayer the certificate reads (every scope, plain and
    /// rotary); the dict's ``attention`` says which ran (streaming: memory linear in n).
    /// ``intervals`` ('blocks', 'all'): scopes block and model, the runs of steps Lemma P bounds
    /// at the centre; 'all' (every run of two steps or more) is far tighter at larger radii, at a
    /// time growing like the cube of the depth (MiniLM's whole model: about 2.4x); the dict's
    /// ``intervals`` says which ran (None at scope attention, which has no chain).
    #[pyo3(signature = (layer, epsilon, x=None, *, text=None, ids=None, max_tokens=None, scope=CertifyRequest::default().scope.name(), pool=CertifyRequest::default().pool.name(), ball=CertifyRequest::default().ball.name(), failure_probability=CertifyRequest::default().failure_probability, upper_steps=crate::ints::PyInt::Fits(CertifyRequest::default().upper_steps as i128), interval_steps=crate::ints::PyInt::Fits(CertifyRequest::default().interval_steps as i128), intervals=CertifyRequest::default().intervals.name(), attack_starts=crate::ints::PyInt::Fits(CertifyRequest::default().attack_starts as i128), attack_steps=crate::ints::PyInt::Fits(CertifyRequest::default().attack_steps as i128), tol=CertifyRequest::default().tol, seed=crate::ints::PyInt::Fits(CertifyRequest::default().seed as i128), attention=CertifyRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn certify<'py>(
        &self,
        py: Python<'py>,
        layer: Option<PyInt>,
        epsilon: f64,
        x: Option<&Bound<'py, PyAny>>,
        text: Option<&str>,
        ids: Option<Vec<PyInt>>,
        max_tokens: Option<PyInt>,
        scope: &str,
        pool: &str,
        ball: &str,
        failure_probability: f64,
        upper_steps: PyInt,
        interval_steps: PyInt,
        intervals: &str,
        attack_starts: PyInt,
        attack_steps: PyInt,
        tol: f64,
        seed: PyInt,
        attention: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(
            layer,
            ids,
            max_tokens,
            upper_steps,
            interval_steps,
            attack_starts,
            attack_steps,
            seed
        );
        let req = CertifyRequest {
            scope: scope.parse().py_err()?,
            pool: pool.parse().py_err()?,
            epsilon,
            ball: ball.parse().py_err()?,
            failure_probability,
            upper_steps,
            interval_steps,
            intervals: intervals.parse().py_err()?,
            attack_starts,
            attack_steps,
            tol,
            seed,
            attention: attention.parse().py_err()?,
        };
        req.check().py_err()?;
        req.scope.check(layer, req.pool).py_err()?;
        let input = self.scope_input(py, x, text, ids, max_tokens)?;
        let model = self.model.clone();
        let (r, x) = interruptible(py, move || {
            let w = model.stack(req.scope, layer, req.pool)?;
            let x = input.resolve(&model, &w)?;
            let r = lipattn::ops::certify::run_model(
                &req,
                &model,
                layer,
                x.as_ref(),
                &mut lipattn::ops::silent,
            )?;
            Ok((r, x))
        })?;
        crate::convert::report_dict(
            py,
            &r,
            &[
                ("x", Some(x.as_ref())),
                ("attained_input", Some(r.attained_input.as_ref())),
            ],
        )
    }

    /// The certified robustness radius of X beside the attack radius: ``lipattn robustness``.
    /// Exactly one tolerance: ``delta`` (||f(Y) - f(X)||_F must stay within it) or ``cosine``
    /// (the pooled embedding keeps at least this cosine similarity; needs ``pool``). ``scope``,
    /// ``layer``, ``pool``, X (``x``, ``text`` or ``ids``) and ``ball`` as in ``certify``. Returns
    /// the dict ``lipattn robustness --json`` prints (``certified_radius``: proven, probabilistic
    /// through Lemma P with ``failure_probability``; ``attack_radius``: the distance of an input
    /// the attack found leaving the tolerance, or None; ``ratio``) plus ``x`` and
    /// ``attack_input``. ``attention`` ('auto', 'dense', 'streaming'): the attention state of
    /// the certificate and the attack, as in ``certify``; the dict's ``attention`` says which
    /// ran (streaming: memory linear in n). ``intervals`` ('blocks', 'all'): the runs of steps
    /// bounded at the centre, as in ``certify``.
    #[pyo3(signature = (x=None, *, text=None, ids=None, max_tokens=None, layer=None, scope=RobustnessRequest::default().scope.name(), pool=RobustnessRequest::default().pool.name(), delta=None, cosine=None, ball=RobustnessRequest::default().ball.name(), failure_probability=RobustnessRequest::default().failure_probability, upper_steps=crate::ints::PyInt::Fits(RobustnessRequest::default().upper_steps as i128), interval_steps=crate::ints::PyInt::Fits(RobustnessRequest::default().interval_steps as i128), intervals=RobustnessRequest::default().intervals.name(), attack_starts=crate::ints::PyInt::Fits(RobustnessRequest::default().attack_starts as i128), attack_steps=crate::ints::PyInt::Fits(RobustnessRequest::default().attack_steps as i128), seed=crate::ints::PyInt::Fits(RobustnessRequest::default().seed as i128), attention=RobustnessRequest::default().attention.name()))]
    #[allow(clippy::too_many_arguments)]
    fn robustness<'py>(
        &self,
        py: Python<'py>,
        x: Option<&Bound<'py, PyAny>>,
        text: Option<&str>,
        ids: Option<Vec<PyInt>>,
        max_tokens: Option<PyInt>,
        layer: Option<PyInt>,
        scope: &str,
        pool: &str,
        delta: Option<f64>,
        cosine: Option<f64>,
        ball: &str,
        failure_probability: f64,
        upper_steps: PyInt,
        interval_steps: PyInt,
        intervals: &str,
        attack_starts: PyInt,
        attack_steps: PyInt,
        seed: PyInt,
        attention: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(
            layer,
            ids,
            max_tokens,
            upper_steps,
            interval_steps,
            attack_starts,
            attack_steps,
            seed
        );
        let req = RobustnessRequest {
            scope: scope.parse().py_err()?,
            pool: pool.parse().py_err()?,
            delta,
            cosine,
            ball: ball.parse().py_err()?,
            failure_probability,
            upper_steps,
            interval_steps,
            intervals: intervals.parse().py_err()?,
            attack_starts,
            attack_steps,
            seed,
            attention: attention.parse().py_err()?,
        };
        req.check().py_err()?;
        req.scope.check(layer, req.pool).py_err()?;
        let input = self.scope_input(py, x, text, ids, max_tokens)?;
        let model = self.model.clone();
        let (r, x) = interruptible(py, move || {
            let w = model.stack(req.scope, layer, req.pool)?;
            let x = input.resolve(&model, &w)?;
            let r = lipattn::ops::robustness::run_stack(
                &req,
                &w,
                model.family().name(),
                x.as_ref(),
                &mut lipattn::ops::silent,
            )?;
            Ok((r, x))
        })?;
        crate::convert::report_dict(
            py,
            &r,
            &[
                ("x", Some(x.as_ref())),
                ("attack_input", r.attack_input.as_ref().map(|y| y.as_ref())),
            ],
        )
    }

    /// Certified upper bounds beside attained lower bounds for the attention sublayer of
    /// ``layer`` (or query head ``head``'s contribution) on ``(B_R)^n``, as ``lipattn lipschitz
    /// --model`` computes them (same keys, searches and seeds), plus ``inputs`` (the arrays
    /// attaining the lower bounds). Any family: for the rotary ones B7 beside the rotary ascent,
    /// causal, at positions 0..n-1 (docs/rotary.md#certified-bounds); for BERT and GPT-2 what
    /// ``AttentionLayer.lipschitz`` returns, masked as the model masks this layer unless
    /// ``causal`` says otherwise.
    #[pyo3(signature = (layer, radius, n, *, head=None, starts=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_STARTS as i128), steps=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_STEPS as i128), atoms=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_ATOMS as i128), seed=crate::ints::PyInt::Fits(LipschitzOptions::DEFAULT_SEED as i128), causal=None))]
    #[allow(clippy::too_many_arguments)]
    fn lipschitz<'py>(
        &self,
        py: Python<'py>,
        layer: PyInt,
        radius: f64,
        n: PyInt,
        head: Option<PyInt>,
        starts: PyInt,
        steps: PyInt,
        atoms: PyInt,
        seed: PyInt,
        causal: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(layer, n, head, starts, steps, atoms, seed);
        let opts = LipschitzOptions {
            radius,
            n,
            starts,
            steps,
            atoms,
            seed,
            causal,
        };
        let weights = self.model.sublayer(layer).py_err()?;
        let source = self.model.layer_source(layer);
        let (source, weights) = match head {
            Some(h) => (source.head(h), weights.head(h).py_err()?),
            None => (source, weights),
        };
        match weights {
            SublayerWeights::Plain(layer) => {
                crate::bounds::lipschitz(py, std::sync::Arc::new(*layer), source, opts)
            }
            SublayerWeights::Rotary { layer, family } => {
                crate::bounds::rotary(py, *layer, family, source, opts)
            }
        }
    }

    /// The whole-model analysis of ``lipattn analyze``: for each selected layer, the attention
    /// sublayer and (with ``heads``) each head's contribution, with certified bounds, attained
    /// local constants on ``windows`` real-text windows per n, at the adversarial construction
    /// and at the transition starts, gaps and power-law fits. ``text`` None analyses the embedded
    /// ``corpus`` ('gpl-3' or 'licences', 33,015 MiniLM tokens for windows up to 32,768) as the
    /// CLI does; a text beside a corpus other than 'gpl-3' is a ValueError. ``attention``
    /// ('auto', 'dense', 'streaming'): the attention state of the local constants, as
    /// ``lipattn analyze --attention``; each point's ``attention`` says which ran. Returns the
    /// report as the dict ``lipattn analyze --json`` prints.
    #[pyo3(signature = (text=None, *, ns=crate::ints::PyInt::all(&AnalysisOptions::default().ns), windows=crate::ints::PyInt::Fits(AnalysisOptions::default().windows as i128), layers=None, heads=AnalysisOptions::default().heads, adversarial=AnalysisOptions::default().adversarial, tol=AnalysisOptions::default().lanczos.tol, attention=AnalysisOptions::default().attention.name(), corpus=lipattn::analysis::Corpus::default().name()))]
    #[allow(clippy::too_many_arguments)]
    fn analyze<'py>(
        &self,
        py: Python<'py>,
        text: Option<String>,
        ns: Vec<PyInt>,
        windows: PyInt,
        layers: Option<Vec<PyInt>>,
        heads: bool,
        adversarial: bool,
        tol: f64,
        attention: &str,
        corpus: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(ns, windows, layers);
        let tokenizer = self.tokenizer(py)?;
        crate::analysis::run(
            py,
            self.model.clone(),
            tokenizer,
            crate::analysis::Request {
                text,
                ns,
                windows,
                layers,
                heads,
                adversarial,
                tol,
                attention: attention.parse().py_err()?,
                corpus: corpus.parse().py_err()?,
            },
        )
    }

    /// The analysis of ``analyze`` (same options) cut into independent tasks: a list of
    /// ``(layer, n)``, layers ascending then n ascending (docs/cluster.md#how-the-work-is-cut).
    #[pyo3(signature = (*, ns=crate::ints::PyInt::all(&AnalysisOptions::default().ns), windows=crate::ints::PyInt::Fits(AnalysisOptions::default().windows as i128), layers=None, heads=AnalysisOptions::default().heads, adversarial=AnalysisOptions::default().adversarial, tol=AnalysisOptions::default().lanczos.tol, attention=AnalysisOptions::default().attention.name(), corpus=lipattn::analysis::Corpus::default().name()))]
    #[allow(clippy::too_many_arguments)]
    fn analysis_tasks(
        &self,
        py: Python<'_>,
        ns: Vec<PyInt>,
        windows: PyInt,
        layers: Option<Vec<PyInt>>,
        heads: bool,
        adversarial: bool,
        tol: f64,
        attention: &str,
        corpus: &str,
    ) -> PyResult<Vec<(usize, usize)>> {
        crate::ints::unsigned!(ns, windows, layers);
        crate::analysis::tasks(
            py,
            self.model.clone(),
            crate::analysis::Request {
                text: None,
                ns,
                windows,
                layers,
                heads,
                adversarial,
                tol,
                attention: attention.parse().py_err()?,
                corpus: corpus.parse().py_err()?,
            },
        )
    }

    /// Runs task ``(layer, n)`` of ``analyze(text, **options)`` and returns its result as a JSON
    /// string, to be checkpointed and passed to ``merge_analysis`` (GIL released).
    #[pyo3(signature = (layer, n, text=None, *, ns=crate::ints::PyInt::all(&AnalysisOptions::default().ns), windows=crate::ints::PyInt::Fits(AnalysisOptions::default().windows as i128), layers=None, heads=AnalysisOptions::default().heads, adversarial=AnalysisOptions::default().adversarial, tol=AnalysisOptions::default().lanczos.tol, attention=AnalysisOptions::default().attention.name(), corpus=lipattn::analysis::Corpus::default().name()))]
    #[allow(clippy::too_many_arguments)]
    fn analysis_task(
        &self,
        py: Python<'_>,
        layer: PyInt,
        n: PyInt,
        text: Option<String>,
        ns: Vec<PyInt>,
        windows: PyInt,
        layers: Option<Vec<PyInt>>,
        heads: bool,
        adversarial: bool,
        tol: f64,
        attention: &str,
        corpus: &str,
    ) -> PyResult<String> {
        crate::ints::unsigned!(layer, n, ns, windows, layers);
        let tokenizer = self.tokenizer(py)?;
        crate::analysis::run_one(
            py,
            self.model.clone(),
            tokenizer,
            crate::analysis::Request {
                text,
                ns,
                windows,
                layers,
                heads,
                adversarial,
                tol,
                attention: attention.parse().py_err()?,
                corpus: corpus.parse().py_err()?,
            },
            lipattn::analysis::AnalysisTask { layer, n },
        )
    }

    /// Runs the tasks ``(layer, n)`` of ``analyze(text, **options)`` for every n of ``task_ns``
    /// in one call, computing the layer's weights and structured-input geometry once; returns
    /// their results as JSON strings, n ascending, each equal to ``analysis_task``'s.
    #[pyo3(signature = (layer, task_ns, text=None, *, ns=crate::ints::PyInt::all(&AnalysisOptions::default().ns), windows=crate::ints::PyInt::Fits(AnalysisOptions::default().windows as i128), layers=None, heads=AnalysisOptions::default().heads, adversarial=AnalysisOptions::default().adversarial, tol=AnalysisOptions::default().lanczos.tol, attention=AnalysisOptions::default().attention.name(), corpus=lipattn::analysis::Corpus::default().name()))]
    #[allow(clippy::too_many_arguments)]
    fn analysis_layer_tasks(
        &self,
        py: Python<'_>,
        layer: PyInt,
        task_ns: Vec<PyInt>,
        text: Option<String>,
        ns: Vec<PyInt>,
        windows: PyInt,
        layers: Option<Vec<PyInt>>,
        heads: bool,
        adversarial: bool,
        tol: f64,
        attention: &str,
        corpus: &str,
    ) -> PyResult<Vec<String>> {
        crate::ints::unsigned!(layer, task_ns, ns, windows, layers);
        let tokenizer = self.tokenizer(py)?;
        crate::analysis::run_layer(
            py,
            self.model.clone(),
            tokenizer,
            crate::analysis::Request {
                text,
                ns,
                windows,
                layers,
                heads,
                adversarial,
                tol,
                attention: attention.parse().py_err()?,
                corpus: corpus.parse().py_err()?,
            },
            layer,
            task_ns,
        )
    }

    /// The report of ``analyze(text, **options)`` from the results of all its tasks (JSON
    /// strings from ``analysis_task``, in any order): the same dict, value for value, but
    /// ``seconds`` (the sum of the tasks'). ``text_source`` names the caller's text in it.
    #[pyo3(signature = (results, text=None, *, text_source=None, ns=crate::ints::PyInt::all(&AnalysisOptions::default().ns), windows=crate::ints::PyInt::Fits(AnalysisOptions::default().windows as i128), layers=None, heads=AnalysisOptions::default().heads, adversarial=AnalysisOptions::default().adversarial, tol=AnalysisOptions::default().lanczos.tol, attention=AnalysisOptions::default().attention.name(), corpus=lipattn::analysis::Corpus::default().name()))]
    #[allow(clippy::too_many_arguments)]
    fn merge_analysis<'py>(
        &self,
        py: Python<'py>,
        results: Vec<String>,
        text: Option<String>,
        text_source: Option<String>,
        ns: Vec<PyInt>,
        windows: PyInt,
        layers: Option<Vec<PyInt>>,
        heads: bool,
        adversarial: bool,
        tol: f64,
        attention: &str,
        corpus: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::ints::unsigned!(ns, windows, layers);
        let tokenizer = self.tokenizer(py)?;
        crate::analysis::merge_results(
            py,
            self.model.clone(),
            tokenizer,
            crate::analysis::Request {
                text,
                ns,
                windows,
                layers,
                heads,
                adversarial,
                tol,
                attention: attention.parse().py_err()?,
                corpus: corpus.parse().py_err()?,
            },
            results,
            text_source,
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({}, family='{}', num_layers={}, hidden_size={})",
            match self.model.dir() {
                Some(d) => format!("path='{}'", d.display()),
                None => self.model.origin().to_string(),
            },
            self.model.family().name(),
            self.model.num_layers(),
            self.model.hidden_size()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()
}
