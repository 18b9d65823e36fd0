"""`lipattn certify --scope sublayer-residual-norm|block|model` and `lipattn robustness` on tiny
BERT, GPT-2 and rotary (Llama, Mistral, Qwen2, Gemma, Gemma 2 without soft-capping) checkpoints against transformers' own modules in float64 (test_scope_local_cli's
oracle: the dense Jacobian by torch.autograd.functional.jacobian). At the centre, at the points the
ascent and the attack report and at random points of the ball, ||J(Y)||_2 must stay below the
certificate and ||f(Y) - f(X)|| below the certified output change; inside the certified radius no
point may leave the tolerance, and the attack's input must leave it; the refusals name their
reason."""
import json

import numpy as np
import pytest

from cli import run
from test_scope_local_cli import checkpoint, load, top_singular

ROTARY_SOFTCAP_OFF = {"attn_logit_softcapping": None}
# (checkpoint, scope, layer, pool, n, eps, ball)
CASES = [
    ("bert", "block", 0, None, 5, 1e-3, "frobenius"),
    ("bert", "sublayer-residual-norm", 1, None, 5, 3e-3, "tokens"),
    ("bert", "model", None, None, 4, 1e-4, "frobenius"),
    ("bert", "model", None, "mean-normalised", 4, 1e-4, "tokens"),
    ("gpt2", "block", 0, None, 6, 1e-3, "frobenius"),
    ("gpt2", "model", None, "mean", 5, 1e-3, "frobenius"),
    (("llama", {"num_key_value_heads": 1, "attention_bias": True}), "block", 1, None, 5, 1e-4, "frobenius"),
    (("mistral", {"sliding_window": 3}), "model", None, "mean-normalised", 5, 1e-5, "tokens"),
    (("qwen2", {}), "model", None, None, 5, 1e-5, "frobenius"),
    (("gemma", {}), "block", 0, None, 5, 1e-4, "tokens"),
    (("gemma2", {"attn_logit_softcapping": None}), "block", 0, None, 6, 1e-4, "frobenius"),
    (("gemma2", {"attn_logit_softcapping": None}), "model", None, "mean", 5, 1e-5, "frobenius"),
]
def case_id(c):
    kind = c[0] if isinstance(c[0], str) else c[0][0]
    return f"{kind}-{c[1]}-{c[3]}"


def cli(lipattn_bin, cmd, *args):
    out = run(lipattn_bin, cmd, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def in_ball(rng, x, ball, eps):
    d = rng.standard_normal(x.shape)
    if ball == "frobenius":
        return x + d * eps * rng.uniform(0.5, 1.0) / np.linalg.norm(d)
    return x + d * eps * rng.uniform(0.5, 1.0, (x.shape[0], 1)) / np.linalg.norm(d, axis=1, keepdims=True)


def scope_args(path, scope, layer, pool):
    args = ["--model", path, "--tokens", path / "x.npy", "--scope", scope]
    if layer is not None:
        args += ["--layer", layer]
    if pool is not None:
        args += ["--pool", pool]
    return args


@pytest.mark.parametrize("kind,scope,layer,pool,n,eps,ball", CASES, ids=[case_id(c) for c in CASES])
def test_certificate_bounds_transformers_in_the_ball(lipattn_bin, tmp_path, kind, scope, layer, pool, n, eps, ball):
    path = checkpoint(kind, tmp_path)
    m = load(path)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, m.config.hidden_size)) * 0.5
    np.save(path / "x.npy", x)
    r = cli(lipattn_bin, "certify", *scope_args(path, scope, layer, pool), "--epsilon", eps, "--ball", ball,
            "--upper-steps", 120, "--interval-steps", 40, "--attack-starts", 2, "--attack-steps", 8,
            "--save-attained", path / "y.npy")
    assert r["certified_kind"] == "probabilistic" and r["failure_probability"] <= 1e-6
    assert r["scope"] == scope and r["n"] == n and r["epsilon"] == eps and r["ball"] == ball
    assert r["chain"]["theorem"].startswith("Lemma C") and len(r["chain"]["runs"]) >= 1
    centre, fx = top_singular(m, scope, layer, x, pool or "none")
    assert abs(r["centre_attained"] - centre) <= 1e-6 * centre
    assert r["centre"]["value"] >= centre
    assert r["attained"] <= r["certified"] and r["output_change"] > 0
    points = [np.load(path / "y.npy")] + [in_ball(rng, x, ball, eps) for _ in range(4)]
    for y in points:
        s, fy = top_singular(m, scope, layer, y, pool or "none")
        assert s <= r["certified"], (s, r["certified"])
        assert np.linalg.norm(fy - fx) <= r["output_change"], (np.linalg.norm(fy - fx), r["output_change"])
    at_y, _ = top_singular(m, scope, layer, points[0], pool or "none")
    assert abs(at_y - r["attained"]) <= 1e-5 * at_y


