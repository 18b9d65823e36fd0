"""Every public function and method of the package under boundary numeric values (#16 item 8).

The numeric parameters are read from the type stubs (every parameter annotated int or float,
alone, optional or in a sequence), so a new parameter is fuzzed without a line here, and a new
function or method without a base call in CALLS fails `test_every_public_callable_is_fuzzed`.
Each numeric parameter gets 0, -1, 1, 2, 2^31, 2^32, 2^53 + 1, 2^63, 2^64 - 1, 2^64, -2^63,
10^9 and +-2^200 (ints) or 0, -0, -1, 0.5, NaN, +-inf, +-1e308, 1e-308, 5e-324 (floats), a value of the
wrong type, and the values next to its limits, on top of a small valid call. Every call must
return (arrays finite, no NaN in a result dict) or raise a documented exception (docs/python.md:
ValueError and its FormatError and ModelError, TypeError, MemoryError, NumericalError,
NoConvergenceError): never Python's OverflowError (an int of any size is a ValueError naming
its parameter), pyo3's PanicException, a RuntimeError naming an
internal error, a crash or a call running past CASE_TIMEOUT.

The calls run in a child process (this file run as a script) under an address-space cap and a
512 MB budget; a crash or a hang there fails the case that caused it, and the child restarts
after it.
"""
import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_TIMEOUT = int(os.environ.get("LIPATTN_FUZZ_CASE_TIMEOUT", "30"))
CAP = 4 << 30

INTS = [0, -1, 1, 2, 2**31, 2**32, 2**53 + 1, 2**63, 2**64 - 1, 2**64, -(2**63), 10**9, 2**200, -(2**200), 1.5, "3"]
FLOATS = [0.0, -0.0, -1.0, 1.0, 0.5, math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-308, 5e-324,
          2.0**64, "0.5"]

# Values next to each parameter's limits, by parameter name (or "Callable.param").
LIMITS = {
    "c": [1.0, math.nextafter(1.0, 0.0), 1 - 1e-12, 1e-300, math.nextafter(1.0, 2.0)],
    "contract": [1.0, math.nextafter(1.0, 0.0), 1 - 1e-12, 1e-300],
    "anderson_mixing": [math.nextafter(1.0, 2.0), 1e-300],
    "beta": [math.nextafter(1.0, 2.0), 1e-300, 1e300],
    "p": [math.nextafter(1.0, 0.0), 2.0, 3.0],
    "tol": [1e-300, 1e-17, 1e300],
    "radius": [1e-300, 1e300],
    "h": [1, 2, 3],  # 2 heads
    "head": [1, 2, 3],
    "layer": [1, 2, 3],  # 2 layers; hidden_states accepts 2 (the final output)
    "heads": [3, 4, 8],  # with d = 4
    "n": [3, 4, 10**6],
    "d": [3, 10**6],
    "starts": [10**6 + 1],
    "random_starts": [10**6 + 1],
    "random_pairs": [10**6 + 1],
    "perturbed_pairs": [10**6 + 1],
    "local_steps": [10**6 + 1],
    "probes": [10**6 + 1],
    "replicates": [10**6 + 1],
    "max_tokens": [3, 4],  # BERT: its 2 special tokens plus 1 is the least
    "max_steps": [4, 5],  # t = 0.5, dt = 0.1
    "t": [10.0, 10.1],  # with max_steps = 100
    "dt": [1e-300, 1e-9],
    "record": [1e-300, 1e-9],
    "threshold": [2.0, 1e300],
    "cluster_threshold": [2.0, 1e300],
    "limit": ["0", "1", "64M", "16E", "1e30", "12Q", "", "nan"],
    "windows": [10**6],
}

WORDS = "the cat sat on the mat and the dog ran far away " * 4


