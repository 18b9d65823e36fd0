"""`lipattn analyze` on the rotary families (docs/analysis.md#rotary-families), on tiny random
checkpoints saved by transformers: soundness (every attained value <= the B7 bound), the gap, the
radius against the RMSNorm radius computed here, the rotary form of every operator, the files, and
the real-text value of a window against `lipattn hidden` + the RMSNorm applied here + `lipattn
local` on the same tokens."""
import csv
import json
import os

import numpy as np
import pytest

import safetensors_np
from cli import run
from tiny_decoders import TEXT, build, config, save

CASES = [
    # (family, config keys, what the operator's rotary form must say)
    ("llama", {}, {"kv_heads": 2, "window": None, "qk_norm": False, "softcap": None}),
    ("mistral", {"sliding_window": 4}, {"kv_heads": 2, "window": 4, "qk_norm": False, "softcap": None}),
    ("qwen3", {}, {"kv_heads": 2, "window": None, "qk_norm": True, "softcap": None}),
    ("gemma2", {}, {"kv_heads": 2, "qk_norm": False, "softcap": 3.0}),
]
NS = [4, 8]


def analyze(lipattn_bin, path, out, *extra):
    (path / "t.txt").write_text(TEXT)
    r = run(lipattn_bin, "analyze", path, "--text", path / "t.txt", "--ns", "4,8", "--windows", 1, "--out", out,
            "--json", "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep == json.load(open(out / "report.json"))
    return rep


def attention_input(lipattn_bin, path, layer, n, tmp_path):
    """The RMSNorm output the sublayer of `layer` reads on the first n tokens of TEXT: the hidden
    state from `lipattn hidden`, normalised here by the checkpoint's input_layernorm."""
    h_path = tmp_path / "h.npy"
    r = run(lipattn_bin, "hidden", "--model", path, "--text", path / "t.txt", "--layer", layer, "--max-tokens", n,
            "--out", h_path)
    assert r.returncode == 0, r.stderr
    h = np.load(h_path)
    cfg = json.loads((path / "config.json").read_text())
    g = safetensors_np.load(os.path.join(path, "model.safetensors"))[f"model.layers.{layer}.input_layernorm.weight"]
    g = g.astype(np.float64) + (1.0 if cfg["model_type"].startswith("gemma") else 0.0)
    return g * h / np.sqrt((h ** 2).mean(axis=1, keepdims=True) + cfg["rms_norm_eps"])


@pytest.mark.parametrize("family,keys,form", CASES)
def test_rotary_report(lipattn_bin, tmp_path, family, keys, form):
    path, out = tmp_path / "model", tmp_path / "out"
    path.mkdir()
    save(build(config(family, **keys)), path)
    rep = analyze(lipattn_bin, path, out)
    assert (rep["family"], rep["num_layers"], rep["heads"], rep["causal"], rep["ns"]) == (family, 3, 4, True, NS)
    assert rep["rotary"]["kv_heads"] == 2 and rep["rotary"]["group"] == 2
    assert "B7" in rep["rotary"]["certified"] and "RMSNorm" in rep["rotary"]["radius"]
    ops = rep["operators"]
    assert len(ops) == 3 * 5 and [o["head"] for o in ops[:5]] == [None, 0, 1, 2, 3]
    cfg = json.loads((path / "config.json").read_text())
    t = safetensors_np.load(os.path.join(path, "model.safetensors"))
    for dom in rep["domains"]:
        g = t[f"model.layers.{dom['layer']}.input_layernorm.weight"].astype(np.float64)
        if family.startswith("gemma"):
            g = 1 + g
        assert dom["radius"] == pytest.approx(np.sqrt(g.size) * np.abs(g).max(), rel=1e-12)
        assert 0 < dom["observed_max_norm"] <= dom["radius"]
    for o in ops:
        rot = o["operator"]["rotary"]
        assert rot["family"] == family and rot["heads"] == 4 and rot["rope_type"] == "default"
        assert rot["rope_theta"] == cfg.get("rope_theta", cfg.get("rope_parameters", {}).get("rope_theta"))
        for k, v in form.items():
            assert rot[k] == v, (k, rot)
        assert o["operator"]["mask"] == "causal" and o["operator"]["radius"] == o["radius"]
        assert family in o["operator"]["description"] and "rotary attention" in o["operator"]["description"]
        for p in o["points"]:
            cert = p["certified"]["frobenius"]
            assert cert > 0 and p["certified"]["w1"] is None
            attained = [v for v in p["text"] + [p["adversarial"], p["transition"]] if v is not None]
            assert len(p["text"]) == 1 and attained
            # Attained values are lower bounds on the constant B7 bounds from above.
            assert max(attained) <= cert, (o["layer"], o["head"], p)
            assert p["gap"] == pytest.approx(cert / max(attained), rel=1e-12)
            if p["n"] >= 3:
                assert p["transition"] is not None
    if family == "gemma2":
        # Gemma 2 alternates sliding and global layers: each operator names its own layer's window.
        windows = {o["layer"]: o["operator"]["rotary"]["window"] for o in ops}
        assert windows == {0: 5, 1: None, 2: 5}
    rows = list(csv.DictReader(open(out / "operators.csv")))
    assert len(rows) == len(ops)
    assert {(r["family"], r["kv_heads"], r["certified_bound"]) for r in rows} == {(family, "2", "B7")}
    for name in ["points.csv", "layer0.svg", "layer0.png", "layer2.svg", "exponents.svg", "exponents.png"]:
        assert (out / name).stat().st_size > 500, name


@pytest.mark.parametrize("family,keys,layer,head", [
    ("llama", {}, 1, None),
    ("llama", {}, 2, 3),
    ("mistral", {"sliding_window": 4}, 1, None),
    ("qwen3", {}, 2, 1),
    ("gemma2", {}, 1, 2),
])
def test_text_value_is_the_local_constant_of_the_first_window(lipattn_bin, tmp_path, family, keys, layer, head):
    path = tmp_path / "model"
    path.mkdir()
    save(build(config(family, **keys)), path)
    rep = analyze(lipattn_bin, path, tmp_path / "out", "--layers", layer)
    x = attention_input(lipattn_bin, path, layer, 8, tmp_path)
    np.save(tmp_path / "x.npy", x)
    args = ["local", "--model", path, "--layer", layer, "--tokens", tmp_path / "x.npy", "--tol", "1e-9", "--json"]
    if head is not None:
        args += ["--head", head]
    r = run(lipattn_bin, *args)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)["sigma"]
    o = next(o for o in rep["operators"] if o["layer"] == layer and o["head"] == head)
    got = o["points"][1]["text"][0]
    assert want * (1 - 1e-3) <= got <= want * (1 + 1e-9)
    # The RMSNorm output the analysis measured on lies in its ball.
    assert np.linalg.norm(x, axis=1).max() <= o["radius"]


@pytest.mark.parametrize("family,keys,layer,head", [
    ("llama", {}, 1, 2),
    ("mistral", {"sliding_window": 4}, 2, 0),
    ("gemma2", {}, 0, 1),
])
def test_certified_and_transition_values_equal_lipschitz(lipattn_bin, tmp_path, family, keys, layer, head):
    """A query head's B7 bound and its transition value at n = 8 are what `lipattn lipschitz --model`
    certifies and measures before climbing (its `frobenius_transition`) at the report's R."""
    path = tmp_path / "model"
    path.mkdir()
    save(build(config(family, **keys)), path)
    rep = analyze(lipattn_bin, path, tmp_path / "out", "--layers", layer)
    o = next(o for o in rep["operators"] if o["layer"] == layer and o["head"] == head)
    r = run(lipattn_bin, "lipschitz", "--model", path, "--layer", layer, "--head", head, "--radius", repr(o["radius"]),
            "--n", 8, "--starts", 0, "--steps", 1, "--json")
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)
    p = o["points"][1]
    assert p["n"] == 8
    assert p["certified"]["frobenius"] == ref["certified"]["frobenius"]
    assert p["transition"] == pytest.approx(ref["attained"]["frobenius_transition"], rel=1e-4)
