"""Type stubs of the Rust extension lipattn._lipattn (re-exported by lipattn)."""
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

# NumPy arrays, anything numpy.asarray accepts, and torch tensors (see docs/python.md).
ArrayLike = npt.ArrayLike
F64 = npt.NDArray[np.float64]
Floats = Union[npt.NDArray[np.float64], npt.NDArray[np.float32]]
Kernel = Literal["dot", "l2"]
StrPath = Union[str, PathLike[str]]

class NumericalError(RuntimeError): ...
class ModelError(ValueError): ...
class FormatError(ValueError): ...

class NoConvergenceError(RuntimeError):
    """An iterative solver diverged or ran out of steps; its iterate is never returned."""

    solver: str
    reason: str
    steps: int
    best_residual: float
    best_step: int
    residuals: list[float]

class Measure:
    """A discrete probability measure sum_j w_j delta_{x_j}; validated, never rescaled."""

    def __init__(self, points: ArrayLike, weights: Optional[ArrayLike] = None, *, tol: float = 1e-9) -> None: ...
    @staticmethod
    def normalised(points: ArrayLike, weights: ArrayLike) -> Measure: ...
    @staticmethod
    def uniform(points: ArrayLike) -> Measure: ...
    @property
    def points(self) -> F64: ...
    @property
    def weights(self) -> F64: ...
    @property
    def dim(self) -> int: ...
    def __len__(self) -> int: ...
    def merge_duplicates(self) -> Measure: ...

class LocalConstant:
    """||J(X)||_2 attained at the input by `vector` (a lower bound, never a certificate)."""

    sigma: float
    rel_error: float
    converged: bool
    iterations: int
    seconds: float
    method: Literal["lanczos", "power"]
    tol: Optional[float]
    history: F64
    vector: Floats
    left: Floats
    n: int
    d: int
    d_out: int
    radius: float
    dtype: Literal["f64", "f32"]
    causal: bool
    weights: Literal["uniform", "given"]
    head: Optional[int]
    def to_dict(self) -> dict[str, Any]: ...
    def __float__(self) -> float: ...

class Linearization:
    """The token map linearised at one input; JVPs and VJPs share the work."""

    def jvp(self, g: ArrayLike) -> Floats: ...
    def vjp(self, ybar: ArrayLike) -> Floats: ...
    @property
    def output(self) -> Floats: ...
    @property
    def n(self) -> int: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def causal(self) -> bool: ...
    @property
    def dtype(self) -> Literal["float64", "float32"]: ...
    def top_singular(
        self,
        *,
        method: Literal["lanczos", "power"] = "lanczos",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        seed: int = 0,
        start: Optional[ArrayLike] = None,
    ) -> LocalConstant: ...

