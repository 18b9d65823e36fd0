"""`lipattn forward`, `invert`, `fixed-point` and `flow` with `--model DIR --layer L` on the rotary
families: forward against transformers' own attention module (tiny_decoders.attention_output: eager, its
float32 steps in float64, positions 0..n-1, the module's mask), and the dynamics on a tiny llama and a
mistral (sliding window) checkpoint, whose JSON states the rotary settings and the causal mask, and whose
certificates are checked against the reconstruction; the token flow against RK4 in torch float64 on the
module itself, its Gronwall certificate against the separations transformers' own flows attain.
`fixed-point --space measure`, the flow's measure options and `reproduce --model` are refused naming
why."""
import json

import numpy as np
import pytest

from cli import run
from tiny_decoders import attention_map, attention_output, build, config, fastest_separation, rel, rk4_flow, save

TOL = 1e-10

FORWARD = [
    ("llama", {}, 0),
    ("llama", {"num_key_value_heads": 1, "attention_bias": True}, 1),
    ("mistral", {"sliding_window": 4}, 0),
    ("qwen3", {}, 1),
    ("gemma2", {}, 0),
    ("gemma2", {}, 1),
]

DYNAMICS = [("llama", {}, None), ("mistral", {"sliding_window": 4}, 4)]


def ok_json(res):
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("family,keys,layer", FORWARD, ids=[f"{c[0]}-{i}" for i, c in enumerate(FORWARD)])
def test_forward_equals_transformers_attention(lipattn_bin, tmp_path, family, keys, layer):
    save(build(config(family, **keys)), tmp_path)
    x = np.random.default_rng(layer).standard_normal((9, 32))
    np.save(tmp_path / "x.npy", x)
    res = run(lipattn_bin, "forward", "--model", tmp_path, "--layer", layer, "--tokens", tmp_path / "x.npy",
              "--out", tmp_path / "y.npy")
    assert res.returncode == 0, res.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float64 and y.shape == x.shape
    assert rel(y, attention_output(tmp_path, layer, x)) <= TOL


def test_forward_refuses_what_changes_the_rotary_map(lipattn_bin, tmp_path):
    save(build(config("llama")), tmp_path)
    np.save(tmp_path / "x.npy", np.ones((4, 32)))
    np.save(tmp_path / "w.npy", np.full(4, 0.25))
    for extra, what in [(["--weights", tmp_path / "w.npy"], "weights"), (["--kernel", "l2"], "kernel")]:
        res = run(lipattn_bin, "forward", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy",
                  "--out", tmp_path / "y.npy", *extra)
        assert res.returncode != 0 and what in res.stderr and "model_type 'llama'" in res.stderr, res.stderr
        assert "panicked" not in res.stderr


def check_rotary(out, family, window, layer):
    rot = out["operator"]["rotary"]
    assert rot["family"] == family and rot["positions"] == "0..n-1" and rot["window"] == window
    assert rot["heads"] == 4 and rot["kv_heads"] == 2 and rot["rope_type"] == "default"
    assert out["operator"]["mask"] == "causal" and not out["operator"]["overrides"]
    assert out["layer"]["family"] == family and out["layer"]["layer"] == layer
    assert out["layer"]["rotary"] == rot


@pytest.mark.parametrize("family,keys,window", DYNAMICS, ids=[c[0] for c in DYNAMICS])
def test_invert_on_rotary_checkpoint(lipattn_bin, tmp_path, family, keys, window):
    save(build(config(family, **keys)), tmp_path)
    x = np.random.default_rng(3).standard_normal((8, 32))
    np.save(tmp_path / "x.npy", x)
    out = ok_json(run(lipattn_bin, "invert", "--model", tmp_path, "--layer", 1, "--tokens", tmp_path / "x.npy",
                      "--save", tmp_path / "rec.npy", "--logdet", "--json"))
    check_rotary(out, family, window, 1)
    assert out["certified_lipschitz"] <= 0.9 and "b7-rotary" in out["certified_lipschitz_source"]
    assert out["domain"]["kind"] == "ball" and out["domain"]["radius"] >= np.linalg.norm(x, axis=1).max()
    assert out["norm"] == "frobenius" and out["dtype"] == "f64" and out["n"] == 8
    err = np.linalg.norm(np.load(tmp_path / "rec.npy") - x)
    assert err <= 1e-9 and abs(err - out["reconstruction_error"]) <= 1e-12
    assert out["reconstruction_error"] <= out["error_bound"]
    assert out["attained_local_lipschitz"] <= out["certified_lipschitz"]
    assert out["logdet"]["exact"]["sign"] == 1.0
    for s in out["solvers"]:
        assert s["status"] == "converged" and s["reconstruction_error"] <= s["error_bound"]


