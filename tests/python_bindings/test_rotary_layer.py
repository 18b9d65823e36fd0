"""lipattn.RotaryLayer (Model.attention_layer on a rotary checkpoint): forward, JVP and VJP against
transformers' own attention module and torch.func in float64 (tiny_decoders: eager, its float32 steps
in float64, positions 0..n-1, the module's mask) to 1e-10; the local constant, B7 and lipschitz equal to
the Model calls; lipattn.flow integrating its token flow as torch RK4 does; and the refusals."""
import numpy as np
import pytest
import torch

import lipattn
from tiny_decoders import TOL, attention_map, attention_output, build, config, rel, rk4_flow, save

CASES = [
    ("llama", {}, 0),
    ("llama", {"num_key_value_heads": 1, "attention_bias": True}, 1),
    ("mistral", {"sliding_window": 4}, 0),
    ("qwen3", {}, 1),
    ("gemma2", {}, 0),
]


@pytest.mark.parametrize("family,keys,layer", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rotary_layer_equals_transformers(tmp_path, family, keys, layer):
    save(build(config(family, **keys)), tmp_path)
    rl = lipattn.Model(tmp_path).attention_layer(layer)
    assert isinstance(rl, lipattn.RotaryLayer) and rl.family == family and rl.causal
    assert rl.d_in == rl.d_out == 32 and rl.rotary["family"] == family and rl.rotary["window"] == rl.window
    rng = np.random.default_rng(layer + 3)
    x, g, ybar = (rng.standard_normal((7, 32)) for _ in range(3))
    assert rel(rl.forward(x), attention_output(tmp_path, layer, x)) <= TOL
    f = attention_map(tmp_path, layer, 7)
    xt = torch.tensor(x)
    _, jvp = torch.func.jvp(f, (xt,), (torch.tensor(g),))
    _, pull = torch.func.vjp(f, xt)
    assert rel(rl.jvp(x, g), jvp.detach().numpy()) <= TOL
    assert rel(rl.vjp(x, ybar), pull(torch.tensor(ybar))[0].detach().numpy()) <= TOL
    # Torch tensors go in as NumPy arrays do.
    assert rel(rl.forward(xt), rl.forward(x)) == 0.0


def test_rotary_layer_constants_are_the_model_calls(tmp_path):
    save(build(config("mistral", sliding_window=3)), tmp_path)
    model = lipattn.Model(tmp_path)
    x = np.random.default_rng(0).standard_normal((6, 32))
    for head in [None, 1]:
        rl = model.attention_layer(0, head=head)
        assert rl.head == head
        got = rl.local_constant(x, tol=1e-12)
        want = model.local_constant(0, x, head=head, tol=1e-12)
        assert got.sigma == want.sigma and got.to_dict()["operator"] == want.to_dict()["operator"]
    rl = model.attention_layer(0)
    radius = float(np.linalg.norm(x, axis=1).max())
    cert = rl.certified_lipschitz(radius, 6)
    assert cert["metric"] == "frobenius" and cert["domain"] == {"kind": "ball", "radius": radius}
    assert "b7-rotary" in cert["source"] and cert["n"] == 6
    assert rl.local_constant(x).sigma <= cert["constant"]
    rep = rl.lipschitz(radius, 6)
    assert rep["certified"]["frobenius"] == cert["constant"]
    assert rep["certified"] == model.lipschitz(0, radius, 6)["certified"]


def test_rotary_flow_equals_torch_rk4(tmp_path):
    """lipattn.flow on a RotaryLayer: the token flow dX/dt = f(X), states equal to RK4 in torch
    float64 on transformers' module with the same step, the Gronwall check in the Frobenius norm
    against given second tokens, and the measure options refused."""
    save(build(config("llama")), tmp_path)
    rl = lipattn.Model(tmp_path).attention_layer(1)
    rng = np.random.default_rng(2)
    x = 0.8 * rng.standard_normal((5, 32))
    y = x + 1e-6 * rng.standard_normal((5, 32))
    r = lipattn.flow(rl, x, t=0.3, projection="none", integrator="rk4", dt=0.01, record=0.1, gronwall=y)
    assert r["space"] == "tokens" and r["states"].shape == (4, 5, 32)
    want = rk4_flow(attention_map(tmp_path, 1, 5), x, 0.01, 30)
    for k in range(4):
        assert rel(r["states"][k], want[10 * k]) <= TOL, k
    g = r["gronwall"]
    assert g["metric"] == "frobenius" and not g["violated"]
    assert abs(g["measured"][0] - np.linalg.norm(x - y)) <= 1e-15
    assert r["operator"]["rotary"]["family"] == "llama" and r["operator"]["mask"] == "causal"
    with pytest.raises(ValueError, match="weights"):
        lipattn.flow(rl, x, t=0.1, weights=np.full(5, 0.2))
    with pytest.raises(ValueError, match="LayerNorm"):
        lipattn.flow(rl, x, t=0.1, projection="layernorm", gronwall=1e-3)
    with pytest.raises(TypeError, match="RotaryLayer"):
        lipattn.flow(x, x, t=0.1)


def test_rotary_layer_refusals(tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    model = lipattn.Model(tmp_path)
    with pytest.raises(ValueError, match="kernel 'l2'.*model_type 'llama'"):
        model.attention_layer(0, kernel="l2")
    with pytest.raises(ValueError, match="head"):
        model.attention_layer(0, head=4)
    with pytest.raises(ValueError, match="out of range"):
        model.attention_layer(1)
    rl = model.attention_layer(0)
    with pytest.raises(ValueError, match="32"):
        rl.forward(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="NaN"):
        rl.jvp(np.full((4, 32), np.nan), np.zeros((4, 32)))
    with pytest.raises(ValueError):
        rl.vjp(np.zeros((4, 32)), np.zeros((3, 32)))
    with pytest.raises(ValueError, match="radius"):
        rl.certified_lipschitz(-1.0, 4)