class AttentionLayer:
    """One multi-head attention sublayer (weights in PyTorch's Linear convention y = x W^T + b)."""

    def __init__(
        self,
        wq: ArrayLike,
        bq: ArrayLike,
        wk: ArrayLike,
        bk: ArrayLike,
        wv: ArrayLike,
        bv: ArrayLike,
        wo: ArrayLike,
        bo: ArrayLike,
        *,
        heads: int,
        kernel: Kernel = "dot",
        causal: bool = False,
        score_divisor_sq: Optional[int] = None,
    ) -> None: ...
    @staticmethod
    def from_model(path: StrPath, layer: int, *, head: Optional[int] = None, kernel: Kernel = "dot") -> AttentionLayer: ...
    @property
    def heads(self) -> int: ...
    @property
    def dk(self) -> int: ...
    @property
    def dv(self) -> int: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def score_divisor_sq(self) -> int: ...
    @property
    def kernel(self) -> Kernel: ...
    @property
    def causal(self) -> bool: ...
    def weights(self) -> dict[str, F64]: ...
    def head(self, h: int, keep_output_bias: bool = False) -> AttentionLayer: ...
    def with_kernel(self, kernel: Kernel) -> AttentionLayer: ...
    @overload
    def forward(self, x: npt.NDArray[np.float32], weights: Optional[ArrayLike] = None, causal: Optional[bool] = None) -> npt.NDArray[np.float32]: ...
    @overload
    def forward(self, x: ArrayLike, weights: Optional[ArrayLike] = None, causal: Optional[bool] = None) -> Floats: ...
    def gamma(self, queries: ArrayLike, context: ArrayLike, weights: Optional[ArrayLike] = None, causal: bool = False) -> F64: ...
    def self_attention(self, mu: Measure) -> Measure: ...
    def cross_attention(self, mu: Measure, nu: Measure) -> Measure: ...
    def probabilities(
        self, h: int, queries: ArrayLike, context: Optional[ArrayLike] = None, weights: Optional[ArrayLike] = None, causal: bool = False
    ) -> F64: ...
    def scores(self, h: int, queries: ArrayLike, context: Optional[ArrayLike] = None) -> F64: ...
    def query_jacobian(self, x: ArrayLike, mu: Measure) -> F64: ...
    def linearize(self, x: ArrayLike, weights: Optional[ArrayLike] = None, causal: Optional[bool] = None) -> Linearization: ...
    def jvp(self, x: ArrayLike, g: ArrayLike, weights: Optional[ArrayLike] = None, causal: Optional[bool] = None) -> Floats: ...
    def vjp(self, x: ArrayLike, ybar: ArrayLike, weights: Optional[ArrayLike] = None, causal: Optional[bool] = None) -> Floats: ...
    def local_constant(
        self,
        x: ArrayLike,
        *,
        method: Literal["lanczos", "power"] = "lanczos",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        seed: int = 0,
        weights: Optional[ArrayLike] = None,
        causal: Optional[bool] = None,
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> LocalConstant: ...
    def certified_bounds(self, radius: float, n: int, *, causal: Optional[bool] = None) -> dict[str, Any]: ...
    def lipschitz(
        self,
        radius: float,
        n: int,
        *,
        starts: int = 2,
        steps: int = 10,
        atoms: int = 8,
        seed: int = 0,
        causal: Optional[bool] = None,
    ) -> dict[str, Any]: ...
    def ascent(
        self,
        n: int,
        radius: float,
        *,
        random_starts: int = 4,
        steps: int = 20,
        seed: int = 0,
        start: Optional[ArrayLike] = None,
        tol: float = 1e-8,
        causal: Optional[bool] = None,
    ) -> dict[str, Any]: ...
    def adversarial_input(self, head: int, n: int, radius: float) -> F64: ...
    def search_pairs(
        self,
        radius: float,
        *,
        atoms: int = 8,
        random_pairs: int = 20,
        perturbed_pairs: int = 20,
        perturbation: float = 1e-2,
        local_steps: int = 100,
        seed: int = 0,
    ) -> dict[str, Any]: ...
    def head_constants(self) -> list[dict[str, float]]: ...

class Transport:
    """Result of `transport`: cost, distance, plan, potentials, certificate."""

    method: Literal["exact", "sorted", "sinkhorn"]
    p: Optional[float]
    cost: float
    distance: float
    eps: Optional[float]
    iterations: int
    converged: bool
    marginal_error: float
    seconds: float
    n: int
    m: int
    @property
    def plan(self) -> F64: ...
    @property
    def plan_sparse(self) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], F64]: ...
    @property
    def potentials(self) -> Tuple[F64, F64]: ...
    @property
    def certificate(self) -> Optional[dict[str, float]]: ...
    def to_dict(self) -> dict[str, Any]: ...

def transport(
    a: Union[Measure, ArrayLike],
    b: Union[Measure, ArrayLike],
    *,
    wa: Optional[ArrayLike] = None,
    wb: Optional[ArrayLike] = None,
    p: float = 1.0,
    method: Literal["exact", "sorted", "sinkhorn"] = "exact",
    eps: Optional[float] = None,
    tol: float = 1e-9,
    max_iter: int = 10000,
    cost: Optional[ArrayLike] = None,
    normalise: bool = False,
    accept_unconverged: bool = False,
) -> Transport: ...
def ground_cost(a: Union[Measure, ArrayLike], b: Union[Measure, ArrayLike], p: int = 1) -> F64: ...
def layer_norm_radius(gamma: ArrayLike, beta: ArrayLike) -> float: ...

