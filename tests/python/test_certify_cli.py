"""`lipattn certify` on the real MiniLM against a NumPy oracle: the attention sublayer's forward pass
and its dense Jacobian (central differences, test_local_cli's independent implementation) at the
centre, at the point the ascent reports and at random points of the ball. The certified bound on
sup ||J|| must be above every one of them, the output-change bound above every ||f(Y) - f(X)||_F,
and the report must say what kind of certificate it is."""
import json
import os

import numpy as np
import pytest

import safetensors_np
from cli import run, layer_norm_like
from test_local_cli import batched_forward, dense_jacobian, sublayer

KEYS = {"certified", "certified_kind", "failure_probability", "attained", "ratio", "output_change", "epsilon",
        "scope", "n", "seconds", "ball", "frobenius_radius", "centre", "slope", "layer", "norm", "dtype"}


def certify(lipattn_bin, *args):
    out = run(lipattn_bin, "certify", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def sigma(w, heads, x):
    return np.linalg.svd(dense_jacobian(w, heads, x), compute_uv=False)[0]


def in_ball(rng, x, ball, eps):
    d = rng.standard_normal(x.shape)
    if ball == "frobenius":
        d *= eps * rng.uniform(0.5, 1.0) / np.linalg.norm(d)
    else:
        d *= eps * rng.uniform(0.5, 1.0, (x.shape[0], 1)) / np.linalg.norm(d, axis=1, keepdims=True)
    return x + d


@pytest.mark.parametrize("ball,eps", [("frobenius", 0.05), ("tokens", 0.01)])
def test_certificate_bounds_the_oracle_in_the_ball(tmp_path, lipattn_bin, minilm, ball, eps):
    tensors = safetensors_np.load(os.path.join(minilm, "model.safetensors"))
    w, heads = sublayer(tensors, 0, None)
    rng = np.random.default_rng(3)
    x = layer_norm_like(rng, 4, w["wq"].shape[1]) * 1.5
    np.save(tmp_path / "x.npy", x)
    r = certify(lipattn_bin, "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy", "--epsilon", eps,
                "--ball", ball, "--upper-steps", 150, "--attack-starts", 2, "--attack-steps", 10,
                "--save-attained", tmp_path / "y.npy")
    assert KEYS <= set(r), KEYS - set(r)
    assert r["certified_kind"] == "probabilistic" and r["failure_probability"] == 1e-6
    assert r["scope"] == "attention" and r["ball"] == ball and r["epsilon"] == eps and r["n"] == 4
    assert r["norm"] == "frobenius" and r["dtype"] == "f64"
    centre = sigma(w, heads, x)
    assert abs(r["centre_attained"] - centre) <= 1e-6 * centre
    assert r["centre"]["value"] >= centre
    y = np.load(tmp_path / "y.npy")
    dist = np.linalg.norm(y - x) if ball == "frobenius" else np.linalg.norm(y - x, axis=1).max()
    assert dist <= eps * (1 + 1e-9)
    at_y = sigma(w, heads, y)
    assert abs(at_y - r["attained"]) <= 1e-6 * at_y
    assert r["attained"] <= r["certified"] and abs(r["ratio"] - r["certified"] / r["attained"]) <= 1e-12 * r["ratio"]
    fx = batched_forward(x[None], w, heads)[0]
    points = [y] + [in_ball(rng, x, ball, eps) for _ in range(2)]
    for p in points:
        assert sigma(w, heads, p) <= r["certified"]
        moved = np.linalg.norm(batched_forward(p[None], w, heads)[0] - fx)
        assert moved <= r["output_change"], (moved, r["output_change"])
    # The bound's own algebra, as docs/bounds.md#ball-certificates states it.
    rho = r["frobenius_radius"]
    assert rho == pytest.approx(eps if ball == "frobenius" else eps * np.sqrt(4), rel=1e-12)
    u, h = r["centre"]["value"], r["slope"]["value"]
    assert r["certified"] == pytest.approx(u + rho * h, rel=1e-12)
    assert r["output_change"] == pytest.approx(rho * u + h * rho * rho / 2, rel=1e-12)


def test_certify_on_real_text(lipattn_bin, minilm, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Attention is an operator on probability measures of tokens; how smooth is it, provably?")
    r = certify(lipattn_bin, "--model", minilm, "--layer", 3, "--text", text, "--max-tokens", 12, "--epsilon",
                1e-3, "--upper-steps", 100, "--attack-starts", 1, "--attack-steps", 5)
    assert r["n"] == 12 and r["layer"] == 3 and r["family"] == "bert"
    assert 1.0 <= r["ratio"] and r["attained"] >= r["centre_attained"]
    assert "layer 3" in r["description"] and "frobenius ball" in r["description"]


def test_what_is_not_certified_is_refused(lipattn_bin, minilm, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 384)))
    base = ["certify", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "x.npy"]
    cases = [
        (["--epsilon", 0.1, "--scope", "block", "--pool", "mean"], "pool 'mean'"),
        (["--epsilon", 0.1, "--scope", "model", "--pool", "mean"], "scope 'model'"),
        (["--epsilon", 0], "epsilon"),
        (["--epsilon", 0.1, "--failure-probability", 1], "failure-probability"),
        (["--epsilon", 1e300], "overflows"),
        (["--epsilon", 0.1, "--ball", "l1"], "l1"),
    ]
    for extra, words in cases:
        out = run(lipattn_bin, *base, *extra)
        assert out.returncode == 2, (extra, out.stderr)
        assert words in out.stderr, (extra, out.stderr)
        assert "panicked" not in out.stderr