def setup_context(model_dir):
    """The objects the base calls use: a tied L2 layer (4 wide, 2 heads), tokens, a measure, a
    model, and one instance of every result class."""
    import lipattn

    rng = np.random.default_rng(0)
    c = {}
    c["layer"] = lipattn.random_layer(4, 2, seed=1)
    c["dot"] = c["layer"].with_kernel("dot")
    c["x"] = lipattn.random_tokens(3, 4, seed=2)
    c["y"] = lipattn.random_tokens(3, 4, seed=3)
    c["mu"] = lipattn.Measure.uniform(c["x"])
    c["nu"] = lipattn.Measure.uniform(c["y"])
    c["a"] = rng.standard_normal((5, 2))
    c["b"] = rng.standard_normal((4, 2))
    c["model_dir"] = model_dir
    c["model"] = lipattn.Model(model_dir)
    c["lin"] = c["layer"].linearize(c["x"])
    c["local"] = c["layer"].local_constant(c["x"])
    c["transport"] = lipattn.transport(c["a"], c["b"])
    c["block"] = lipattn.InvertibleBlock(c["layer"], 3, 0.9)
    c["w"] = c["layer"].weights()
    # The tiny Llama written beside the BERT checkpoint (tests/python/tiny_llama.py).
    c["rotary"] = lipattn.Model(os.path.join(os.path.dirname(model_dir), "llama")).attention_layer(0)
    c["rx"] = rng.standard_normal((3, 8))
    return c


def sinkhorn(**kw):
    return {"method": "sinkhorn", "eps": 0.1, **kw}


