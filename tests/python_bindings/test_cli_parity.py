"""The package computes what the CLI computes (both call the same library) on the real MiniLM."""
import json

import lipattn
import numpy as np
import pytest
from cli import layer_norm_like, run


def cli_json(bin_, *args):
    r = run(bin_, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_forward_equals_cli(lipattn_bin, minilm, minilm_layer, tmp_path):
    x = layer_norm_like(np.random.default_rng(0), 24, 384)
    np.save(tmp_path / "x.npy", x)
    r = run(lipattn_bin, "forward", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = minilm_layer.forward(x)
    assert y.dtype == np.float64 and y.shape == (24, 384)
    np.testing.assert_array_equal(y, np.load(tmp_path / "y.npy"))


def test_forward_weighted_causal_equals_cli(lipattn_bin, minilm, minilm_layer, tmp_path):
    rng = np.random.default_rng(1)
    x = layer_norm_like(rng, 10, 384)
    w = rng.uniform(0.1, 1.0, 10)
    w /= w.sum()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    r = run(lipattn_bin, "forward", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy",
            "--weights", tmp_path / "w.npy", "--causal", "--out", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(minilm_layer.forward(x, weights=w, causal=True), np.load(tmp_path / "y.npy"))


@pytest.mark.parametrize("head,method", [(None, "lanczos"), (3, "lanczos"), (None, "power")])
def test_local_equals_cli(lipattn_bin, minilm, tmp_path, head, method):
    x = layer_norm_like(np.random.default_rng(2), 32, 384)
    np.save(tmp_path / "x.npy", x)
    args = ["local", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy", "--method", method, "--json",
            "--save-vector", tmp_path / "v.npy"]
    if head is not None:
        args += ["--head", head]
    ref = cli_json(lipattn_bin, *args)
    layer = lipattn.AttentionLayer.from_model(minilm, 0, head=head)
    got = layer.local_constant(x, method=method)
    d = got.to_dict()
    for k in ["kind", "quantity", "method", "norm", "n", "d", "d_out", "dtype", "causal", "weights", "converged", "iterations", "tol"]:
        assert d[k] == ref[k], k
    np.testing.assert_allclose(got.sigma, ref["sigma"], rtol=1e-12)
    np.testing.assert_allclose(got.radius, ref["radius"], rtol=1e-15)
    np.testing.assert_allclose(got.vector, np.load(tmp_path / "v.npy"), rtol=1e-9, atol=1e-12)
    # Model.local_constant is `lipattn local --model` for every family, this one included.
    by_model = lipattn.Model(minilm).local_constant(0, x, head=head, method=method).to_dict()
    for k in ["kind", "method", "n", "causal", "iterations", "operator"]:
        assert by_model[k] == ref[k], k
    assert by_model["sigma"] == ref["sigma"]


def test_lipschitz_equals_cli(lipattn_bin, minilm, tmp_path):
    args = dict(radius=3.0, n=4, starts=1, steps=2, atoms=4, seed=7)
    ref = cli_json(lipattn_bin, "lipschitz", "--model", minilm, "--layer", 0, "--head", 1, "--radius", 3.0, "--n", 4,
                   "--starts", 1, "--steps", 2, "--atoms", 4, "--seed", 7, "--json", "--save-input", tmp_path / "x.npy",
                   "--save-pair", tmp_path / "pair")
    got = lipattn.AttentionLayer.from_model(minilm, 0, head=1).lipschitz(**args)
    assert got["certified"] == ref["certified"]
    assert got["bounds"] == ref["bounds"] and got["notes"] == ref["notes"]
    for k in ["frobenius", "w1", "frobenius_construction"]:
        np.testing.assert_allclose(got["attained"][k], ref["attained"][k], rtol=1e-10)
    assert got["attained"]["w1_pair"]["phase"] == ref["attained"]["w1_pair"]["phase"]
    assert got["attained"]["w1_pair"]["structured_starts"] == ref["attained"]["w1_pair"]["structured_starts"] > 0
    assert got["domain"] == {k: v for k, v in ref["domain"].items()}
    np.testing.assert_allclose(got["inputs"]["frobenius_x"], np.load(tmp_path / "x.npy"), rtol=1e-10, atol=1e-12)
    mu = got["inputs"]["w1_mu"]
    np.testing.assert_allclose(mu.points, np.load(tmp_path / "pair" / "w1_mu_points.npy"), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mu.weights, np.load(tmp_path / "pair" / "w1_mu_weights.npy"), rtol=1e-10)
    # The attained inputs reproduce their values: sigma at x, and the W1 ratio of the pair.
    layer = lipattn.AttentionLayer.from_model(minilm, 0, head=1)
    assert np.max(np.linalg.norm(got["inputs"]["frobenius_x"], axis=1)) <= 3.0 * (1 + 1e-12)
    np.testing.assert_allclose(layer.local_constant(got["inputs"]["frobenius_x"], tol=1e-8).sigma, got["attained"]["frobenius"], rtol=1e-6)
    nu = got["inputs"]["w1_nu"]
    w_in = lipattn.transport(mu, nu).distance
    w_out = lipattn.transport(layer.self_attention(mu), layer.self_attention(nu)).distance
    np.testing.assert_allclose(w_out / w_in, got["attained"]["w1"], rtol=1e-12)
    # Certified above attained.
    assert got["certified"]["frobenius"] >= got["attained"]["frobenius"]
    assert got["certified"]["w1"] >= got["attained"]["w1"]


def test_certified_bounds_match_lipschitz(minilm_layer):
    cb = minilm_layer.certified_bounds(2.0, 16)
    assert cb["domain"]["radius"] == 2.0 and cb["domain"]["n"] == 16
    assert all(b["certified"] == b["name"].startswith("B") for b in cb["bounds"])
    assert cb["certified"]["frobenius"] == min(b["value"] for b in cb["bounds"] if b["certified"] and b["metric"] == "frobenius")
    l2 = minilm_layer.with_kernel("l2").certified_bounds(2.0, 16)
    assert l2["certified"]["w1"] is None and l2["notes"]


def test_hidden_states_equal_cli(lipattn_bin, minilm, tmp_path):
    text = "The quick brown fox jumps over the lazy dog. Attention is smooth, provably, on bounded inputs."
    (tmp_path / "t.txt").write_text(text)
    r = run(lipattn_bin, "hidden", "--model", minilm, "--text", tmp_path / "t.txt", "--layer", 3, "--max-tokens", 16,
            "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
    assert r.returncode == 0, r.stderr
    m = lipattn.Model(minilm)
    assert (m.family, m.num_layers, m.hidden_size, m.num_heads, m.causal) == ("bert", 6, 384, 12, False)
    np.testing.assert_array_equal(m.tokenize(text, max_tokens=16), np.load(tmp_path / "ids.npy"))
    h = m.hidden_states(text, layer=3, max_tokens=16)
    np.testing.assert_array_equal(h, np.load(tmp_path / "h.npy"))
    all_states = m.hidden_states(ids=m.tokenize(text, max_tokens=16).tolist())
    assert len(all_states) == 7
    np.testing.assert_array_equal(all_states[3], h)
    # The layer from the model equals the layer from the directory.
    x = all_states[0]
    np.testing.assert_array_equal(m.attention_layer(0).forward(x), lipattn.AttentionLayer.from_model(minilm, 0).forward(x))


@pytest.mark.parametrize("method,extra", [("exact", []), ("sinkhorn", ["--eps", "0.1"])])
def test_transport_equals_cli(lipattn_bin, tmp_path, method, extra):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    wa = rng.uniform(0.2, 1, 7)
    wa /= wa.sum()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "wa.npy", wa)
    ref = cli_json(lipattn_bin, "transport", tmp_path / "a.npy", tmp_path / "b.npy", "--wa", tmp_path / "wa.npy",
                   "--p", 2, "--method", method, *extra, "--json")
    got = lipattn.transport(a, b, wa=wa, p=2, method=method, eps=0.1 if extra else None).to_dict()
    for k in ["method", "n", "m", "p", "iterations", "plan_nonzeros" if method == "exact" else "converged"]:
        assert got[k] == ref[k], k
    for k in ["cost", "distance", "marginal_error"] + (["gap", "infeasibility"] if method == "exact" else []):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "make,cli_args",
    [
        (lambda d: lipattn.AttentionLayer.from_model(d / "missing", 0), lambda d: ["--model", d / "missing", "--layer", 0]),
        (lambda d: lipattn.AttentionLayer.from_model(d, 0), lambda d: ["--model", d, "--layer", 0]),
    ],
)
def test_error_messages_equal_cli(lipattn_bin, tmp_path, make, cli_args):
    x = np.zeros((2, 4))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(Exception) as e:
        make(tmp_path)
    r = run(lipattn_bin, "forward", *cli_args(tmp_path), "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.returncode != 0
    assert str(e.value) in r.stderr, (str(e.value), r.stderr)


def test_nan_token_message_equals_cli(lipattn_bin, minilm, minilm_layer, tmp_path):
    x = layer_norm_like(np.random.default_rng(4), 5, 384)
    x[2, 7] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError) as e:
        minilm_layer.forward(x)
    r = run(lipattn_bin, "forward", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert r.returncode != 0 and str(e.value) in r.stderr, (str(e.value), r.stderr)
    assert "row 2, column 7" in str(e.value)


def same(got, ref, path=""):
    """Equal JSON values (floats to 1e-12 relative), timing fields left out."""
    if isinstance(ref, dict):
        keys = {k for k in ref if "seconds" not in k}
        assert keys <= set(got), (path, keys - set(got))
        for k in keys:
            same(got[k], ref[k], f"{path}.{k}")
    elif isinstance(ref, list):
        assert len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            same(g, r, f"{path}[{i}]")
    elif isinstance(ref, float) and isinstance(got, float):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, err_msg=path)
    else:
        assert got == ref, (path, got, ref)


def synthetic(seed, d, n):
    return lipattn.random_layer(d, seed=seed), lipattn.random_tokens(n, d, seed=seed + 1)


def test_invert_report_equals_cli(lipattn_bin):
    ref = cli_json(lipattn_bin, "invert", "--seed", 3, "--d", 8, "--n", 6, "--logdet", "--json")
    layer, x = synthetic(3, 8, 6)
    got = lipattn.invert(layer, x, logdet=True)
    assert ref["layer"]["source"] == "synthetic" and "layer" not in got
    assert ref.pop("command") == "invert"
    del ref["layer"]
    same(got, ref)
    assert set(got) - set(ref) == {"x"}
    assert got["status"] == "converged" and [s["solver"] for s in got["solvers"]] == ["picard", "anderson", "broyden"]


def test_fixed_point_report_equals_cli(lipattn_bin):
    ref = cli_json(lipattn_bin, "fixed-point", "--seed", 2, "--d", 8, "--n", 6, "--solver", "anderson", "--json")
    layer, x = synthetic(2, 8, 6)
    got = lipattn.fixed_point(layer, x, solver="anderson")
    (entry,) = ref.pop("solvers")
    del ref["layer"], ref["command"]
    same(got, {**entry, **ref})


def test_flow_report_equals_cli(lipattn_bin):
    ref = cli_json(lipattn_bin, "flow", "--seed", 1, "--d", 3, "--n", 8, "--t", 1.0, "--json")
    layer, x = synthetic(1, 3, 8)
    got = lipattn.flow(layer, x, t=1.0)
    del ref["layer"], ref["command"], ref["mean_field"]
    same(got, ref)
    assert got["states"].shape == (len(ref["times"]), 8, 3)