@pytest.mark.parametrize("kind,scope,layer,pool,tolerance", [
    ("bert", "block", 0, None, ["--delta", "0.01"]),
    ("bert", "model", None, "mean-normalised", ["--cosine", "0.9999"]),
    ("gpt2", "model", None, "mean", ["--cosine", "0.999"]),
    (("llama", {}), "block", 1, None, ["--delta", "0.01"]),
    (("qwen2", {}), "model", None, "mean-normalised", ["--cosine", "0.9999"]),
    (("gemma2", ROTARY_SOFTCAP_OFF), "model", None, None, ["--delta", "0.001"]),
], ids=lambda v: v if isinstance(v, str) else (v[0] if isinstance(v, tuple) else None))
def test_robustness_radius_against_transformers(lipattn_bin, tmp_path, kind, scope, layer, pool, tolerance):
    path = checkpoint(kind, tmp_path)
    m = load(path)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, m.config.hidden_size)) * 0.5
    np.save(path / "x.npy", x)
    r = cli(lipattn_bin, "robustness", *scope_args(path, scope, layer, pool), *tolerance, "--upper-steps", 120,
            "--interval-steps", 40, "--save-attack", path / "y.npy")
    assert r["certified_radius"] > 0 and r["certified_change"] <= r["delta"]
    assert r["attack_radius"] is not None and r["attack_radius"] >= r["certified_radius"]
    assert abs(r["ratio"] - r["attack_radius"] / r["certified_radius"]) <= 1e-12 * r["ratio"]
    _, fx = top_singular(m, scope, layer, x, pool or "none")

    def leaves(fy):
        if tolerance[0] == "--delta":
            return np.linalg.norm(fy - fx) > float(tolerance[1])
        cos = float(fy.ravel() @ fx.ravel() / (np.linalg.norm(fy) * np.linalg.norm(fx)))
        return cos < float(tolerance[1])

    y = np.load(path / "y.npy")
    assert abs(np.linalg.norm(y - x) - r["attack_radius"]) <= 1e-9 * r["attack_radius"]
    assert leaves(top_singular(m, scope, layer, y, pool or "none")[1])
    for _ in range(6):
        z = in_ball(rng, x, "frobenius", r["certified_radius"])
        assert not leaves(top_singular(m, scope, layer, z, pool or "none")[1])