# qualified name -> (the callable, from the context; its valid keyword arguments).
CALLS = {
    "transport": (lambda c: __import__("lipattn").transport, lambda c: {"a": c["a"], "b": c["b"]}),
    "ground_cost": (lambda c: __import__("lipattn").ground_cost, lambda c: {"a": c["a"], "b": c["b"]}),
    "layer_norm_radius": (lambda c: __import__("lipattn").layer_norm_radius,
                          lambda c: {"gamma": np.ones(4), "beta": np.zeros(4)}),
    "random_layer": (lambda c: __import__("lipattn").random_layer, lambda c: {"d": 4}),
    "random_tokens": (lambda c: __import__("lipattn").random_tokens, lambda c: {"n": 3, "d": 4}),
    "identity_layer": (lambda c: __import__("lipattn").identity_layer, lambda c: {"d": 3}),
    "sphere_sample": (lambda c: __import__("lipattn").sphere_sample, lambda c: {"n": 3, "d": 4}),
    "clustering": (lambda c: __import__("lipattn").clustering, lambda c: {"x": c["x"]}),
    "invert": (lambda c: __import__("lipattn").invert, lambda c: {"layer": c["layer"], "x": c["x"], "max_iter": 100}),
    "fixed_point": (lambda c: __import__("lipattn").fixed_point,
                    lambda c: {"layer": c["layer"], "x": c["x"], "contract": 0.5, "max_iter": 100}),
    "flow": (lambda c: __import__("lipattn").flow, lambda c: {"layer": c["layer"], "x": c["x"], "t": 0.5}),
    "mean_field": (lambda c: __import__("lipattn").mean_field,
                   lambda c: {"layer": __import__("lipattn").random_layer(3, 1), "ns": [4, 8], "reference": 16,
                              "replicates": 1, "t": 0.5}),
    "set_max_memory": (lambda c: __import__("lipattn").set_max_memory, lambda c: {"limit": "512M"}),
    "max_memory": (lambda c: __import__("lipattn").max_memory, lambda c: {}),
    "Measure.__init__": (lambda c: __import__("lipattn").Measure, lambda c: {"points": c["x"]}),
    "Measure.normalised": (lambda c: __import__("lipattn").Measure.normalised,
                           lambda c: {"points": c["x"], "weights": np.ones(3)}),
    "Measure.uniform": (lambda c: __import__("lipattn").Measure.uniform, lambda c: {"points": c["x"]}),
    "Measure.__len__": (lambda c: lambda: len(c["mu"]), lambda c: {}),
    "Measure.merge_duplicates": (lambda c: c["mu"].merge_duplicates, lambda c: {}),
    "LocalConstant.to_dict": (lambda c: c["local"].to_dict, lambda c: {}),
    "LocalConstant.__float__": (lambda c: lambda: float(c["local"]), lambda c: {}),
    "Linearization.jvp": (lambda c: c["lin"].jvp, lambda c: {"g": c["y"]}),
    "Linearization.vjp": (lambda c: c["lin"].vjp, lambda c: {"ybar": c["y"]}),
    "Linearization.top_singular": (lambda c: c["lin"].top_singular, lambda c: {}),
    "AttentionLayer.__init__": (lambda c: __import__("lipattn").AttentionLayer,
                                lambda c: {**c["w"], "heads": 2}),
    "AttentionLayer.from_model": (lambda c: __import__("lipattn").AttentionLayer.from_model,
                                  lambda c: {"path": c["model_dir"], "layer": 0}),
    "AttentionLayer.weights": (lambda c: c["layer"].weights, lambda c: {}),
    "AttentionLayer.head": (lambda c: c["layer"].head, lambda c: {"h": 0}),
    "AttentionLayer.with_kernel": (lambda c: c["layer"].with_kernel, lambda c: {"kernel": "dot"}),
    "AttentionLayer.forward": (lambda c: c["layer"].forward, lambda c: {"x": c["x"]}),
    "AttentionLayer.gamma": (lambda c: c["layer"].gamma, lambda c: {"queries": c["x"], "context": c["y"]}),
    "AttentionLayer.self_attention": (lambda c: c["layer"].self_attention, lambda c: {"mu": c["mu"]}),
    "AttentionLayer.cross_attention": (lambda c: c["layer"].cross_attention, lambda c: {"mu": c["mu"], "nu": c["nu"]}),
    "AttentionLayer.probabilities": (lambda c: c["layer"].probabilities, lambda c: {"h": 0, "queries": c["x"]}),
    "AttentionLayer.scores": (lambda c: c["layer"].scores, lambda c: {"h": 0, "queries": c["x"]}),
    "AttentionLayer.query_jacobian": (lambda c: c["layer"].query_jacobian, lambda c: {"x": c["x"][0], "mu": c["mu"]}),
    "AttentionLayer.linearize": (lambda c: c["layer"].linearize, lambda c: {"x": c["x"]}),
    "AttentionLayer.jvp": (lambda c: c["layer"].jvp, lambda c: {"x": c["x"], "g": c["y"]}),
    "AttentionLayer.vjp": (lambda c: c["layer"].vjp, lambda c: {"x": c["x"], "ybar": c["y"]}),
    "AttentionLayer.local_constant": (lambda c: c["layer"].local_constant, lambda c: {"x": c["x"]}),
    "AttentionLayer.certified_bounds": (lambda c: c["dot"].certified_bounds, lambda c: {"radius": 2.0, "n": 3}),
    "AttentionLayer.lipschitz": (lambda c: c["dot"].lipschitz,
                                 lambda c: {"radius": 2.0, "n": 3, "starts": 1, "steps": 2, "atoms": 3}),
    "AttentionLayer.ascent": (lambda c: c["dot"].ascent,
                              lambda c: {"n": 3, "radius": 2.0, "random_starts": 1, "steps": 2}),
    "AttentionLayer.adversarial_input": (lambda c: c["dot"].adversarial_input,
                                         lambda c: {"head": 0, "n": 3, "radius": 2.0}),
    "AttentionLayer.search_pairs": (lambda c: c["dot"].search_pairs,
                                    lambda c: {"radius": 2.0, "atoms": 3, "random_pairs": 2, "perturbed_pairs": 2,
                                               "local_steps": 5}),
    "AttentionLayer.head_constants": (lambda c: c["dot"].head_constants, lambda c: {}),
    "Transport.to_dict": (lambda c: c["transport"].to_dict, lambda c: {}),
    "RotaryLayer.forward": (lambda c: c["rotary"].forward, lambda c: {"x": c["rx"]}),
    "RotaryLayer.jvp": (lambda c: c["rotary"].jvp, lambda c: {"x": c["rx"], "g": c["rx"]}),
    "RotaryLayer.vjp": (lambda c: c["rotary"].vjp, lambda c: {"x": c["rx"], "ybar": c["rx"]}),
    "RotaryLayer.local_constant": (lambda c: c["rotary"].local_constant, lambda c: {"x": c["rx"]}),
    "RotaryLayer.certified_lipschitz": (lambda c: c["rotary"].certified_lipschitz,
                                        lambda c: {"radius": 2.0, "n": 3}),
    "RotaryLayer.lipschitz": (lambda c: c["rotary"].lipschitz,
                              lambda c: {"radius": 2.0, "n": 3, "starts": 1, "steps": 2}),
    "Model.__init__": (lambda c: __import__("lipattn").Model, lambda c: {"path": c["model_dir"]}),
    # No numeric parameter; a live model needs torch, which the capped child does not import, so
    # the base call checks the refusal of anything else.
    "Model.from_transformers": (lambda c: __import__("lipattn").Model.from_transformers,
                                lambda c: {"model": c["layer"]}),
    "Model.attention_layer": (lambda c: c["model"].attention_layer, lambda c: {"layer": 0}),
    "Model.tokenize": (lambda c: c["model"].tokenize, lambda c: {"text": WORDS}),
    "Model.hidden_states": (lambda c: c["model"].hidden_states, lambda c: {"text": WORDS, "layer": 1}),
    "Model.local_constant": (lambda c: c["model"].local_constant,
                             lambda c: {"layer": 0, "x": 0.1 * np.ones((3, c["model"].hidden_size))}),
    "Model.scope_local_constant": (lambda c: c["model"].scope_local_constant,
                                   lambda c: {"scope": "block", "layer": 0,
                                              "x": 0.1 * np.ones((3, c["model"].hidden_size))}),
    "Model.certify": (lambda c: c["model"].certify,
                      lambda c: {"layer": 0, "epsilon": 0.01, "x": 0.1 * np.ones((3, c["model"].hidden_size)),
                                 "upper_steps": 20, "attack_starts": 1, "attack_steps": 2, "intervals": "all"}),
    "Model.robustness": (lambda c: c["model"].robustness,
                         lambda c: {"x": 0.1 * np.arange(3 * c["model"].hidden_size).reshape(3, -1) / 10,
                                    "scope": "block", "layer": 0, "delta": 0.01, "upper_steps": 20,
                                    "interval_steps": 10, "intervals": "all", "attack_starts": 1,
                                    "attack_steps": 2}),
    "Model.lipschitz": (lambda c: c["model"].lipschitz,
                        lambda c: {"layer": 0, "radius": 1.0, "n": 3, "starts": 1, "steps": 1, "atoms": 3}),
    "Model.analyze": (lambda c: c["model"].analyze,
                      lambda c: {"text": WORDS, "ns": [4], "windows": 1, "layers": [0], "heads": False,
                                 "adversarial": False}),
    "Model.analysis_tasks": (lambda c: c["model"].analysis_tasks,
                             lambda c: {"ns": [4], "windows": 1, "layers": [0], "heads": False,
                                        "adversarial": False}),
    "Model.analysis_task": (lambda c: c["model"].analysis_task,
                            lambda c: {"layer": 0, "n": 4, "text": WORDS, "ns": [4], "windows": 1,
                                       "layers": [0], "heads": False, "adversarial": False}),
    "Model.analysis_layer_tasks": (lambda c: c["model"].analysis_layer_tasks,
                                   lambda c: {"layer": 0, "task_ns": [4], "text": WORDS, "ns": [4],
                                              "windows": 1, "layers": [0], "heads": False,
                                              "adversarial": False}),
    "Model.merge_analysis": (lambda c: c["model"].merge_analysis,
                             lambda c: {"results": [c["model"].analysis_task(
                                            0, 4, WORDS, ns=[4], windows=1, layers=[0], heads=False,
                                            adversarial=False)],
                                        "text": WORDS, "ns": [4], "windows": 1, "layers": [0],
                                        "heads": False, "adversarial": False}),
    "InvertibleBlock.__init__": (lambda c: __import__("lipattn").InvertibleBlock,
                                 lambda c: {"layer": c["layer"], "n": 3}),
    "InvertibleBlock.for_tokens": (lambda c: __import__("lipattn").InvertibleBlock.for_tokens,
                                   lambda c: {"layer": c["dot"], "x": c["x"]}),
    "InvertibleBlock.forward": (lambda c: c["block"].forward, lambda c: {"x": c["x"]}),
    "InvertibleBlock.residual": (lambda c: c["block"].residual, lambda c: {"x": c["x"], "y": c["y"]}),
    "InvertibleBlock.inverse": (lambda c: c["block"].inverse, lambda c: {"y": c["y"], "max_iter": 100}),
    "InvertibleBlock.logdet": (lambda c: c["block"].logdet, lambda c: {"x": c["x"]}),
}

