"""Bad input of every kind is a Python exception of the right class, never a panic or a crash.

pytest.raises(Exception) would not catch pyo3's PanicException (a BaseException): a panic
crossing the boundary fails these tests.
"""
import json
import os
import re

import lipattn
import numpy as np
import pytest

RNG = np.random.default_rng(0)
W = dict(wq=RNG.standard_normal((4, 3)), bq=np.zeros(4), wk=RNG.standard_normal((4, 3)), bk=np.zeros(4),
         wv=RNG.standard_normal((4, 3)), bv=np.zeros(4), wo=RNG.standard_normal((3, 4)), bo=np.zeros(3))
LAYER = lipattn.AttentionLayer(**W, heads=2)
X = RNG.standard_normal((5, 3))


def with_value(a, i, v):
    a = np.array(a, dtype=float)
    a.flat[i] = v
    return a


BAD_TOKENS = [
    (with_value(X, 4, np.nan), ValueError, "NaN"),
    (with_value(X, 0, np.inf), ValueError, "inf"),
    (with_value(X, 14, -np.inf), ValueError, "inf"),
    (np.zeros((0, 3)), ValueError, "empty"),
    (np.zeros((5, 4)), ValueError, "width"),
    (np.zeros(3), ValueError, "2-D"),
    (np.zeros((2, 3, 1)), ValueError, "2-D"),
    (X.astype(np.complex128), TypeError, "complex"),
    (X > 0, TypeError, "bool"),
    (np.array([["a", "b", "c"]]), TypeError, "U1"),
    (np.array([[object()] * 3]), TypeError, "O"),
    ([[1, 2], [3]], ValueError, ""),
    (None, TypeError, ""),
]


@pytest.mark.parametrize("x,exc,word", BAD_TOKENS)
def test_bad_tokens(x, exc, word):
    for call in [LAYER.forward, LAYER.linearize, LAYER.local_constant]:
        with pytest.raises(exc) as e:
            call(x)
        assert word.lower() in str(e.value).lower(), str(e.value)


@pytest.mark.parametrize(
    "w,word",
    [
        (np.array([0.5, 0.5, 0.5, -0.5, 0.0]), "positive"),
        (np.array([0.2, 0.2, 0.2, 0.2, np.nan]), "NaN"),
        (np.array([0.2, 0.2, 0.2, 0.2]), "shape"),
        (np.array([0.3, 0.3, 0.3, 0.3, 0.3]), "sum"),
        (np.ones((5, 1)) / 5, "1-D"),
    ],
)
def test_bad_weights(w, word):
    with pytest.raises(ValueError) as e:
        LAYER.forward(X, weights=w)
    assert word.lower() in str(e.value).lower(), str(e.value)
    with pytest.raises(ValueError):
        lipattn.Measure(X, w)


