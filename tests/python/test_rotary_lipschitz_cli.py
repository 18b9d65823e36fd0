"""`lipattn lipschitz --model` on the rotary families: B7 (docs/bounds.md#b7-rotary) beside the
rotary ascent. The attained value must be what `lipattn local` computes at the saved input, that
input must lie in the ball, and no attained value may exceed the certified bound."""
import json

import numpy as np
import pytest

from cli import run
from tiny_decoders import build, config, save

# RMSNorm gains start at 1 (0 offsets for Gemma), so the sublayer's inputs lie in B_R with
# R = sqrt(hidden_size) = sqrt(32) (docs/bounds.md#b7-rms-radius).
RADIUS = 32 ** 0.5

CASES = [
    ("llama", {"num_key_value_heads": 2}, None),
    ("mistral", {"sliding_window": 3}, 1),
    ("qwen3", {}, None),
    ("gemma2", {}, None),
]


@pytest.mark.parametrize("family,keys,head", CASES)
def test_certified_is_above_the_attained_value_it_reports(lipattn_bin, tmp_path, family, keys, head):
    save(build(config(family, **keys)), tmp_path)
    args = ["lipschitz", "--model", tmp_path, "--layer", 0, "--radius", RADIUS, "--n", 8, "--json",
            "--save-input", tmp_path / "x.npy"]
    if head is not None:
        args += ["--head", head]
    out = run(lipattn_bin, *args)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    cert, att = r["certified"]["frobenius"], r["attained"]["frobenius"]
    assert 0 < att <= cert, (att, cert)
    assert r["ratio"]["frobenius"] == pytest.approx(cert / att)
    assert r["operator"]["rotary"]["family"] == family
    assert r["domain"]["causal"] is True and r["domain"]["radius"] == pytest.approx(RADIUS)
    assert r["certified"]["position_w1"] > 0 and r["certified"]["w1"] is None
    names = {b["name"] for b in r["bounds"]}
    assert {"B7-sum", "B7+B4-concat", "B7-W1-sum", "B7-W1+B4-concat"} <= names
    assert all(b["certified"] and b["source"] == "docs/bounds.md#b7-rotary" for b in r["bounds"])
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (8, 32) and np.linalg.norm(x, axis=1).max() <= RADIUS * (1 + 1e-12)
    # The attained value is a local constant at the saved input, as `local` computes it.
    args = ["local", "--model", tmp_path, "--layer", 0, "--tokens", tmp_path / "x.npy", "--json", "--tol", "1e-10"]
    if head is not None:
        args += ["--head", head]
    loc = run(lipattn_bin, *args)
    assert loc.returncode == 0, loc.stderr
    assert json.loads(loc.stdout)["sigma"] == pytest.approx(att, rel=1e-6)


def test_what_rotary_attention_has_not_is_refused(lipattn_bin, tmp_path):
    save(build(config("llama")), tmp_path)
    base = ["lipschitz", "--model", tmp_path, "--layer", 0, "--radius", 1, "--n", 4]
    for extra, words in [(["--kernel", "l2"], "dot-product attention only"),
                         (["--mask", "none"], "rotary attention is causal"),
                         (["--save-pair", tmp_path / "pair"], "no W1 measure pair")]:
        out = run(lipattn_bin, *base, *extra)
        assert out.returncode != 0 and words in out.stderr, (extra, out.stderr)
    assert not (tmp_path / "pair").exists()