# Parameters that only act with others: fuzzed where they act.
CONTEXT = {
    "transport.eps": sinkhorn(),
    "transport.tol": sinkhorn(),
    "transport.max_iter": sinkhorn(accept_unconverged=True),
    "invert.probes": {"logdet": True, "logdet_series": True},
    "invert.truncation_tol": {"logdet": True, "logdet_series": True},
    "invert.radius": {"layer": "dot"},
    "fixed_point.radius": {"layer": "dot"},
    "fixed_point.beta": {"variant": "damped"},
    "flow.h0": {"integrator": "dopri"},
    "flow.rtol": {"integrator": "dopri"},
    "flow.atol": {"integrator": "dopri"},
    "flow.layernorm_eps": {"projection": "layernorm"},
    "flow.t": {"max_steps": 100},
    "mean_field.t": {"max_steps": 100},
    "Model.hidden_states.ids": {"text": None},
    "InvertibleBlock.logdet.probes": {"method": "series"},
    "InvertibleBlock.logdet.truncation_tol": {"method": "series"},
    "InvertibleBlock.__init__.radius": {"layer": "dot"},
    "InvertibleBlock.for_tokens.radius": {"layer": "dot"},
}


def stub_callables():
    """{qualified name: [(parameter, kind)]} for every public function and method in the stubs;
    kind is "int", "float" or "ints" (a sequence of ints); None for other parameters."""
    import lipattn

    with open(os.path.join(os.path.dirname(lipattn.__file__), "_lipattn.pyi")) as f:
        tree = ast.parse(f.read())

    def params(fn):
        a = fn.args
        out = []
        for arg in a.posonlyargs + a.args + a.kwonlyargs:
            if arg.arg in ("self", "cls"):
                continue
            ann = ast.unparse(arg.annotation) if arg.annotation else ""
            if "Sequence[int]" in ann:
                kind = "ints"
            elif re.search(r"\bint\b", ann):
                kind = "int"
            elif re.search(r"\bfloat\b", ann):
                kind = "float"
            else:
                kind = None
            out.append((arg.arg, kind))
        return out

    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = params(node)
        elif isinstance(node, ast.ClassDef) and not node.name.endswith("Error"):
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                if any(ast.unparse(d) == "property" for d in item.decorator_list):
                    continue
                if item.name.startswith("_") and item.name not in ("__init__", "__len__", "__float__"):
                    continue
                # Overloads repeat a name with the same parameters.
                out.setdefault(f"{node.name}.{item.name}", params(item))
    return out