class RotaryLayer:
    """The attention sublayer of a rotary checkpoint (Model.attention_layer): X (n, d) -> f(X) at
    positions 0..n-1 with the model's own causal mask and window, float64; no map of measures."""

    @property
    def family(self) -> str: ...
    @property
    def heads(self) -> int: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def head(self) -> Optional[int]: ...
    @property
    def d_in(self) -> int: ...
    @property
    def d_out(self) -> int: ...
    @property
    def window(self) -> Optional[int]: ...
    @property
    def causal(self) -> bool: ...
    @property
    def rotary(self) -> dict[str, Any]: ...
    def forward(self, x: ArrayLike) -> F64: ...
    def jvp(self, x: ArrayLike, g: ArrayLike) -> F64: ...
    def vjp(self, x: ArrayLike, ybar: ArrayLike) -> F64: ...
    def local_constant(
        self,
        x: ArrayLike,
        *,
        method: Literal["lanczos", "power"] = "lanczos",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        seed: int = 0,
        dtype: Literal["f64", "f32"] = "f64",
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> LocalConstant: ...
    def certified_lipschitz(self, radius: float, n: int) -> Optional[dict[str, Any]]: ...
    def lipschitz(
        self, radius: float, n: int, *, starts: int = 2, steps: int = 10, seed: int = 0
    ) -> dict[str, Any]: ...

class Model:
    """A Hugging Face checkpoint directory (BERT, GPT-2, Llama, Mistral, Qwen2, Qwen3, Gemma or
    Gemma 2 family), run in float64, or a live transformers model of one (from_transformers). The
    rotary families give hidden states, token ids, local constants, lipschitz and analyze (B7 on
    the RMSNorm radius); attention_layer gives their sublayer as a RotaryLayer."""

    def __init__(self, path: StrPath) -> None: ...
    @classmethod
    def from_transformers(cls, model: Any, tokenizer: Optional[Any] = None) -> Model: ...
    @property
    def path(self) -> Optional[Path]: ...
    @property
    def family(
        self,
    ) -> Literal["bert", "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"]: ...
    @property
    def model_type(self) -> str: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def causal(self) -> bool: ...
    def attention_layer(
        self, layer: int, *, head: Optional[int] = None, kernel: Kernel = "dot"
    ) -> Union[AttentionLayer, RotaryLayer]: ...
    def tokenize(self, text: str, *, max_tokens: Optional[int] = None) -> npt.NDArray[np.int64]: ...
    def local_constant(
        self,
        layer: int,
        x: ArrayLike,
        *,
        head: Optional[int] = None,
        method: Literal["lanczos", "power"] = "lanczos",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        seed: int = 0,
        dtype: Literal["f64", "f32"] = "f64",
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> LocalConstant:
        """``lipattn local --model``: ||J(X)||_2 of the layer's attention sublayer at ``x`` (float64,
        the model's mask, positions 0..n-1); an attained lower bound, never a certificate.
        ``attention``: the dense n x n state, the streaming one or auto."""
        ...
    def scope_local_constant(
        self,
        scope: Literal["attention", "sublayer-residual-norm", "block", "model"],
        x: Optional[ArrayLike] = None,
        *,
        layer: Optional[int] = None,
        text: Optional[str] = None,
        ids: Optional[Sequence[int]] = None,
        max_tokens: Optional[int] = None,
        pool: Literal["none", "mean", "mean-normalised"] = "none",
        method: Literal["lanczos", "power"] = "lanczos",
        tol: float = 1e-6,
        max_iter: Optional[int] = None,
        seed: int = 0,
        upper_failure_probability: Optional[float] = None,
        upper_steps: int = 200,
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> dict[str, Any]:
        """``lipattn local --scope``: ||J(X)||_2 of a block's attention half, a block or the whole
        model (optionally pooled) at X (``x``, or the model's own input on ``text`` / ``ids``),
        beside the composed certified global bound; the dict the CLI prints plus ``x``,
        ``vector`` and ``output``. The local constant is attained, never a certificate.
        ``attention``: the attention steps' state (dense, streaming, or auto); the dict's
        ``attention`` says which ran."""
        ...
    def certify(
        self,
        layer: Optional[int],
        epsilon: float,
        x: Optional[ArrayLike] = None,
        *,
        text: Optional[str] = None,
        ids: Optional[Sequence[int]] = None,
        max_tokens: Optional[int] = None,
        scope: Literal["attention", "sublayer-residual-norm", "block", "model"] = "attention",
        pool: Literal["none", "mean", "mean-normalised"] = "none",
        ball: Literal["frobenius", "tokens"] = "frobenius",
        failure_probability: float = 1e-6,
        upper_steps: int = 200,
        interval_steps: int = 60,
        intervals: Literal["blocks", "all"] = "blocks",
        attack_starts: int = 4,
        attack_steps: int = 30,
        tol: float = 1e-6,
        seed: int = 0,
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> dict[str, Any]:
        """``lipattn certify``: a proven bound on sup ||J(Y)||_2 and on ||f(Y) - f(X)||_F over a
        ball around X for the attention sublayer of ``layer``, block ``layer`` or the whole model
        (``layer`` None, then ``pool``), probabilistic with ``failure_probability``, beside the
        largest ||J(Y)||_2 an ascent finds there; the dict the CLI prints plus ``x`` and
        ``attained_input``. ``attention``: the attention state of every attention sublayer the
        certificate reads, at every scope, plain and rotary (dense, streaming in memory linear
        in n, or auto); the dict's ``attention`` says which ran. ``intervals``: scopes block and
        model, the runs of steps Lemma P bounds at the centre, 'blocks' or 'all' (every run of two
        steps or more: far tighter at larger radii, time growing like the cube of the depth); the
        dict's ``intervals`` says which ran (None at scope attention)."""
        ...
    def robustness(
        self,
        x: Optional[ArrayLike] = None,
        *,
        text: Optional[str] = None,
        ids: Optional[Sequence[int]] = None,
        max_tokens: Optional[int] = None,
        layer: Optional[int] = None,
        scope: Literal["attention", "sublayer-residual-norm", "block", "model"] = "model",
        pool: Literal["none", "mean", "mean-normalised"] = "none",
        delta: Optional[float] = None,
        cosine: Optional[float] = None,
        ball: Literal["frobenius", "tokens"] = "frobenius",
        failure_probability: float = 1e-6,
        upper_steps: int = 200,
        interval_steps: int = 60,
        intervals: Literal["blocks", "all"] = "blocks",
        attack_starts: int = 2,
        attack_steps: int = 20,
        seed: int = 0,
        attention: Literal["auto", "dense", "streaming"] = "auto",
    ) -> dict[str, Any]:
        """``lipattn robustness``: the largest ball radius for which the output provably stays
        within ``delta`` (or keeps cosine similarity ``cosine`` for a pooled embedding), beside
        the radius at which an attack leaves it; the dict the CLI prints plus ``x`` and
        ``attack_input``. ``attention``: the attention state of the certificate and the attack
        at every scope, plain and rotary (dense, streaming in memory linear in n, or auto); the
        dict's ``attention`` says which ran. ``intervals``: 'blocks' or 'all', as in ``certify``."""
        ...
    def lipschitz(
        self,
        layer: int,
        radius: float,
        n: int,
        *,
        head: Optional[int] = None,
        starts: int = 2,
        steps: int = 10,
        atoms: int = 8,
        seed: int = 0,
        causal: Optional[bool] = None,
    ) -> dict[str, Any]:
        """``lipattn lipschitz --model``: certified bounds (B7 for the rotary families) beside
        attained lower bounds on (B_R)^n, with the inputs attaining them under ``inputs``."""
        ...
    @overload
    def hidden_states(self, text: Optional[str] = None, *, ids: Optional[Sequence[int]] = None, layer: int, max_tokens: Optional[int] = None) -> F64: ...
    @overload
    def hidden_states(self, text: Optional[str] = None, *, ids: Optional[Sequence[int]] = None, layer: None = None, max_tokens: Optional[int] = None) -> list[F64]: ...
    def analyze(
        self,
        text: Optional[str] = None,
        *,
        ns: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        windows: int = 2,
        layers: Optional[Sequence[int]] = None,
        heads: bool = True,
        adversarial: bool = True,
        tol: float = 1e-4,
        attention: Literal["auto", "dense", "streaming"] = "auto",
        corpus: Literal["gpl-3", "licences", "licenses"] = "gpl-3",
    ) -> dict[str, Any]:
        """The whole-model analysis of ``lipattn analyze``, as the dict its ``--json`` prints."""
        ...
    def analysis_tasks(
        self,
        *,
        ns: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        windows: int = 2,
        layers: Optional[Sequence[int]] = None,
        heads: bool = True,
        adversarial: bool = True,
        tol: float = 1e-4,
        attention: Literal["auto", "dense", "streaming"] = "auto",
        corpus: Literal["gpl-3", "licences", "licenses"] = "gpl-3",
    ) -> list[tuple[int, int]]:
        """``analyze``'s work cut into independent ``(layer, n)`` tasks, in merge order."""
        ...
    def analysis_task(
        self,
        layer: int,
        n: int,
        text: Optional[str] = None,
        *,
        ns: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        windows: int = 2,
        layers: Optional[Sequence[int]] = None,
        heads: bool = True,
        adversarial: bool = True,
        tol: float = 1e-4,
        attention: Literal["auto", "dense", "streaming"] = "auto",
        corpus: Literal["gpl-3", "licences", "licenses"] = "gpl-3",
    ) -> str:
        """Runs task ``(layer, n)`` of ``analyze(text, **options)``; its result as JSON text."""
        ...
    def analysis_layer_tasks(
        self,
        layer: int,
        task_ns: Sequence[int],
        text: Optional[str] = None,
        *,
        ns: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        windows: int = 2,
        layers: Optional[Sequence[int]] = None,
        heads: bool = True,
        adversarial: bool = True,
        tol: float = 1e-4,
        attention: Literal["auto", "dense", "streaming"] = "auto",
        corpus: Literal["gpl-3", "licences", "licenses"] = "gpl-3",
    ) -> list[str]:
        """Tasks ``(layer, n)`` for every n of ``task_ns`` in one call sharing the layer's setup."""
        ...
    def merge_analysis(
        self,
        results: Sequence[str],
        text: Optional[str] = None,
        *,
        text_source: Optional[str] = None,
        ns: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
        windows: int = 2,
        layers: Optional[Sequence[int]] = None,
        heads: bool = True,
        adversarial: bool = True,
        tol: float = 1e-4,
        attention: Literal["auto", "dense", "streaming"] = "auto",
        corpus: Literal["gpl-3", "licences", "licenses"] = "gpl-3",
    ) -> dict[str, Any]:
        """The report of ``analyze(text, **options)`` from all its task results (any order)."""
        ...

Solver = Literal["picard", "anderson", "broyden"]

class InvertibleBlock:
    """y = x + g(x) with g the layer scaled to a certified Lipschitz constant <= c < 1."""

    def __init__(self, layer: Union[AttentionLayer, RotaryLayer], n: int, c: float = 0.9, *, radius: Optional[float] = None) -> None: ...
    @staticmethod
    def for_tokens(layer: Union[AttentionLayer, RotaryLayer], x: ArrayLike, c: float = 0.9, *, radius: Optional[float] = None) -> InvertibleBlock: ...
    @property
    def g(self) -> Union[AttentionLayer, RotaryLayer]: ...
    @property
    def scale(self) -> float: ...
    @property
    def c(self) -> float: ...
    @property
    def n(self) -> int: ...
    @property
    def d(self) -> int: ...
    @property
    def certified_lipschitz(self) -> float: ...
    @property
    def certificate(self) -> dict[str, Any]: ...
    @property
    def operator(self) -> dict[str, Any]: ...
    def forward(self, x: ArrayLike) -> F64: ...
    def residual(self, x: ArrayLike, y: ArrayLike) -> float: ...
    def inverse(
        self,
        y: ArrayLike,
        *,
        solver: Solver = "anderson",
        atol: float = 1e-10,
        max_iter: int = 1000,
        anderson_memory: int = 6,
        anderson_reg: float = 1e-4,
        anderson_mixing: float = 1.0,
        broyden_memory: int = 30,
        x_true: Optional[ArrayLike] = None,
    ) -> dict[str, Any]:
        """Solves x + g(x) = y; keys of a ``lipattn invert --json`` solver entry, plus ``x``."""
        ...
    def logdet(
        self,
        x: ArrayLike,
        *,
        method: Literal["exact", "series"] = "exact",
        truncation_tol: float = 1e-3,
        probes: int = 16,
        seed: int = 0,
    ) -> dict[str, Any]: ...

def random_layer(d: int, heads: int = 2, *, kernel: Kernel = "l2", bias: float = 0.1, seed: int = 0) -> AttentionLayer:
    """The CLI's seeded synthetic layer (same seed, same weights)."""
    ...
def random_tokens(n: int, d: int, *, scale: float = 1.0, seed: int = 0) -> F64: ...
def identity_layer(d: int, beta: float = 1.0) -> AttentionLayer: ...
def sphere_sample(n: int, d: int, *, seed: int = 0) -> F64: ...
def clustering(x: ArrayLike, threshold: float = 1e-2) -> dict[str, Any]: ...
def invert(
    layer: Union[AttentionLayer, RotaryLayer],
    x: ArrayLike,
    c: float = 0.9,
    *,
    radius: Optional[float] = None,
    solver: Union[Solver, Literal["all"]] = "all",
    atol: float = 1e-10,
    max_iter: int = 1000,
    anderson_memory: int = 6,
    anderson_reg: float = 1e-4,
    anderson_mixing: float = 1.0,
    broyden_memory: int = 30,
    logdet: bool = False,
    probes: int = 16,
    logdet_series: bool = False,
    truncation_tol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``lipattn invert`` command: its JSON keys plus ``x``, the first converged reconstruction."""
    ...
def fixed_point(
    layer: Union[AttentionLayer, RotaryLayer],
    x: ArrayLike,
    *,
    space: Literal["tokens", "measure"] = "tokens",
    variant: Literal["plain", "damped", "injected"] = "plain",
    beta: float = 0.5,
    input: Optional[ArrayLike] = None,
    weights: Optional[ArrayLike] = None,
    contract: Optional[float] = None,
    radius: Optional[float] = None,
    solver: Solver = "anderson",
    atol: float = 1e-10,
    rtol: float = 0.0,
    max_iter: int = 500,
    anderson_memory: int = 6,
    anderson_reg: float = 1e-4,
    anderson_mixing: float = 1.0,
    broyden_memory: int = 30,
) -> dict[str, Any]:
    """Weight-tied fixed point (``lipattn fixed-point``); raises NoConvergenceError on failure."""
    ...

Projection = Literal["none", "sphere", "layernorm"]
IntegratorName = Literal["rk4", "dopri", "dopri-fixed"]

def flow(
    layer: Union[AttentionLayer, RotaryLayer],
    x: ArrayLike,
    *,
    t: float = 15.0,
    projection: Projection = "sphere",
    integrator: IntegratorName = "rk4",
    dt: float = 0.1,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    h0: Optional[float] = None,
    record: float = 0.5,
    max_steps: int = 10_000_000,
    weights: Optional[ArrayLike] = None,
    layernorm_eps: float = 1e-5,
    cluster_threshold: float = 1e-2,
    gronwall: Union[float, ArrayLike, None] = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Attention flow (``lipattn flow``): times, states (len(times), n, d), clustering, gronwall;
    of measures for an AttentionLayer, of token matrices (dX/dt = f(X)) for a RotaryLayer."""
    ...
def mean_field(
    layer: AttentionLayer,
    ns: Sequence[int],
    *,
    reference: int = 1024,
    replicates: int = 4,
    seed: int = 0,
    t: float = 15.0,
    projection: Projection = "sphere",
    integrator: IntegratorName = "rk4",
    dt: float = 0.1,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    h0: Optional[float] = None,
    record: float = 0.5,
    max_steps: int = 10_000_000,
    layernorm_eps: float = 1e-5,
) -> dict[str, Any]: ...

def set_max_memory(limit: Union[int, str, None]) -> None: ...
def max_memory() -> Tuple[int, str]: ...