@pytest.mark.parametrize("family,keys,window", DYNAMICS, ids=[c[0] for c in DYNAMICS])
def test_fixed_point_on_rotary_checkpoint(lipattn_bin, tmp_path, family, keys, window):
    save(build(config(family, **keys)), tmp_path)
    out = ok_json(run(lipattn_bin, "fixed-point", "--model", tmp_path, "--layer", 0, "--n", 7, "--variant",
                      "injected", "--contract", 0.5, "--atol", 1e-12, "--save", tmp_path / "fp.npy", "--json"))
    check_rotary(out, family, window, 0)
    assert out["certified_contraction"] <= 0.5 and out["metric"] == "frobenius"
    assert "b7-rotary" in out["layer_certificate"]["source"]
    radius = out["operator"]["domain"]["radius"]
    assert np.linalg.norm(np.load(tmp_path / "fp.npy"), axis=1).max() <= radius
    for s in out["solvers"]:
        assert s["status"] == "converged" and s["residual"] <= 1e-12 and s["error_bound"] is not None
    picard = out["solvers"][0]
    assert picard["steps"] <= picard["a_priori_steps"]


@pytest.mark.parametrize("family,keys,window", DYNAMICS, ids=[c[0] for c in DYNAMICS])
def test_token_flow_equals_transformers_rk4(lipattn_bin, tmp_path, family, keys, window):
    """`flow --model` on a rotary checkpoint integrates dX/dt = f(X) with f transformers' attention
    module: the final tokens equal RK4 in torch float64 with the same step to 1e-10, and adaptive
    Dormand-Prince agrees with a finer one to 1e-8. The JSON states the token space, the Frobenius norm, the mask and
    the rotary settings."""
    save(build(config(family, **keys)), tmp_path)
    x = 0.7 * np.random.default_rng(5).standard_normal((6, 32))
    np.save(tmp_path / "x.npy", x)
    common = ["flow", "--model", tmp_path, "--layer", 1, "--tokens", tmp_path / "x.npy", "--project", "none",
              "--t", 0.5, "--record", 0.25]
    out = ok_json(run(lipattn_bin, *common, "--integrator", "rk4", "--dt", 0.01, "--gronwall", 1e-6,
                      "--save", tmp_path / "xt.npy", "--json"))
    check_rotary(out, family, window, 1)
    assert out["space"] == "tokens" and out["times"] == [0.0, 0.25, 0.5] and out["n"] == 6
    op = out["operator"]
    assert op["metric"] == "Frobenius norm" and op["n"] == 6 and "dX/dt = f(X)" in op["map"]
    g = out["gronwall"]
    assert g["space"] == "tokens" and g["metric"] == "frobenius" and not g["violated"]
    assert "b7-rotary" in g["lipschitz_source"] and op["domain"]["radius"] == g["radius"]
    assert g["radius"] >= np.linalg.norm(x, axis=1).max()
    assert all(b is None or m <= b for m, b in zip(g["measured"], g["bound"]))  # None: e^{Lt} overflowed
    assert g["measured_rate"] <= g["lipschitz"]
    f = attention_map(tmp_path, 1, 6)
    want = rk4_flow(f, x, 0.01, 50)[-1]
    assert rel(np.load(tmp_path / "xt.npy"), want) <= TOL
    # Adaptive Dormand-Prince against a five times finer torch RK4 (whose own error is ~1e-9 here;
    # RK4 with dt = 0.01 is ~3e-7 off).
    run(lipattn_bin, *common, "--integrator", "dopri", "--rtol", 1e-11, "--atol", 1e-13, "--save",
        tmp_path / "dp.npy", "--json")
    assert rel(np.load(tmp_path / "dp.npy"), rk4_flow(f, x, 0.002, 250)[-1]) <= 1e-8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_flow_gronwall_covers_transformers_separations(lipattn_bin, tmp_path, seed):
    """Theorem D6 against what transformers' own flows attain, on three seeds: the CLI's certified L
    (for tokens in the same ball) bounds the fastest initial separation rate of the module (the top
    eigenvalue of the symmetric part of its Jacobian), and two torch RK4 flows started along that
    direction, from large tokens where attention is sharp, stay within e^{L t} of their start; the
    CLI's own check (random perturbation of its seed) is not violated."""
    save(build(config("mistral", sliding_window=3)), tmp_path)
    rng = np.random.default_rng(seed)
    for scale in [0.5, 2.0]:
        x = scale * rng.standard_normal((5, 32))
        np.save(tmp_path / "x.npy", x)
        out = ok_json(run(lipattn_bin, "flow", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy",
                          "--project", "none", "--t", 0.3, "--dt", 0.01, "--record", 0.05, "--gronwall", 1e-5,
                          "--seed", seed, "--json"))
        g = out["gronwall"]
        assert not g["violated"] and g["measured_rate"] <= g["lipschitz"]
        f = attention_map(tmp_path, 0, 5)
        lam, v = fastest_separation(f, x)
        assert lam <= g["lipschitz"], (lam, g["lipschitz"])
        # Along v the separation first grows at rate lam (one short step: the attained rate the
        # bound must cover), then the two flows stay within e^{L t} of their start.
        d0, h = 1e-7, 1e-4
        first = [np.linalg.norm(p - q) for p, q in zip(rk4_flow(f, x, h, 1), rk4_flow(f, x + d0 * v, h, 1))]
        assert abs(np.log(first[1] / first[0]) / h - lam) <= 0.05 * abs(lam) + 0.05, (first, lam)
        a = rk4_flow(f, x, 0.01, 30)
        b = rk4_flow(f, x + d0 * v, 0.01, 30)
        sep = [np.linalg.norm(p - q) for p, q in zip(a, b)]
        with np.errstate(over="ignore"):
            for k, s_k in enumerate(sep):
                assert s_k <= np.exp(g["lipschitz"] * 0.01 * k) * sep[0] * (1 + 1e-9), (k, s_k)


