"""The commands on a GPT-2-layout checkpoint written here (Conv1D weights stored [in, out], fused
c_attn): `forward` applies the model's causal mask and matches NumPy, `local` reports the mask,
`lipschitz` refuses causal layers with a clear message."""
import json

import numpy as np
import pytest

import safetensors_np
from cli import layer_norm_like, run

D, HEADS, FFN, VOCAB, POS = 8, 2, 16, 11, 32




@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    rng = np.random.default_rng(3)
    t = {"wte.weight": rng.standard_normal((VOCAB, D)), "wpe.weight": rng.standard_normal((POS, D)) * 0.5,
         "ln_f.weight": np.ones(D), "ln_f.bias": np.zeros(D)}
    p = "h.0."
    for ln in ("ln_1", "ln_2"):
        t[p + ln + ".weight"] = 1 + 0.1 * rng.standard_normal(D)
        t[p + ln + ".bias"] = 0.1 * rng.standard_normal(D)
    for name, shape in [("attn.c_attn", (D, 3 * D)), ("attn.c_proj", (D, D)), ("mlp.c_fc", (D, FFN)), ("mlp.c_proj", (FFN, D))]:
        t[p + name + ".weight"] = 0.4 * rng.standard_normal(shape)
        t[p + name + ".bias"] = 0.1 * rng.standard_normal(shape[1])
    d = tmp_path_factory.mktemp("gpt2")
    safetensors_np.save_f32(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": D, "n_head": HEADS, "n_layer": 1,
                                                "n_positions": POS, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5}))
    return d, {k: v.astype(np.float32).astype(np.float64) for k, v in t.items()}


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


def test_local_reports_mask_and_lipschitz_refuses(tmp_path, lipattn_bin, gpt2_dir):
    d, _ = gpt2_dir
    np.save(tmp_path / "x.npy", layer_norm_like(np.random.default_rng(1), 6, D))
    out = run(lipattn_bin, "local", "--model", d, "--layer", 0, "--tokens", tmp_path / "x.npy", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["causal"] is True
    out = run(lipattn_bin, "lipschitz", "--model", d, "--layer", 0, "--radius", 1, "--n", 4)
    assert out.returncode != 0 and "causal" in out.stderr and "panicked" not in out.stderr