def cases():
    """(case name, qualified name, parameter, value) in a fixed order; parameter None is the
    base call itself."""
    out = []
    for name, params in sorted(stub_callables().items()):
        out.append((f"{name}()", name, None, None))
        for p, kind in params:
            if kind is None:
                continue
            extra = LIMITS.get(f"{name}.{p}", LIMITS.get(p, []))
            values = (INTS if kind in ("int", "ints") else FLOATS) + extra
            for v in values:
                if kind == "ints":
                    for seq in ([v], [4, v]):
                        out.append((f"{name}({p}={seq!r})", name, p, seq))
                else:
                    out.append((f"{name}({p}={v!r})", name, p, v))
    return out


class Timeout(BaseException):
    pass


def finite_result(r):
    """None if a result holds no NaN (and its arrays no inf), else where."""
    if isinstance(r, np.ndarray):
        if r.dtype.kind == "f" and not np.all(np.isfinite(r)):
            return "an array with non-finite values"
        return None
    if isinstance(r, float):
        return "NaN" if math.isnan(r) else None
    if isinstance(r, dict):
        for k, v in r.items():
            bad = finite_result(v)
            if bad:
                return f"[{k!r}]: {bad}"
    if isinstance(r, (list, tuple)):
        for i, v in enumerate(r):
            bad = finite_result(v)
            if bad:
                return f"[{i}]: {bad}"
    return None


