"""Model.certify: the same request and report as `lipattn certify` (same keys, same values), X from
an array or a text, and its errors."""
import json
import os
import subprocess

import numpy as np
import pytest

import lipattn

FAST = dict(upper_steps=40, attack_starts=1, attack_steps=4)


def cli(minilm, *args):
    out = subprocess.run([os.environ["LIPATTN_BIN"], "certify", "--model", minilm, "--json", *map(str, args)],
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
    for kwargs, words in [(dict(epsilon=0.0), "epsilon"), (dict(epsilon=0.1, scope="block"), "scope 'block'"),
                          (dict(epsilon=0.1, ball="l1"), "l1"),
                          (dict(epsilon=0.1, failure_probability=1.5), "failure_probability")]:
        with pytest.raises(ValueError, match=words):
            model.certify(0, x=x, **{**FAST, **kwargs})
    with pytest.raises(ValueError, match="exactly one"):
        model.certify(0, 0.1, x, text="a", **FAST)
