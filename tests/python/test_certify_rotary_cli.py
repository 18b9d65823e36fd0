"""`lipattn certify` on rotary checkpoints (docs/bounds.md#lemma-s-rotary) against transformers' own
attention modules in float64 (tiny_decoders: eager, its float32 steps in float64, positions 0..n-1,
the module's causal or sliding-window mask): the dense Jacobian's top singular value at the centre, at
the point the ascent reports and at random points of the ball must lie below the certified bound, and
the module's output may move no more than the certified output change. Grouped and multi-query heads,
biases, windows, YaRN's attention factor and Gemma's unit-offset norms are covered; query/key norms and
logit soft-capping are refused naming the config key."""
import json

import numpy as np
import pytest

from cli import run
from test_certify_cli import in_ball
from tiny_decoders import attention_output, attention_top_singular, build, config, save

CASES = [
    ("llama", {"num_key_value_heads": 1, "attention_bias": True}),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                   "beta_fast": 8.0, "beta_slow": 1.0, "rope_theta": 10000.0}}),
    ("mistral", {"sliding_window": 3}),
    ("qwen2", {}),
    ("gemma", {}),
    ("gemma2", {"attn_logit_softcapping": None}),
]


def certify(lipattn_bin, *args):
    out = run(lipattn_bin, "certify", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("family,keys", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rotary_certificate_bounds_transformers(lipattn_bin, tmp_path, family, keys):
    save(build(config(family, **keys)), tmp_path)
    rng = np.random.default_rng(7)
    x = 0.7 * rng.standard_normal((6, 32))
    np.save(tmp_path / "x.npy", x)
    fx = attention_output(tmp_path, 1, x)
    for ball, eps in [("frobenius", 0.02), ("tokens", 0.004)]:
        r = certify(lipattn_bin, "--model", tmp_path, "--layer", 1, "--tokens", tmp_path / "x.npy", "--epsilon", eps,
                    "--ball", ball, "--attack-starts", 2, "--attack-steps", 10, "--save-attained", tmp_path / "y.npy")
        assert r["family"] == family and r["scope"] == "attention" and r["n"] == 6 and r["layer"] == 1
        assert r["certified_kind"] == "probabilistic" and r["norm"] == "frobenius" and r["dtype"] == "f64"
        centre, _ = attention_top_singular(tmp_path, 1, x)
        assert abs(r["centre_attained"] - centre) <= 1e-6 * centre
        assert centre <= r["centre"]["value"]
        y = np.load(tmp_path / "y.npy")
        dist = np.linalg.norm(y - x) if ball == "frobenius" else np.linalg.norm(y - x, axis=1).max()
        assert dist <= eps * (1 + 1e-9)
        at_y, _ = attention_top_singular(tmp_path, 1, y)
        assert abs(at_y - r["attained"]) <= 1e-6 * at_y
        for p in [y] + [in_ball(rng, x, ball, eps) for _ in range(2)]:
            assert attention_top_singular(tmp_path, 1, p)[0] <= r["certified"]
            moved = np.linalg.norm(attention_output(tmp_path, 1, p) - fx)
            assert moved <= r["output_change"], (moved, r["output_change"])
        rho = r["frobenius_radius"]
        u, h = r["centre"]["value"], r["slope"]["value"]
        assert r["certified"] == pytest.approx(u + rho * h, rel=1e-12)
        assert r["output_change"] == pytest.approx(rho * u + h * rho * rho / 2, rel=1e-12)
        assert len(r["slope"]["heads"]) == 4


@pytest.mark.parametrize("family,keys,words", [
    ("qwen3", {}, "q_norm"),
    ("gemma2", {}, "attn_logit_softcapping"),
])
def test_what_lemma_s_does_not_cover_is_refused(lipattn_bin, tmp_path, family, keys, words):
    save(build(config(family, **keys)), tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 32)))
    out = run(lipattn_bin, "certify", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy",
              "--epsilon", 0.01)
    assert out.returncode == 2 and words in out.stderr and "panicked" not in out.stderr, out.stderr