def test_token_flow_refuses_what_belongs_to_measures(lipattn_bin, tmp_path):
    save(build(config("llama")), tmp_path)
    base = ["flow", "--model", tmp_path, "--layer", 0, "--n", 4, "--t", 0.2, "--json"]
    res = run(lipattn_bin, *base, "--mean-field", "4,8")
    assert res.returncode != 0 and "model_type 'llama'" in res.stderr and "--mean-field" in res.stderr, res.stderr
    assert "no map of measures" in res.stderr and "panicked" not in res.stderr
    res = run(lipattn_bin, *base, "--project", "layernorm", "--gronwall", 1e-3)
    assert res.returncode != 0 and "LayerNorm" in res.stderr and "panicked" not in res.stderr, res.stderr
    out = ok_json(run(lipattn_bin, *base, "--project", "sphere", "--gronwall", 1e-3))
    assert out["space"] == "tokens" and out["gronwall"]["radius"] == 1.0 and not out["gronwall"]["violated"]
    assert "m + b of Lemma D0" in out["gronwall"]["lipschitz_source"]


def test_measure_dynamics_and_reproduce_are_refused_naming_why(lipattn_bin, tmp_path):
    save(build(config("mistral", sliding_window=4)), tmp_path)
    for args in [["fixed-point", "--space", "measure"]]:
        res = run(lipattn_bin, *args, "--model", tmp_path, "--layer", 0, "--json")
        assert res.returncode != 0 and "model_type 'mistral'" in res.stderr, res.stderr
        assert "positions" in res.stderr and "invert" in res.stderr and "panicked" not in res.stderr
        assert "flow" in res.stderr
    res = run(lipattn_bin, "reproduce", "--model", tmp_path, "--quick", "--out", tmp_path / "fig")
    assert res.returncode != 0 and "model_type 'mistral'" in res.stderr and "B7" in res.stderr, res.stderr
