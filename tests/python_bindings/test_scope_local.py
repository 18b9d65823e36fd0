"""Model.scope_local_constant: the same request and report as `lipattn local --scope` (same keys,
same values), X from an array, a text or token ids, and its errors."""
import json
import os
import subprocess

import numpy as np
import pytest

import lipattn


def cli(minilm, *args):
    out = subprocess.run([os.environ["LIPATTN_BIN"], "local", "--model", minilm, "--json", *map(str, args)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("scope,layer,pool", [("block", 2, "none"), ("sublayer-residual-norm", 0, "none"),
                                              ("model", None, "mean-normalised")])
def test_equals_cli(minilm, tmp_path, scope, layer, pool):
    text = "The quick brown fox jumps over the lazy dog."
    (tmp_path / "t.txt").write_text(text)
    model = lipattn.Model(minilm)
    got = model.scope_local_constant(scope, layer=layer, text=text, pool=pool)
    args = ["--text", tmp_path / "t.txt", "--scope", scope, "--pool", pool]
    if layer is not None:
        args += ["--layer", layer]
    want = cli(minilm, *args)
    for key in ("sigma", "iterations", "n", "d", "rows_out", "d_out", "radius", "certified", "ratio", "scope",
                "pool", "layer", "family", "input", "kind", "norm", "dtype"):
        assert got[key] == want[key], key
    x, v = got["x"], got["vector"]
    assert x.shape == (want["n"], 384) and v.shape == x.shape and abs(np.linalg.norm(v) - 1) < 1e-12
    assert got["output"].shape == (want["rows_out"], want["d_out"])
    # The same X given as an array gives the same answer.
    again = model.scope_local_constant(scope, x, layer=layer, pool=pool)
    assert again["sigma"] == got["sigma"]
    ids = model.tokenize(text)
    by_ids = model.scope_local_constant(scope, ids=list(ids), layer=layer, pool=pool)
    assert by_ids["sigma"] == got["sigma"]


def test_errors(minilm):
    model = lipattn.Model(minilm)
    x = np.zeros((4, 384))
    with pytest.raises(ValueError, match="scope 'model' runs every layer"):
        model.scope_local_constant("model", x, layer=0)
    with pytest.raises(ValueError, match="give the layer"):
        model.scope_local_constant("block", x)
    with pytest.raises(ValueError, match="applies to scope 'model' only"):
        model.scope_local_constant("block", x, layer=0, pool="mean")
    with pytest.raises(ValueError, match="blocks"):
        model.scope_local_constant("blocks", x, layer=0)
    with pytest.raises(ValueError, match="exactly one of x, text and ids"):
        model.scope_local_constant("block", x, layer=0, text="a")
    with pytest.raises(ValueError, match="width|384|shape"):
        model.scope_local_constant("block", np.zeros((4, 10)), layer=0)
