"""Model.certify and Model.robustness: the same requests and reports as `lipattn certify` and
`lipattn robustness` (same keys, same values), X from an array or a text, and their errors."""
import json
import os
import subprocess

import numpy as np
import pytest

import lipattn

FAST = dict(upper_steps=40, attack_starts=1, attack_steps=4)


def cli(minilm, *args, command="certify"):
    out = subprocess.run([os.environ["LIPATTN_BIN"], command, "--model", minilm, "--json", *map(str, args)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_equals_cli(minilm, tmp_path):
    text = "The quick brown fox jumps over the lazy dog."
    (tmp_path / "t.txt").write_text(text)
    model = lipattn.Model(minilm)
    got = model.certify(1, 1e-3, text=text, ball="tokens", **FAST)
    want = cli(minilm, "--layer", 1, "--text", tmp_path / "t.txt", "--epsilon", 1e-3, "--ball", "tokens",
               "--upper-steps", 40, "--attack-starts", 1, "--attack-steps", 4)
    for key in ("certified", "certified_kind", "failure_probability", "attained", "ratio", "output_change",
                "epsilon", "ball", "frobenius_radius", "scope", "layer", "family", "n", "d", "radius", "norm",
                "dtype", "centre_attained", "centre", "slope", "attack_evaluations", "description"):
        assert got[key] == want[key], key
    x, y = got["x"], got["attained_input"]
    assert x.shape == (want["n"], 384) and y.shape == x.shape
    assert np.linalg.norm(y - x, axis=1).max() <= 1e-3
    # The same X given as an array gives the same certificate.
    again = model.certify(1, 1e-3, x, ball="tokens", **FAST)
    assert again["certified"] == got["certified"] and again["attained"] == got["attained"]


def test_errors_name_the_problem(minilm):
    model = lipattn.Model(minilm)
    x = np.zeros((4, 384))
    for kwargs, words in [(dict(epsilon=0.0), "epsilon"), (dict(epsilon=0.1, scope="model"), "layer 0 was given"),
                          (dict(epsilon=0.1, ball="l1"), "l1"),
                          (dict(epsilon=0.1, failure_probability=1.5), "failure_probability")]:
        with pytest.raises(ValueError, match=words):
            model.certify(0, x=x, **{**FAST, **kwargs})
    with pytest.raises(ValueError, match="exactly one"):
        model.certify(0, 0.1, x, text="a", **FAST)


def test_block_certificate_equals_cli(minilm, tmp_path):
    text = "Attention is an operator on measures."
    (tmp_path / "t.txt").write_text(text)
    got = lipattn.Model(minilm).certify(0, 1e-4, text=text, scope="block", interval_steps=20, **FAST)
    want = cli(minilm, "--layer", 0, "--scope", "block", "--text", tmp_path / "t.txt", "--epsilon", 1e-4,
               "--upper-steps", 40, "--interval-steps", 20, "--attack-starts", 1, "--attack-steps", 4)
    for key in ("certified", "attained", "output_change", "scope", "layer", "pool", "chain", "centre", "n"):
        assert got[key] == want[key], key
    assert got["slope"] is None and got["attained"] <= got["certified"]


def test_robustness_equals_cli(minilm, tmp_path):
    text = "Attention is an operator on measures."
    (tmp_path / "t.txt").write_text(text)
    model = lipattn.Model(minilm)
    fast = dict(upper_steps=40, interval_steps=20, attack_starts=1, attack_steps=6)
    got = model.robustness(text=text, scope="block", layer=0, delta=1e-3, **fast)
    want = cli(minilm, "--layer", 0, "--scope", "block", "--text", tmp_path / "t.txt", "--delta", 1e-3,
               "--upper-steps", 40, "--interval-steps", 20, "--attack-starts", 1, "--attack-steps", 6,
               command="robustness")
    for key in ("certified_radius", "attack_radius", "ratio", "delta", "certified_change", "scope", "layer", "n",
                "centre_upper", "failure_probability", "certified_kind"):
        assert got[key] == want[key], key
    y, x = got["attack_input"], got["x"]
    assert abs(np.linalg.norm(y - x) - got["attack_radius"]) <= 1e-9 * got["attack_radius"]
    assert got["certified_radius"] <= got["attack_radius"]
    for kwargs, words in [(dict(), "exactly one tolerance"), (dict(delta=1e-3, cosine=0.9), "exactly one"),
                          (dict(cosine=0.9), "pooled"), (dict(delta=-1.0), "delta")]:
        with pytest.raises(ValueError, match=words):
            model.robustness(x, scope="block", layer=0, **fast, **kwargs)


@pytest.mark.parametrize("scope,layer", [("attention", 1), ("block", 1), ("model", None)])
def test_rotary_certificate_equals_cli(tmp_path, scope, layer):
    """A Llama checkpoint (grouped heads, biases): Model.certify and Model.robustness equal the CLI."""
    from tiny_decoders import build, config, save
    save(build(config("llama", num_key_value_heads=1, attention_bias=True)), tmp_path)
    x = 0.5 * np.random.default_rng(2).standard_normal((5, 32))
    np.save(tmp_path / "x.npy", x)
    where = [] if layer is None else ["--layer", layer]
    model = lipattn.Model(tmp_path)
    got = model.certify(layer, 1e-5, x, scope=scope, interval_steps=20, **FAST)
    want = cli(tmp_path, *where, "--scope", scope, "--tokens", tmp_path / "x.npy", "--epsilon", 1e-5,
               "--upper-steps", 40, "--interval-steps", 20, "--attack-starts", 1, "--attack-steps", 4)
    assert got["family"] == "llama" and got["attained"] <= got["certified"]
    for key in ("certified", "attained", "output_change", "scope", "layer", "centre", "slope", "chain", "n"):
        assert got[key] == want[key], key
    if scope != "attention":
        got = model.robustness(x, scope=scope, layer=layer, delta=1e-3, interval_steps=20, upper_steps=40)
        want = cli(tmp_path, *where, "--scope", scope, "--tokens", tmp_path / "x.npy", "--delta", 1e-3,
                   "--upper-steps", 40, "--interval-steps", 20, command="robustness")
        for key in ("certified_radius", "attack_radius", "ratio", "certified_change", "scope", "family"):
            assert got[key] == want[key], key


def test_robustness_on_either_state(minilm):
    """`Model.robustness(attention=...)` (docs/streaming.md#blocks-and-models): MiniLM block 1 on
    the streaming chain gives the dense certified radius (to rounding: every radius the search
    tries is decided alike) and the dict says which state ran; under
    a budget that refuses the dense certificate (scope attention, n = 300) `attention="dense"` is a
    MemoryError naming the budget and `auto` streams; a bad name is a ValueError naming it."""
    model = lipattn.Model(minilm)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, model.hidden_size))
    fast = dict(scope="block", layer=1, delta=0.05, upper_steps=30, interval_steps=10, attack_starts=0,
                attack_steps=3)
    r = {a: model.robustness(x, attention=a, **fast) for a in ("dense", "streaming", "auto")}
    assert {a: v["attention"] for a, v in r.items()} == {"dense": "dense", "streaming": "streaming", "auto": "dense"}
    assert r["auto"]["certified_radius"] == r["dense"]["certified_radius"]
    # The search starts from Lemma P's bound at X, equal on the two states to rounding.
    for key in ("certified_radius", "certified_change", "centre_upper"):
        assert r["streaming"][key] == pytest.approx(r["dense"][key], rel=1e-9, abs=0)
    long = rng.standard_normal((300, model.hidden_size))
    small = dict(scope="attention", layer=0, delta=0.05, upper_steps=10, interval_steps=4, attack_starts=0,
                 attack_steps=1)
    lipattn.set_max_memory("176M")  # dense 197 MB, streaming 155 MB (2 threads)
    try:
        with pytest.raises(MemoryError, match="budget"):
            model.robustness(long, attention="dense", **small)
        auto = model.robustness(long, **small)
    finally:
        lipattn.set_max_memory(None)
    assert auto["attention"] == "streaming" and auto["n"] == 300 and auto["certified_radius"] > 0
    with pytest.raises(ValueError, match="attention"):
        model.robustness(x, attention="sparse", **fast)