def test_bad_measures():
    with pytest.raises(ValueError, match="sum"):
        lipattn.Measure(X, np.full(5, 0.3))
    with pytest.raises(ValueError, match="positive"):
        lipattn.Measure.normalised(X, [1, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        lipattn.Measure(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="dimension 0"):
        lipattn.Measure(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="NaN"):
        lipattn.Measure(with_value(X, 2, np.nan))
    m = lipattn.Measure(X)
    with pytest.raises(ValueError):
        LAYER.self_attention(lipattn.Measure(np.zeros((2, 5))))
    with pytest.raises(TypeError):
        LAYER.self_attention(X)
    with pytest.raises(ValueError, match="already a Measure"):
        lipattn.transport(m, m, wa=np.full(5, 0.2))


@pytest.mark.parametrize(
    "change,exc",
    [
        (dict(wq=np.zeros((3, 3))), ValueError),
        (dict(wk=np.zeros((4, 2))), ValueError),
        (dict(bq=np.zeros(5)), ValueError),
        (dict(wo=np.zeros((3, 5))), ValueError),
        (dict(wv=with_value(W["wv"], 0, np.nan)), ValueError),
        (dict(bo=[0, 0, np.inf]), ValueError),
        (dict(wq=np.zeros((4, 0)), wk=np.zeros((4, 0)), wv=np.zeros((4, 0))), ValueError),
        (dict(wq=W["wq"].astype(complex)), TypeError),
        (dict(bq=np.zeros((4, 1))), ValueError),
    ],
)
def test_bad_layer_weights(change, exc):
    with pytest.raises(exc):
        lipattn.AttentionLayer(**{**W, **change}, heads=2)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="heads"):
        lipattn.AttentionLayer(**W, heads=0)
    with pytest.raises(ValueError, match="multiple"):
        lipattn.AttentionLayer(**W, heads=3)
    with pytest.raises(ValueError, match="kernel"):
        lipattn.AttentionLayer(**W, heads=2, kernel="cosine")
    with pytest.raises((OverflowError, TypeError, ValueError)):
        lipattn.AttentionLayer(**W, heads=-1)
    with pytest.raises(ValueError, match="out of range"):
        LAYER.head(2)
    with pytest.raises(ValueError, match="out of range"):
        LAYER.probabilities(5, X)
    lin = LAYER.linearize(X)
    with pytest.raises(ValueError, match="JVP tangent"):
        lin.jvp(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="VJP cotangent"):
        lin.vjp(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        lin.jvp(with_value(X, 0, np.nan))
    with pytest.raises(ValueError, match="method"):
        LAYER.local_constant(X, method="svd")
    with pytest.raises(ValueError, match="tolerance"):
        LAYER.local_constant(X, tol=-1)
    with pytest.raises(ValueError, match="tolerance"):
        LAYER.local_constant(X, tol=np.nan)
    with pytest.raises(ValueError, match="max_iter"):
        LAYER.local_constant(X, max_iter=0)
    with pytest.raises(ValueError, match="start vector"):
        lin.top_singular(start=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="causal mask"):
        LAYER.gamma(X, X[:3], causal=True)
    for radius in [0.0, -1.0, np.nan, np.inf]:
        with pytest.raises(ValueError, match="radius"):
            LAYER.certified_bounds(radius, 4)
        with pytest.raises(ValueError, match="radius"):
            LAYER.lipschitz(radius, 4)
        with pytest.raises(ValueError, match="radius"):
            LAYER.ascent(4, radius)
        with pytest.raises(ValueError, match="radius"):
            LAYER.search_pairs(radius)
    with pytest.raises(ValueError, match="n must be"):
        LAYER.certified_bounds(1.0, 0)
    with pytest.raises(ValueError, match="at least one"):
        LAYER.ascent(0, 1.0)
    with pytest.raises(ValueError, match="ascent start"):
        LAYER.ascent(4, 1.0, start=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="atom"):
        LAYER.search_pairs(1.0, atoms=0)
    with pytest.raises(ValueError, match="query point"):
        LAYER.query_jacobian(np.zeros(2), lipattn.Measure(X))


def test_bad_transport():
    a, b = RNG.standard_normal((4, 2)), RNG.standard_normal((3, 2))
    with pytest.raises(ValueError, match="p = 3"):
        lipattn.transport(a, b, p=3)
    with pytest.raises(ValueError, match="method"):
        lipattn.transport(a, b, method="greedy")
    with pytest.raises(ValueError, match="needs eps"):
        lipattn.transport(a, b, method="sinkhorn")
    with pytest.raises(ValueError, match="eps only"):
        lipattn.transport(a, b, eps=0.1)
    with pytest.raises(ValueError, match="dimension"):
        lipattn.transport(a, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="cost matrix"):
        lipattn.transport(a, b, cost=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        lipattn.transport(a, b, cost=with_value(np.zeros((4, 3)), 5, np.nan))
    with pytest.raises(ValueError, match="d = 1|convex|sorted"):
        lipattn.transport(a, b, method="sorted")
    with pytest.raises(ValueError, match="p >= 1"):
        lipattn.transport(a[:, 0], b[:, 0], method="sorted", p=0.5)
    with pytest.raises(ValueError):
        lipattn.transport(a, b, method="sinkhorn", eps=-1.0)
    with pytest.raises(ValueError):
        lipattn.transport(a, b, method="sinkhorn", eps=np.nan)
    with pytest.raises(ValueError, match="sum"):
        lipattn.transport(a, b, wa=[0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="ground cost exponent"):
        lipattn.ground_cost(a, b, 3)


def test_missing_and_malformed_models(tmp_path, minilm):
    with pytest.raises(FileNotFoundError, match="not found"):
        lipattn.AttentionLayer.from_model(tmp_path / "nowhere", 0)
    with pytest.raises(FileNotFoundError):
        lipattn.Model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        lipattn.Model(tmp_path)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(lipattn.FormatError, match="config.json"):
        lipattn.Model(tmp_path)
    cfg = json.load(open(os.path.join(minilm, "config.json")))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        lipattn.Model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(lipattn.FormatError):
        lipattn.Model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    os.remove(tmp_path / "model.safetensors")
    os.symlink(os.path.join(minilm, "model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(lipattn.ModelError, match="unsupported"):
        lipattn.Model(tmp_path)
    m = lipattn.Model(minilm)
    with pytest.raises(ValueError, match="out of range"):
        m.attention_layer(6)
    with pytest.raises(ValueError, match="out of range"):
        lipattn.AttentionLayer.from_model(minilm, 17)
    with pytest.raises(ValueError, match="out of range"):
        m.hidden_states("some text", layer=7)
    with pytest.raises(ValueError, match="empty"):
        m.hidden_states("   ", layer=1)
    with pytest.raises(ValueError, match="exactly one"):
        m.hidden_states()
    with pytest.raises(ValueError, match="max_tokens"):
        m.tokenize("hello", max_tokens=0)
    with pytest.raises(ValueError):
        m.hidden_states(ids=[10**9], layer=1)
    assert issubclass(lipattn.NumericalError, RuntimeError)
    assert issubclass(lipattn.ModelError, ValueError) and issubclass(lipattn.FormatError, ValueError)


def test_layer_norm_radius():
    r = lipattn.layer_norm_radius(np.ones(4), np.zeros(4))
    # sqrt(d) for unit gain, with the certified rounding margin on top.
    assert 2.0 <= r <= 2.0 * (1 + 1e-8)
    with pytest.raises(ValueError):
        lipattn.layer_norm_radius(np.ones(4), np.zeros(3))


def test_oversized_requests_raise_memory_error():
    """Beyond the memory budget: MemoryError naming the sizes, before allocating (#16); never a
    PanicException or an abort of the interpreter."""
    with pytest.raises(MemoryError, match="budget"):
        lipattn.random_tokens(10**8, 384)
    with pytest.raises(MemoryError, match="budget"):
        lipattn.sphere_sample(10**8, 384)
    with pytest.raises(MemoryError, match="width d = 100000"):
        lipattn.random_layer(10**5, 2)
    lipattn.set_max_memory("64M")
    try:
        assert lipattn.max_memory()[0] == 64 << 20
        layer = lipattn.random_layer(16, 2)
        x = lipattn.random_tokens(3000, 16)
        with pytest.raises(MemoryError, match="score matrices"):
            layer.forward(x)
        layer.forward(x[:100])
    finally:
        lipattn.set_max_memory(None)
    assert lipattn.max_memory()[1] != "set by --max-memory / set_max_memory"
    for bad in ["12Q", "-1G", 0, -5, 2**200]:
        with pytest.raises(ValueError):
            lipattn.set_max_memory(bad)


def test_memory_the_system_refuses_is_a_memory_error():
    """Within a budget set above what the process may map (a 2 GiB address space): the request's
    memory is reserved before the work, so the refusal is MemoryError and the interpreter lives
    on; before, the failed allocation aborted it."""
    import subprocess
    import sys

    code = """
import resource, lipattn
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
lipattn.set_max_memory("1T")
layer = lipattn.random_layer(16, 2)
x = lipattn.random_tokens(20000, 16)
try:
    layer.forward(x)
except MemoryError as e:
    print("MemoryError:", e)
layer.forward(x[:100])
print("alive")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "which the system refused to allocate now" in res.stdout, res.stdout
    assert res.stdout.strip().endswith("alive"), res.stdout


# --- Negative integers -------------------------------------------------------------------------
# Every parameter the stub types as an integer (or a sequence of them), found by reading the stub,
# so that a new one without a case below fails test_every_integer_parameter_has_a_case.

STUB = os.path.join(os.path.dirname(lipattn.__file__), "_lipattn.pyi")


def integer_parameters():
    """(qualified name, parameter) for each stubbed callable parameter whose type mentions int."""
    import ast

    found = set()

    def walk(nodes, prefix):
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                walk(node.body, node.name + ".")
            elif isinstance(node, ast.FunctionDef):
                a = node.args
                for p in a.posonlyargs + a.args + a.kwonlyargs:
                    if p.annotation is not None and "int" in ast.unparse(p.annotation):
                        found.add((prefix + node.name, p.arg))

    with open(STUB) as f:
        walk(ast.parse(f.read()).body, "")
    return sorted(found)


L2 = lipattn.random_layer(4, kernel="l2")
X4 = lipattn.random_tokens(4, 4)
BLOCK = lipattn.InvertibleBlock(L2, 4)
_ROTARY = []


def rotary():
    """A RotaryLayer of a tiny Llama written with NumPy (tests/python/tiny_llama.py), built once."""
    if not _ROTARY:
        import pathlib
        import tempfile

        import tiny_llama

        d = pathlib.Path(tempfile.mkdtemp(prefix="lipattn-llama-"))
        tiny_llama.write(d)
        _ROTARY.append(lipattn.Model(d).attention_layer(0))
    return _ROTARY[0]


# A valid call of each callable: (function, keyword arguments). The integer parameter under test
# replaces its keyword; a negative value must be refused before anything runs, so the model path
# of `from_model` need not exist.
CALLS = {
    "AttentionLayer.__init__": lambda m: (lipattn.AttentionLayer, dict(W, heads=2)),
    "AttentionLayer.from_model": lambda m: (lipattn.AttentionLayer.from_model, dict(path="/no/model", layer=0)),
    "AttentionLayer.head": lambda m: (LAYER.head, dict(h=0)),
    "AttentionLayer.probabilities": lambda m: (LAYER.probabilities, dict(h=0, queries=X)),
    "AttentionLayer.scores": lambda m: (LAYER.scores, dict(h=0, queries=X)),
    "AttentionLayer.local_constant": lambda m: (LAYER.local_constant, dict(x=X)),
    "AttentionLayer.certified_bounds": lambda m: (LAYER.certified_bounds, dict(radius=1.0, n=4)),
    "AttentionLayer.lipschitz": lambda m: (LAYER.lipschitz, dict(radius=1.0, n=4)),
    "AttentionLayer.ascent": lambda m: (LAYER.ascent, dict(n=4, radius=1.0)),
    "AttentionLayer.adversarial_input": lambda m: (LAYER.adversarial_input, dict(head=0, n=4, radius=1.0)),
    "AttentionLayer.search_pairs": lambda m: (LAYER.search_pairs, dict(radius=1.0)),
    "Linearization.top_singular": lambda m: (LAYER.linearize(X).top_singular, {}),
    "transport": lambda m: (lipattn.transport, dict(a=X, b=X)),
    "ground_cost": lambda m: (lipattn.ground_cost, dict(a=X, b=X)),
    "set_max_memory": lambda m: (lipattn.set_max_memory, {}),
    "Model.attention_layer": lambda m: (m().attention_layer, dict(layer=0)),
    "Model.tokenize": lambda m: (m().tokenize, dict(text="a")),
    "Model.hidden_states": lambda m: (m().hidden_states, dict(text="a", layer=0)),
    "Model.analyze": lambda m: (m().analyze, {}),
    "Model.analysis_tasks": lambda m: (m().analysis_tasks, dict(ns=[8], windows=1, layers=[0])),
    "Model.analysis_task": lambda m: (m().analysis_task, dict(layer=0, n=8, ns=[8], windows=1, layers=[0])),
    "Model.analysis_layer_tasks": lambda m: (m().analysis_layer_tasks,
                                             dict(layer=0, task_ns=[8], ns=[8], windows=1, layers=[0])),
    "Model.merge_analysis": lambda m: (m().merge_analysis, dict(results=[], ns=[8], windows=1, layers=[0])),
    "Model.local_constant": lambda m: (m().local_constant, dict(layer=0, x=np.zeros((4, 384)))),
    "Model.lipschitz": lambda m: (m().lipschitz, dict(layer=0, radius=1.0, n=4)),
    "Model.scope_local_constant": lambda m: (m().scope_local_constant,
                                             dict(scope="block", layer=0, x=np.zeros((4, 384)))),
    "Model.certify": lambda m: (m().certify, dict(layer=0, epsilon=0.01, x=np.zeros((4, 384)), upper_steps=20,
                                                  attack_starts=1, attack_steps=2, intervals="all")),
    "Model.robustness": lambda m: (m().robustness, dict(x=np.zeros((4, 384)), scope="block", layer=0, delta=0.01,
                                                        upper_steps=20, interval_steps=10, intervals="all",
                                                        attack_starts=1, attack_steps=2)),
    "InvertibleBlock.__init__": lambda m: (lipattn.InvertibleBlock, dict(layer=L2, n=4)),
    "InvertibleBlock.inverse": lambda m: (BLOCK.inverse, dict(y=X4)),
    "InvertibleBlock.logdet": lambda m: (BLOCK.logdet, dict(x=X4)),
    "random_layer": lambda m: (lipattn.random_layer, dict(d=4)),
    "random_tokens": lambda m: (lipattn.random_tokens, dict(n=4, d=4)),
    "identity_layer": lambda m: (lipattn.identity_layer, dict(d=4)),
    "sphere_sample": lambda m: (lipattn.sphere_sample, dict(n=4, d=4)),
    "invert": lambda m: (lipattn.invert, dict(layer=L2, x=X4)),
    "fixed_point": lambda m: (lipattn.fixed_point, dict(layer=L2, x=X4)),
    "flow": lambda m: (lipattn.flow, dict(layer=L2, x=X4)),
    "RotaryLayer.local_constant": lambda m: (rotary().local_constant, dict(x=np.ones((4, 8)))),
    "RotaryLayer.certified_lipschitz": lambda m: (rotary().certified_lipschitz, dict(radius=1.0, n=4)),
    "RotaryLayer.lipschitz": lambda m: (rotary().lipschitz, dict(radius=1.0, n=4)),
    "mean_field": lambda m: (lipattn.mean_field, dict(layer=L2, ns=[4, 8])),
}

SEQUENCES = {"ids", "ns", "layers", "task_ns"}


def test_every_integer_parameter_has_a_case():
    assert {name for name, _ in integer_parameters()} == set(CALLS)


@pytest.mark.parametrize("name,param", integer_parameters())
def test_negative_integers_are_value_errors_naming_the_parameter(name, param, request):
    model = lambda: lipattn.Model(request.getfixturevalue("minilm"))  # noqa: E731
    fn, kwargs = CALLS[name](model)
    # A sequence is checked entry by entry; its message names the entry.
    value, named = ([1, -1], f"{param}[1]") if param in SEQUENCES else (-1, param)
    # The name as a whole word (`n`, not the n of `must`), then the value.
    with pytest.raises(ValueError, match=rf"(?<![\w\[]){re.escape(named)}(?![\w\[]).*-1"):
        fn(**{**kwargs, param: value})
    lipattn.set_max_memory(None)


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name,param", integer_parameters())
def test_integers_wider_than_128_bits_are_value_errors_naming_the_parameter(
    name, param, sign, request
):
    """Python's int has no bound: 2^200 is refused naming the parameter, not with OverflowError."""
    model = lambda: lipattn.Model(request.getfixturevalue("minilm"))  # noqa: E731
    fn, kwargs = CALLS[name](model)
    big = sign * 2**200
    value, named = ([1, big], f"{param}[1]") if param in SEQUENCES else (big, param)
    why = "nonnegative" if sign < 0 else "too large: an integer of 201 bits"
    with pytest.raises(ValueError, match=rf"(?<![\w\[]){re.escape(named)}(?![\w\[]).*{why}"):
        fn(**{**kwargs, param: value})
    lipattn.set_max_memory(None)


def test_float_arguments_are_echoed_compactly():
    """The library's check and number style, not a 301-digit decimal."""
    with pytest.raises(ValueError, match=r"scale must be positive and finite, got -1e300$"):
        lipattn.random_tokens(4, 4, scale=-1e300)