def test_streaming_attention_on_minilm(tmp_path, lipattn_bin, minilm):
    """`--attention streaming` (Lemma P's Lanczos and the ascent on the streaming state, Lemma S's
    centre row by row; docs/streaming.md#certify) gives the dense certificate, and `auto` streams
    exactly when `--max-memory` refuses the dense n x n state (n = 1,000: 12 heads x 1,000^2 x 8
    bytes x 2 = 192 MB dense), saying so in the JSON."""
    rng = np.random.default_rng(11)
    np.save(tmp_path / "x.npy", layer_norm_like(rng, 48, 384))
    base = ["--model", minilm, "--layer", 1, "--tokens", tmp_path / "x.npy", "--epsilon", "1e-3",
            "--upper-steps", "60", "--attack-starts", "1", "--attack-steps", "4", "--tol", "1e-10"]
    got = {a: certify(lipattn_bin, *base, "--attention", a) for a in ["dense", "streaming", "auto"]}
    assert got["dense"]["attention"] == "dense" and got["streaming"]["attention"] == "streaming"
    assert got["auto"]["attention"] == "dense"
    for key in ["certified", "attained", "centre_attained", "output_change"]:
        a, b = got["dense"][key], got["streaming"][key]
        assert abs(a - b) <= 1e-9 * abs(a), (key, a, b)
    assert got["dense"]["slope"]["value"] == got["streaming"]["slope"]["value"]
    assert abs(got["dense"]["centre"]["value"] - got["streaming"]["centre"]["value"]) <= 1e-9 * got["dense"]["centre"]["value"]
    np.save(tmp_path / "long.npy", layer_norm_like(rng, 1000, 384))
    long = ["certify", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "long.npy", "--epsilon", "1e-3",
            "--upper-steps", "10", "--attack-starts", "0", "--attack-steps", "1", "--tol", "1e-3",
            "--max-memory", "120M", "--json"]
    out = run(lipattn_bin, *long, "--attention", "dense")
    assert out.returncode == 2 and "max-memory" in out.stderr and "panicked" not in out.stderr, out.stderr
    out = run(lipattn_bin, *long)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["attention"] == "streaming" and r["n"] == 1000 and r["attained"] <= r["certified"]


def test_block_certificate_on_the_streaming_state(lipattn_bin, minilm, tmp_path):
    """`certify --scope block --attention streaming` (docs/streaming.md#blocks-and-models): the
    chain's attention steps and Lemma S centres on the streaming state give the dense certificate,
    and the JSON says which state ran."""
    np.save(tmp_path / "x.npy", layer_norm_like(np.random.default_rng(2), 40, 384))
    base = ["--model", minilm, "--layer", 0, "--scope", "block", "--tokens", tmp_path / "x.npy",
            "--epsilon", "1e-3", "--upper-steps", "30", "--interval-steps", "10", "--attack-starts", "1",
            "--attack-steps", "2", "--tol", "1e-8"]
    got = {a: certify(lipattn_bin, *base, "--attention", a) for a in ["dense", "streaming", "auto"]}
    assert [got[a]["attention"] for a in ["dense", "streaming", "auto"]] == ["dense", "streaming", "dense"]
    for key in ["certified", "attained", "output_change"]:
        a, b = got["dense"][key], got["streaming"][key]
        assert abs(a - b) <= 1e-9 * abs(a), (key, a, b)
    assert got["dense"]["certified"] == got["auto"]["certified"]


def test_robustness_on_either_state(lipattn_bin, minilm, tmp_path):
    """`robustness --attention` (docs/streaming.md#blocks-and-models): MiniLM block 0 on the
    streaming chain gives the dense certified radius (to rounding: every radius the search tries
    is decided alike) and the JSON says which state ran; under a `--max-memory` that refuses the dense
    certificate (scope attention, n = 300: dense 197 MB, streaming 155 MB on 2 threads),
    `--attention dense` is refused naming the budget and `auto` streams."""
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", layer_norm_like(rng, 40, 384))
    base = ["robustness", "--model", minilm, "--layer", 0, "--scope", "block", "--tokens", tmp_path / "x.npy",
            "--delta", "0.05", "--upper-steps", "30", "--interval-steps", "10", "--attack-starts", "0",
            "--attack-steps", "3", "--json"]
    got = {}
    for attention in ["dense", "streaming", "auto"]:
        out = run(lipattn_bin, *base, "--attention", attention)
        assert out.returncode == 0, out.stderr
        got[attention] = json.loads(out.stdout)
    assert [got[a]["attention"] for a in ["dense", "streaming", "auto"]] == ["dense", "streaming", "dense"]
    assert got["auto"]["certified_radius"] == got["dense"]["certified_radius"]
    # The search starts from Lemma P's bound at X, equal on the two states to rounding.
    for key in ["certified_radius", "certified_change", "centre_upper", "attack_radius"]:
        a, b = got["dense"][key], got["streaming"][key]
        assert abs(a - b) <= 1e-9 * abs(a), (key, a, b)
    np.save(tmp_path / "long.npy", layer_norm_like(rng, 300, 384))
    long = ["robustness", "--model", minilm, "--layer", 0, "--scope", "attention", "--tokens", tmp_path / "long.npy",
            "--delta", "0.05", "--upper-steps", "10", "--interval-steps", "4", "--attack-starts", "0",
            "--attack-steps", "1", "--max-memory", "176M", "--json"]
    out = run(lipattn_bin, *long, "--attention", "dense")
    assert out.returncode == 2 and "max-memory" in out.stderr and "panicked" not in out.stderr, out.stderr
    out = run(lipattn_bin, *long)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["attention"] == "streaming" and r["n"] == 300 and r["certified_radius"] > 0
    assert r["attack_radius"] is None or r["attack_radius"] >= r["certified_radius"]
