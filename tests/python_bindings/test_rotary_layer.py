"""lipattn.RotaryLayer (Model.attention_layer on a rotary checkpoint): forward, JVP and VJP against
transformers' own attention module and torch.func in float64 (tiny_decoders: eager, its float32 steps
in float64, positions 0..n-1, the module's mask) to 1e-10; the local constant, B7 and lipschitz equal to
the Model calls; lipattn.flow integrating its token flow as torch RK4 does; InvertibleBlock, invert and
fixed_point on it equal to `lipattn invert` / `fixed-point --model --layer` and to transformers' module; and
the refusals."""
import json

import numpy as np
import pytest
import torch

import lipattn
from cli import run
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


def cli_json(bin_, *args):
    r = run(bin_, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def strip(d, *extra):
    return {k: v for k, v in d.items() if k not in ("seconds", "x", "layer") + extra}


DYNAMICS = [
    ("llama", {"num_key_value_heads": 1, "attention_bias": True}),
    ("mistral", {"sliding_window": 4}),
    ("gemma2", {}),
]


@pytest.mark.parametrize("family,keys", DYNAMICS, ids=[c[0] for c in DYNAMICS])
def test_invertible_block_on_rotary_layer(lipattn_bin, tmp_path, family, keys):
    """InvertibleBlock and invert on a RotaryLayer: the block, its certificate, every solver's
    inversion and the log-determinant equal `lipattn invert --model --layer`; the block's forward
    pass and log-determinant equal x + s f(x) and log|det(I + s J_f)| of transformers' module
    (torch.func.jacobian, float64); the reconstruction is within its certified error."""
    save(build(config(family, **keys)), tmp_path)
    rl = lipattn.Model(tmp_path).attention_layer(1)
    x = np.random.default_rng(3).standard_normal((8, 32))
    np.save(tmp_path / "x.npy", x)
    ref = cli_json(lipattn_bin, "invert", "--model", tmp_path, "--layer", 1, "--tokens", tmp_path / "x.npy", "--logdet")
    block = lipattn.InvertibleBlock.for_tokens(rl, x, 0.9)
    assert block.certified_lipschitz == ref["certified_lipschitz"] <= 0.9
    assert block.scale == ref["scale"] and block.n == 8 and block.d == 32
    assert block.certificate["domain"] == ref["domain"] and block.certificate["source"] == ref["certified_lipschitz_source"]
    assert block.operator == ref["operator"] and block.operator["rotary"]["family"] == family
    assert block.operator["mask"] == "causal"
    g = block.g
    assert isinstance(g, lipattn.RotaryLayer) and g.window == rl.window and g.kv_heads == rl.kv_heads
    fx = attention_output(tmp_path, 1, x)
    assert rel(g.forward(x), block.scale * fx) <= TOL
    y = block.forward(x)
    assert rel(y, x + block.scale * fx) <= TOL
    for name, entry in zip(["picard", "anderson", "broyden"], ref["solvers"]):
        got = block.inverse(y, solver=name, x_true=x)
        assert strip(got) == strip(entry), name
        assert np.linalg.norm(got["x"] - x) == got["reconstruction_error"] <= min(got["error_bound"], 1e-9)
    assert block.logdet(x) == ref["logdet"]["exact"]
    jac = torch.func.jacrev(attention_map(tmp_path, 1, 8))(torch.tensor(x)).reshape(256, 256).detach().numpy()
    sign, want = np.linalg.slogdet(np.eye(256) + block.scale * jac)
    got = block.logdet(x)
    assert got["sign"] == sign == 1.0 and abs(got["logabsdet"] - want) <= TOL * max(1.0, abs(want))
    assert g.local_constant(x).sigma == pytest.approx(ref["attained_local_lipschitz"], rel=1e-12)
    whole = lipattn.invert(rl, x, 0.9, logdet=True)
    assert strip(whole, "command", "solvers") == strip(ref, "command", "solvers")
    assert [strip(s) for s in whole["solvers"]] == [strip(s) for s in ref["solvers"]]
    assert np.linalg.norm(whole["x"] - x) == whole["reconstruction_error"]


@pytest.mark.parametrize("family,keys", DYNAMICS, ids=[c[0] for c in DYNAMICS])
def test_fixed_point_on_rotary_layer(lipattn_bin, tmp_path, family, keys):
    """fixed_point on a RotaryLayer (token space, injected X = U + g(X) with g scaled to a certified
    contraction): the report equals `lipattn fixed-point --model --layer --tokens`, and the fixed point
    solves X = x + s f(X) with f transformers' module within its certified error."""
    save(build(config(family, **keys)), tmp_path)
    rl = lipattn.Model(tmp_path).attention_layer(0)
    x = 0.5 * np.random.default_rng(4).standard_normal((7, 32))
    np.save(tmp_path / "x.npy", x)
    ref = cli_json(lipattn_bin, "fixed-point", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy",
                   "--variant", "injected", "--contract", 0.5, "--atol", 1e-12, "--solver", "anderson")
    fp = lipattn.fixed_point(rl, x, variant="injected", contract=0.5, atol=1e-12, solver="anderson")
    entry = dict(ref["solvers"][0])
    top = {k: v for k, v in ref.items() if k != "solvers"}
    assert strip(fp, "command") == strip({**entry, **top}, "command")
    assert fp["certified_contraction"] <= 0.5 and "b7-rotary" in fp["layer_certificate"]["source"]
    assert fp["operator"]["rotary"]["family"] == family and fp["operator"]["mask"] == "causal"
    xs = fp["x"]
    # X - x - s f(X) = 0 up to the solver's tolerance, with f transformers' module.
    assert np.linalg.norm(xs - x - fp["scale"] * attention_output(tmp_path, 0, xs)) <= 1e-11
    assert fp["error_bound"] is not None and fp["residual"] <= 1e-12
    with pytest.raises(ValueError, match="positions|measure"):
        lipattn.fixed_point(rl, x, space="measure")
    with pytest.raises(TypeError, match="AttentionLayer or a RotaryLayer"):
        lipattn.invert(object(), x)
