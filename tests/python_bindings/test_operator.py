"""Every certifying entry point of the Python package certifies the operator the model computes,
mask included, unless asked for another, and names it: on a tiny GPT-2 checkpoint, whose layers are
causal, `certified_bounds` is at least every local constant attained in its ball (the unmasked
default once returned less than the masked map attains), and `causal=False` is named as an override."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import tiny_gpt2  # noqa: E402

import lipattn  # noqa: E402


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    t = tiny_gpt2.write(d)
    return lipattn.AttentionLayer.from_model(d, 0), tiny_gpt2.ln_radius(t)


def in_ball(rng, n, d, radius):
    x = rng.standard_normal((n, d))
    return x * (radius * rng.uniform(0.5, 1.0, (n, 1)) / np.linalg.norm(x, axis=1, keepdims=True))


def test_certified_bounds_default_to_the_models_mask(gpt2):
    layer, radius = gpt2
    assert layer.causal
    rng = np.random.default_rng(0)
    for n in (2, 8, 16):
        c = layer.certified_bounds(radius, n)
        op = c["operator"]
        assert (op["mask"], op["model_mask"], op["n"], op["radius"], op["overrides"]) == ("causal", "causal", n, radius, [])
        assert "GPT-2 layer 0" in op["description"] and "causal mask" in op["description"]
        assert c["domain"]["causal"] is True
        cert = c["certified"]["frobenius"]
        starts = [in_ball(rng, n, layer.d_in, radius) for _ in range(6)]
        for x in starts:
            lc = layer.local_constant(x, tol=1e-10)
            assert lc.causal and lc.to_dict()["operator"]["mask"] == "causal"
            assert lc.sigma <= cert, (n, lc.sigma, cert)
        climbed = layer.ascent(n, radius, random_starts=1, steps=4)
        assert climbed["causal"] is True and climbed["operator"]["mask"] == "causal"
        assert climbed["sigma"] <= cert


def test_explicit_unmasked_request_is_named(gpt2):
    layer, radius = gpt2
    c = layer.certified_bounds(radius, 8, causal=False)
    op = c["operator"]
    assert (op["mask"], op["model_mask"]) == ("none", "causal")
    assert "not the model's causal one" in op["description"] and op["overrides"]
    assert c["domain"]["causal"] is False and c["certified"]["w1"] is not None
    # The unmasked certificate holds for the unmasked map it names.
    x = in_ball(np.random.default_rng(1), 8, layer.d_in, radius)
    assert layer.local_constant(x, causal=False).sigma <= c["certified"]["frobenius"]
    lc = layer.local_constant(x, causal=False).to_dict()["operator"]
    assert lc["mask"] == "none" and lc["overrides"]


def test_lipschitz_certifies_the_masked_map(gpt2):
    layer, radius = gpt2
    r = layer.lipschitz(radius, 6, starts=1, steps=3)
    assert r["operator"]["mask"] == "causal" and r["domain"]["causal"] is True
    assert r["certified"]["frobenius"] >= r["attained"]["frobenius"] > 0
    assert r["attained"]["w1"] is None and "w1_mu" not in r["inputs"]
    head = layer.head(1).certified_bounds(radius, 6)["operator"]
    assert "head 1" in head["layer"] and head["mask"] == "causal"
    l2 = layer.with_kernel("l2").certified_bounds(radius, 6)["operator"]
    assert "kernel explicitly overridden" in l2["description"]
