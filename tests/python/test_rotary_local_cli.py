"""`lipattn local --model` on the rotary families: sigma against the largest singular value of the
Jacobian of transformers' own attention module (eager, its float32 rope, RMS norm and softmax
steps in float64: `tiny_decoders.float64_reference`), by torch.autograd.functional.jacobian."""
import json

import numpy as np
import pytest

from cli import run
from tiny_decoders import attention_top_singular, build, config, save

TOL = 1e-8

# (family, config keys, layer, head, n): every family, each rotary variant the sublayer has.
CASES = [
    ("llama", {}, 0, None, 9),
    ("llama", {"num_key_value_heads": 1, "attention_bias": True}, 1, 2, 9),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4,
                                   "beta_fast": 8.0, "beta_slow": 1.0, "rope_theta": 10000.0}}, 0, None, 9),
    ("llama", {"max_position_embeddings": 6, "rope_parameters": {"rope_type": "dynamic", "factor": 3.0,
                                                                  "rope_theta": 10000.0}}, 0, None, 9),
    ("mistral", {"sliding_window": 4}, 0, None, 9),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}, 1, None, 9),
    ("qwen3", {}, 0, 1, 9),
    ("gemma", {}, 0, None, 9),
    ("gemma2", {}, 0, None, 9),
    ("gemma2", {}, 1, 3, 9),
]


def local(lipattn_bin, path, layer, x, head, *extra):
    np.save(path / "x.npy", x)
    args = ["local", "--model", path, "--layer", layer, "--tokens", path / "x.npy", "--json", "--tol", "1e-12",
            *extra]
    if head is not None:
        args += ["--head", head]
    out = run(lipattn_bin, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("family,keys,layer,head,n", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_local_equals_transformers_jacobian(lipattn_bin, tmp_path, family, keys, layer, head, n):
    save(build(config(family, **keys)), tmp_path)
    x = np.random.default_rng(layer + n).standard_normal((n, 32))
    r = local(lipattn_bin, tmp_path, layer, x, head)
    exact, window = attention_top_singular(tmp_path, layer, x, head)
    assert abs(r["sigma"] - exact) <= TOL * exact, (r["sigma"], exact)
    assert r["kind"] == "attained_lower_bound" and r["norm"] == "frobenius" and r["dtype"] == "f64"
    assert r["n"] == n and r["head"] == head and r["causal"] and r["layer"] == layer
    rot = r["operator"]["rotary"]
    assert rot["family"] == family and rot["positions"] == "0..n-1"
    assert rot["window"] == window
    cfg = config(family, **keys)
    assert rot["heads"] == cfg.num_attention_heads and rot["kv_heads"] == cfg.num_key_value_heads
    assert rot["qk_norm"] == (family == "qwen3")
    assert rot["softcap"] == (3.0 if family == "gemma2" else None)
    rope = (keys.get("rope_parameters") or {}).get("rope_type", "default")
    assert rot["rope_type"] == rope and rot["rope_theta"] == 10000.0
    assert family in r["operator"]["description"]
    print(f"{family} layer {layer} head {head}: sigma {r['sigma']:.12e}, rel err {abs(r['sigma'] - exact) / exact:.1e}")


def test_power_iteration_and_saved_vector(lipattn_bin, tmp_path):
    save(build(config("qwen3")), tmp_path)
    x = np.random.default_rng(3).standard_normal((7, 32))
    lanczos = local(lipattn_bin, tmp_path, 0, x, None, "--save-vector", tmp_path / "v.npy")
    v = np.load(tmp_path / "v.npy")
    assert v.shape == x.shape and abs(np.linalg.norm(v) - 1) < 1e-12
    power = local(lipattn_bin, tmp_path, 0, x, None, "--method", "power")
    exact, _ = attention_top_singular(tmp_path, 0, x)
    assert power["sigma"] <= exact * (1 + 1e-12) and lanczos["sigma"] <= exact * (1 + 1e-12)
    assert (exact - power["sigma"]) / exact < 1e-3


def test_rotary_local_errors(lipattn_bin, tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    rng = np.random.default_rng(0)
    bad = rng.standard_normal((5, 32))
    bad[1, 3] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "narrow.npy", rng.standard_normal((5, 10)))
    np.save(tmp_path / "x.npy", rng.standard_normal((5, 32)))
    base = ["local", "--model", tmp_path, "--tokens"]
    cases = [
        (base + [tmp_path / "inf.npy", "--layer", 0], "inf"),
        (base + [tmp_path / "narrow.npy", "--layer", 0], "32"),
        (base + [tmp_path / "x.npy", "--layer", 0, "--head", 4], "head"),
        (base + [tmp_path / "x.npy", "--layer", 1], "layer"),
    ]
    for args, needle in cases:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "panicked" not in out.stderr, out.stderr
        assert needle in out.stderr, (needle, out.stderr)


def test_f32_lanczos_refined_in_f64_agrees_with_f64(lipattn_bin, tmp_path):
    save(build(config("llama", num_key_value_heads=2)), tmp_path)
    x = np.random.default_rng(5).standard_normal((9, 32))
    exact, _ = attention_top_singular(tmp_path, 0, x)
    np.save(tmp_path / "x.npy", x)

    def at_1e6(dtype):
        out = run(lipattn_bin, "local", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy",
                  "--json", "--dtype", dtype)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    f64, f32 = at_1e6("f64"), at_1e6("f32")
    assert f64["dtype"] == "f64" and f32["dtype"] == "f32"
    assert f32["converged"] and f32["rel_error"] <= 1e-6 and f32["rel_error_is"] == "estimate"
    for r in (f32, f64):
        assert abs(r["sigma"] - exact) <= 1e-6 * exact, (r["dtype"], r["sigma"], exact)
    assert abs(f32["sigma"] - f64["sigma"]) <= 1e-6 * f64["sigma"]
    # At 1e-12, below f32's resolution, the refinement continues in f64 and still meets it.
    tight = local(lipattn_bin, tmp_path, 0, x, None, "--dtype", "f32")
    assert tight["converged"] and tight["dtype"] == "f32"
    assert abs(tight["sigma"] - exact) <= TOL * exact, (tight["sigma"], exact)


def test_bad_dtype(lipattn_bin, tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((5, 32)))
    base = ["local", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy"]
    for extra, needles in [
        (["--dtype", "f16"], ["f16", "--dtype", "f64", "f32"]),
        (["--dtype", "f32", "--method", "power"], ["--dtype 'f32' needs --method 'lanczos'"]),
    ]:
        out = run(lipattn_bin, *base, *extra)
        assert out.returncode != 0, extra
        assert "panicked" not in out.stderr, out.stderr
        for needle in needles:
            assert needle in out.stderr, (needle, out.stderr)