@pytest.mark.parametrize("args,message", [
    (["robustness", "--scope", "model", "--cosine", "0.9"], "pooled embedding"),
    (["robustness", "--scope", "model", "--cosine", "1.5", "--pool", "mean"], "cosine"),
    (["robustness", "--scope", "model", "--delta", "-1"], "delta"),
    (["certify", "--scope", "block", "--epsilon", "0.1", "--pool", "mean", "--layer", "0"], "pool"),
    (["certify", "--scope", "model", "--epsilon", "0.1", "--layer", "0"], "layer"),
])
def test_refusals(lipattn_bin, tmp_path, args, message):
    path = checkpoint("bert", tmp_path)
    np.save(path / "x.npy", np.zeros((3, 8)) + np.arange(8) * 0.1)
    out = run(lipattn_bin, *args, "--model", path, "--tokens", path / "x.npy", "--json")
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_relu_feed_forward_is_refused(lipattn_bin, tmp_path):
    path = checkpoint("bert", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    np.save(path / "x.npy", np.random.default_rng(0).standard_normal((3, cfg["hidden_size"])))
    out = run(lipattn_bin, "certify", "--model", path, "--tokens", path / "x.npy", "--scope", "block", "--layer", 0,
              "--epsilon", "0.01", "--json")
    assert out.returncode != 0 and "ReLU" in out.stderr, out.stderr


@pytest.mark.parametrize("family,keys,scope,layer,words", [
    ("qwen3", {}, "block", 0, "q_norm"),
    ("gemma2", {}, "model", None, "attn_logit_softcapping"),
])
def test_rotary_layers_lemma_s_does_not_cover_are_refused(lipattn_bin, tmp_path, family, keys, scope, layer, words):
    path = checkpoint((family, keys), tmp_path)
    np.save(path / "x.npy", np.random.default_rng(0).standard_normal((4, 32)) * 0.5)
    for cmd, tol in [("certify", ["--epsilon", "1e-4"]), ("robustness", ["--delta", "0.01"])]:
        out = run(lipattn_bin, cmd, *scope_args(path, scope, layer, None), *tol, "--json")
        assert out.returncode == 2 and words in out.stderr and "panicked" not in out.stderr, out.stderr


def test_every_interval_is_sound_and_tighter_at_larger_radii(lipattn_bin, tmp_path):
    """`--intervals all` (a Lemma P run on every run of two steps or more): reported, sound at points of the ball,
    within the runs' share of the failure probability of `blocks` on a small ball and below it on a larger one;
    robustness reports it too and certifies no smaller radius."""
    path = checkpoint("bert", tmp_path)
    m = load(path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, m.config.hidden_size)) * 0.5
    np.save(path / "x.npy", x)
    args = [*scope_args(path, "model", None, "mean-normalised"), "--upper-steps", 120, "--interval-steps", 40,
            "--attack-starts", 1, "--attack-steps", 4]
    _, fx = top_singular(m, "model", None, x, "mean-normalised")
    found = {}
    for eps in [1e-6, 1e-3]:
        for intervals in ["blocks", "all"]:
            r = cli(lipattn_bin, "certify", *args, "--epsilon", eps, "--intervals", intervals)
            assert r["intervals"] == intervals
            found[eps, intervals] = r
            for y in [x] + [in_ball(rng, x, "frobenius", eps) for _ in range(3)]:
                s, fy = top_singular(m, "model", None, y, "mean-normalised")
                assert s <= r["certified"], (intervals, eps, s, r["certified"])
                assert np.linalg.norm(fy - fx) <= r["output_change"]
    blocks, every = found[1e-6, "blocks"], found[1e-6, "all"]
    assert len(every["chain"]["runs"]) > len(blocks["chain"]["runs"])
    assert abs(every["certified"] - blocks["certified"]) <= 1e-2 * blocks["certified"]
    assert found[1e-3, "all"]["certified"] < found[1e-3, "blocks"]["certified"]
    radius = {}
    for intervals in ["blocks", "all"]:
        r = cli(lipattn_bin, "robustness", *args, "--delta", "0.01", "--intervals", intervals)
        assert r["intervals"] == intervals
        radius[intervals] = r["certified_radius"]
    assert radius["all"] >= radius["blocks"] * 0.98
    # The text reports name the set that ran too.
    for cmd, tol in [("certify", ["--epsilon", "1e-6"]), ("robustness", ["--delta", "0.01"])]:
        out = run(lipattn_bin, cmd, *args, *tol, "--intervals", "all")
        assert out.returncode == 0 and "intervals all" in out.stdout, (out.stdout, out.stderr)


@pytest.mark.parametrize("cmd,tol", [("certify", ["--epsilon", "1e-4"]), ("robustness", ["--delta", "0.01"])])
def test_unknown_intervals_are_refused(lipattn_bin, tmp_path, cmd, tol):
    path = checkpoint("bert", tmp_path)
    np.save(path / "x.npy", np.random.default_rng(0).standard_normal((3, 32)) * 0.5)
    out = run(lipattn_bin, cmd, *scope_args(path, "model", None, None), *tol, "--intervals", "bogus", "--json")
    assert out.returncode == 2 and "--intervals" in out.stderr and "bogus" in out.stderr, out.stderr
