"""lipattn.Model on the rotary decoder families: hidden states and token ids as transformers gives
them, local constants against transformers' attention Jacobian, and the BERT/GPT-2 attention
analyses refused with a ModelError naming the feature; Model.analyze equal to the CLI's report."""
import json

import numpy as np
import pytest

import lipattn
from cli import run
from tiny_decoders import TEXT, TOL, attention_top_singular, build, config, ids_of, load, reference, rel, save


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_model_hidden_states_equal_transformers(tmp_path, family):
    save(build(config(family)), tmp_path)
    want = reference(load(tmp_path))
    model = lipattn.Model(tmp_path)
    assert model.family == family and model.causal
    np.testing.assert_array_equal(model.tokenize(TEXT), ids_of(TEXT))
    states = model.hidden_states(TEXT)
    assert len(states) == len(want)
    assert max(rel(g, w) for g, w in zip(states, want)) < TOL
    assert rel(model.hidden_states(TEXT, layer=1), want[1]) < TOL


def test_attention_analyses_refuse_rotary_models(tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    # Model.attention_layer gives the rotary sublayer (test_rotary_layer.py); the plain operator
    # is refused.
    for call in (lambda: lipattn.AttentionLayer.from_model(tmp_path, 0),):
        with pytest.raises(lipattn.ModelError, match="model_type 'llama'.*rotary.*lipattn hidden") as e:
            call()
        # The message names the calls that do run this model, the dynamics among them.
        for works in ("Model.local_constant", "Model.lipschitz", "lipattn forward --model", "lipattn invert",
                      "lipattn fixed-point", "lipattn flow", "Model.attention_layer"):
            assert works in str(e.value), (works, str(e.value))


def test_analyze_equals_cli_on_a_rotary_model(lipattn_bin, tmp_path):
    """Model.analyze on a tiny Llama (grouped-query) is `lipattn analyze --json`: the same report,
    only `seconds` and the name of the text's source differ."""
    save(build(config("llama")), tmp_path)
    (tmp_path / "t.txt").write_text(TEXT)
    r = run(lipattn_bin, "analyze", tmp_path, "--text", tmp_path / "t.txt", "--ns", "4,8", "--windows", 1,
            "--json", "--quiet", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)
    got = lipattn.Model(tmp_path).analyze(TEXT, ns=[4, 8], windows=1)
    assert set(got) == set(ref) and got["rotary"]["kv_heads"] == 2
    assert got["text_source"] == "text given by the caller" and ref["text_source"] == str(tmp_path / "t.txt")
    for rep in (got, ref):
        # The run's estimate is calibrated by timing, like `seconds`.
        assert rep.pop("estimate")["kind"] == "estimate"
        del rep["seconds"], rep["text_source"]
    assert got == ref
    assert len(got["operators"]) == 3 * 5 and all(o["operator"]["rotary"]["family"] == "llama"
                                                  for o in got["operators"])


@pytest.mark.parametrize("family,keys,layer,head", [
    ("llama", {}, 0, None),
    ("mistral", {"sliding_window": 4}, 0, 1),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}, 1, None),
    ("qwen3", {}, 0, None),
    ("gemma", {}, 0, 2),
    ("gemma2", {}, 0, None),
])
def test_model_local_constant_equals_transformers_jacobian(tmp_path, family, keys, layer, head):
    """Model.local_constant: sigma against the largest singular value of the Jacobian of
    transformers' own attention module (its float32 steps in float64), and the CLI's JSON keys."""
    save(build(config(family, **keys)), tmp_path)
    x = np.random.default_rng(7).standard_normal((9, 32))
    model = lipattn.Model(tmp_path)
    r = model.local_constant(layer, x, head=head, tol=1e-12)
    exact, window = attention_top_singular(tmp_path, layer, x, head)
    assert abs(r.sigma - exact) <= 1e-8 * exact, (r.sigma, exact)
    assert r.dtype == "f64" and r.causal and r.head == head and r.vector.shape == x.shape
    d = r.to_dict()
    rot = d["operator"]["rotary"]
    assert rot["family"] == family and rot["window"] == window and rot["positions"] == "0..n-1"
    assert d["kind"] == "attained_lower_bound"
    # The same request through the float32 path of the input gives the float64 number: the model
    # path always runs in float64.
    assert model.local_constant(layer, x.astype(np.float32), head=head, tol=1e-12).dtype == "f64"
    # dtype='f32': Lanczos in float32, its vector refined in float64 (`lipattn local --dtype f32`).
    f32 = model.local_constant(layer, x, head=head, tol=1e-6, dtype="f32")
    assert f32.dtype == "f32" and abs(f32.sigma - exact) <= 1e-6 * exact, (f32.sigma, exact)


def test_model_local_constant_errors(tmp_path):
    save(build(config("llama", num_hidden_layers=1)), tmp_path)
    model = lipattn.Model(tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 32))
    with pytest.raises(ValueError, match="head"):
        model.local_constant(0, x, head=4)
    with pytest.raises(ValueError, match="layer"):
        model.local_constant(1, x)
    with pytest.raises(ValueError, match="32"):
        model.local_constant(0, x[:, :10])
    with pytest.raises(ValueError, match="method"):
        model.local_constant(0, x, method="svd")
    with pytest.raises(ValueError, match="dtype"):
        model.local_constant(0, x, dtype="f16")
    with pytest.raises(ValueError, match="dtype"):
        model.local_constant(0, x, dtype="f32", method="power")


def test_model_lipschitz_is_the_cli_report(tmp_path, lipattn_bin):
    """Model.lipschitz on a rotary model: the CLI's JSON key for key (same searches, same seeds),
    the attaining input in the ball, and the refusals of what rotary attention has not."""
    import json
    import subprocess
    save(build(config("llama", num_key_value_heads=2)), tmp_path)
    model = lipattn.Model(tmp_path)
    radius = 32 ** 0.5
    for head in [None, 1]:
        r = model.lipschitz(0, radius, 6, head=head)
        args = [lipattn_bin, "lipschitz", "--model", str(tmp_path), "--layer", "0", "--radius", repr(radius),
                "--n", "6", "--json"] + ([] if head is None else ["--head", str(head)])
        cli = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
        for key in ["certified", "attained", "ratio", "bounds", "operator", "domain", "notes"]:
            assert r[key] == cli[key], key
        x = r["inputs"]["frobenius_x"]
        assert x.shape == (6, 32) and np.linalg.norm(x, axis=1).max() <= radius * (1 + 1e-12)
        assert 0 < r["attained"]["frobenius"] <= r["certified"]["frobenius"]
    with pytest.raises(ValueError, match="rotary attention is causal"):
        model.lipschitz(0, radius, 6, causal=False)