def test_every_interval(tmp_path):
    """`intervals="all"`: a Lemma P run on every run of two steps or more, reported and equal to the CLI's
    `--intervals all`; the default is `blocks`; scope attention has no chain (None); a bad name is a ValueError
    naming `intervals`."""
    import tiny_bert

    tiny_bert.write(tmp_path)
    model = lipattn.Model(tmp_path)
    x = 0.5 * np.random.default_rng(6).standard_normal((4, model.hidden_size))
    np.save(tmp_path / "x.npy", x)
    opts = dict(scope="model", pool="mean-normalised", interval_steps=20, **FAST)
    got = {i: model.certify(None, 1e-4, x, intervals=i, **opts) for i in ("blocks", "all")}
    assert {i: r["intervals"] for i, r in got.items()} == {"blocks": "blocks", "all": "all"}
    assert model.certify(None, 1e-4, x, **opts)["certified"] == got["blocks"]["certified"]
    assert len(got["all"]["chain"]["runs"]) > len(got["blocks"]["chain"]["runs"])
    # More runs share the failure probability: at a small radius `all` is within that share of `blocks`.
    assert got["all"]["certified"] <= 1.01 * got["blocks"]["certified"]
    assert got["all"]["attained"] <= got["all"]["certified"]
    want = cli(tmp_path, "--scope", "model", "--pool", "mean-normalised", "--tokens", tmp_path / "x.npy",
               "--epsilon", 1e-4, "--interval-steps", 20, "--upper-steps", 40, "--attack-starts", 1,
               "--attack-steps", 4, "--intervals", "all")
    for key in ("certified", "attained", "output_change", "intervals", "chain"):
        assert got["all"][key] == want[key], key
    r = model.robustness(x, scope="model", pool="mean-normalised", delta=0.01, intervals="all", interval_steps=20,
                         upper_steps=40, attack_starts=0, attack_steps=2)
    assert r["intervals"] == "all" and r["certified_radius"] > 0
    single = model.certify(0, 1e-4, x, intervals="all", **FAST)
    assert single["intervals"] is None and single["chain"] is None
    with pytest.raises(ValueError, match="intervals"):
        model.certify(None, 1e-4, x, intervals="every", **opts)
    with pytest.raises(ValueError, match="intervals"):
        model.robustness(x, scope="block", layer=0, delta=0.01, intervals="every")