def run_case(ctx, name, param, value):
    """(outcome, detail): outcome "ok", "raised" (a documented exception) or "bad"."""
    import lipattn

    lipattn.set_max_memory("512M")
    make, args = CALLS[name]
    kw = dict(args(ctx))
    if param is not None:
        for k, v in CONTEXT.get(f"{name}.{param}", {}).items():
            # "dot": the dot-product layer, for what acts only on dot-product layers.
            kw[k] = ctx["dot"] if v == "dot" else v
        kw[param] = value
    fn = make(ctx)
    signal.alarm(CASE_TIMEOUT)
    try:
        r = fn(**kw)
    except Timeout:
        return "bad", f"still running after {CASE_TIMEOUT} s"
    except (ValueError, TypeError, MemoryError, lipattn.NumericalError, lipattn.NoConvergenceError) as e:
        if not str(e).strip():
            return "bad", f"{type(e).__name__} without a message"
        return "raised", f"{type(e).__name__}: {str(e)[:200]}"
    except OverflowError as e:
        return "bad", f"OverflowError: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        return "bad", f"undocumented {type(e).__name__}: {str(e)[:300]}"
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        return "bad", f"{type(e).__name__} (not an Exception): {str(e)[:300]}"
    finally:
        signal.alarm(0)
    if isinstance(r, lipattn.LocalConstant):
        r = r.to_dict()
    bad = finite_result(r)
    return ("bad", f"returned {bad}") if bad else ("ok", "")


def worker(model_dir, start):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    def alarm(*_):
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)
    ctx = setup_context(model_dir)
    for i, (case, name, param, value) in enumerate(cases()):
        if i < start:
            continue
        print(json.dumps({"start": i}), flush=True)
        t0 = time.monotonic()
        outcome, detail = run_case(ctx, name, param, value)
        print(json.dumps({"case": i, "outcome": outcome, "detail": detail, "secs": time.monotonic() - t0}),
              flush=True)


def test_every_public_callable_is_fuzzed():
    import lipattn

    stubbed = stub_callables()
    assert set(stubbed) == set(CALLS), ("no base call:", set(stubbed) - set(CALLS), "gone:", set(CALLS) - set(stubbed))
    public = {n for n in lipattn.__all__ if not n.startswith("_") and not n.endswith("Error")}
    covered = {n.split(".")[0] for n in stubbed}
    assert public <= covered, public - covered
    numeric = sum(1 for ps in stubbed.values() for _, k in ps if k)
    assert numeric >= 80, f"only {numeric} numeric parameters found in the stubs: the annotations changed?"


def test_boundary_values_of_every_numeric_parameter(tmp_path):
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    import tiny_bert
    import tiny_llama

    model = tmp_path / "bert"
    model.mkdir()
    tiny_bert.write(model)
    (tmp_path / "llama").mkdir()
    tiny_llama.write(tmp_path / "llama")
    all_cases = cases()
    results, start, t0 = {}, 0, time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    while start < len(all_cases):
        # The child's whole run is bounded; a case that hangs without answering the alarm (or
        # crashes the interpreter) is the last one started.
        proc = subprocess.Popen([sys.executable, __file__, str(model), str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(timeout=CASE_TIMEOUT * 3 + 2 * len(all_cases[start:]))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err = "the child stopped answering (killed)\n" + err
        started = None
        for line in out.splitlines():
            rec = json.loads(line)
            if "start" in rec:
                started = rec["start"]
            else:
                results[rec["case"]] = rec
                started = None
        if started is None and proc.returncode == 0:
            break
        if started is None:
            raise AssertionError(f"the child failed before its first case (exit {proc.returncode}): {err[-2000:]}")
        results[started] = {"case": started, "outcome": "bad", "secs": 0,
                            "detail": f"the interpreter died (exit {proc.returncode}): {err[-800:]}"}
        start = started + 1
    wall = time.monotonic() - t0
    tally = {}
    for r in results.values():
        tally[r["outcome"]] = tally.get(r["outcome"], 0) + 1
    slow = sorted(((r["secs"], all_cases[i][0]) for i, r in results.items()), reverse=True)[:5]
    print(f"\nfuzz Python: {len(all_cases)} calls in {wall:.1f} s: {tally}; slowest {slow}")
    assert len(results) == len(all_cases), (len(results), len(all_cases))
    bad = [f"{all_cases[i][0]}: {r['detail']}" for i, r in sorted(results.items()) if r["outcome"] == "bad"]
    assert not bad, f"{len(bad)} of {len(all_cases)} calls failed:\n" + "\n".join(bad[:300])


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
