"""`lipattn forward`, `invert` and `fixed-point` with `--model DIR --layer L` on the rotary families:
forward against transformers' own attention module (tiny_decoders.attention_output: eager, its float32
steps in float64, positions 0..n-1, the module's mask), and the dynamics on a tiny llama and a mistral
(sliding window) checkpoint, whose JSON states the rotary settings and the causal mask, and whose
certificates are checked against the reconstruction. `flow`, `fixed-point --space measure` and
`reproduce --model` are refused naming why."""
import json

import numpy as np
import pytest

from cli import run
from tiny_decoders import attention_output, build, config, rel, save

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


def test_measure_dynamics_and_reproduce_are_refused_naming_why(lipattn_bin, tmp_path):
    save(build(config("mistral", sliding_window=4)), tmp_path)
    for args in [["fixed-point", "--space", "measure"], ["flow", "--t", 1]]:
        res = run(lipattn_bin, *args, "--model", tmp_path, "--layer", 0, "--json")
        assert res.returncode != 0 and "model_type 'mistral'" in res.stderr, res.stderr
        assert "positions" in res.stderr and "invert" in res.stderr and "panicked" not in res.stderr
    res = run(lipattn_bin, "reproduce", "--model", tmp_path, "--quick", "--out", tmp_path / "fig")
    assert res.returncode != 0 and "model_type 'mistral'" in res.stderr and "B7" in res.stderr, res.stderr
