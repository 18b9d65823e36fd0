"""The commands on a GPT-2-layout checkpoint written here (Conv1D weights stored [in, out], fused
c_attn): `forward` applies the model's causal mask and matches NumPy; `local` and `lipschitz`
certify and measure the masked operator and name it, and an explicit `--mask none` says so."""
import json

import numpy as np
import pytest

import safetensors_np
import tiny_gpt2
from cli import layer_norm_like, run

D, HEADS = tiny_gpt2.D, tiny_gpt2.HEADS


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    return d, tiny_gpt2.write(d)


def test_forward_is_causal_and_matches_numpy(tmp_path, lipattn_bin, gpt2_dir):
    d, t = gpt2_dir
    x = layer_norm_like(np.random.default_rng(0), 7, D)
    np.save(tmp_path / "x.npy", x)
    out = run(lipattn_bin, "forward", "--model", d, "--layer", 0, "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert out.returncode == 0, out.stderr
    w, b = t["h.0.attn.c_attn.weight"], t["h.0.attn.c_attn.bias"]  # [in, out], fused q|k|v
    wq, wk, wv = (w[:, i * D:(i + 1) * D].T for i in range(3))
    bq, bk, bv = (b[i * D:(i + 1) * D] for i in range(3))
    ref = safetensors_np.attention(x, wq, bq, wk, bk, wv, bv, t["h.0.attn.c_proj.weight"].T, t["h.0.attn.c_proj.bias"],
                                   HEADS, causal=True)
    y = np.load(tmp_path / "y.npy")
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-12
    unmasked = safetensors_np.attention(x, wq, bq, wk, bk, wv, bv, t["h.0.attn.c_proj.weight"].T,
                                        t["h.0.attn.c_proj.bias"], HEADS, causal=False)
    assert np.abs(y - unmasked).max() > 1e-3


def test_local_and_lipschitz_name_the_masked_operator(tmp_path, lipattn_bin, gpt2_dir):
    d, t = gpt2_dir
    np.save(tmp_path / "x.npy", layer_norm_like(np.random.default_rng(1), 6, D))
    out = run(lipattn_bin, "local", "--model", d, "--layer", 0, "--tokens", tmp_path / "x.npy", "--json")
    assert out.returncode == 0, out.stderr
    local = json.loads(out.stdout)
    assert local["causal"] is True and local["operator"]["mask"] == "causal"
    out = run(lipattn_bin, "local", "--model", d, "--layer", 0, "--tokens", tmp_path / "x.npy")
    assert out.returncode == 0 and "operator: GPT-2 layer 0 self-attention" in out.stdout and "causal mask" in out.stdout
    radius = tiny_gpt2.ln_radius(t)
    args = ("lipschitz", "--model", d, "--layer", 0, "--radius", radius, "--n", 6, "--starts", 1, "--steps", 3)
    out = run(lipattn_bin, *args, "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    op = r["operator"]
    assert (op["mask"], op["model_mask"], op["n"], op["overrides"]) == ("causal", "causal", 6, [])
    assert "GPT-2 layer 0" in op["description"] and "causal mask" in op["description"]
    assert r["domain"]["causal"] is True and r["certified"]["w1"] is None and r["attained"]["w1_pair"] is None
    # The masked ascent's value, and the local constant wherever its input lies in the ball.
    assert r["certified"]["frobenius"] >= r["attained"]["frobenius"] > 0
    assert local["radius"] > radius or r["certified"]["frobenius"] >= local["sigma"]
    out = run(lipattn_bin, *args)
    assert out.returncode == 0 and "operator: GPT-2 layer 0" in out.stdout
    out = run(lipattn_bin, *args, "--mask", "none", "--json")
    assert out.returncode == 0, out.stderr
    un = json.loads(out.stdout)
    assert un["operator"]["mask"] == "none" and "not the model's causal one" in un["operator"]["description"]
    assert un["certified"]["w1"] is not None and un["attained"]["w1_pair"] is not None
    out = run(lipattn_bin, *args, "--save-pair", tmp_path / "pair")
    assert out.returncode != 0 and "causal" in out.stderr and "panicked" not in out.stderr
