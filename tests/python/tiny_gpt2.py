"""A one-layer GPT-2-layout checkpoint (Conv1D weights stored [in, out], fused c_attn) written with
NumPy, for the CLI and the Python package tests."""
import json

import numpy as np

import safetensors_np

D, HEADS, FFN, VOCAB, POS = 8, 2, 16, 11, 32


def write(d, seed=3):
    """Writes the checkpoint into directory `d`; returns its tensors as float64 (from the stored f32)."""
    rng = np.random.default_rng(seed)
    t = {"wte.weight": rng.standard_normal((VOCAB, D)), "wpe.weight": rng.standard_normal((POS, D)) * 0.5,
         "ln_f.weight": np.ones(D), "ln_f.bias": np.zeros(D)}
    p = "h.0."
    for ln in ("ln_1", "ln_2"):
        t[p + ln + ".weight"] = 1 + 0.1 * rng.standard_normal(D)
        t[p + ln + ".bias"] = 0.1 * rng.standard_normal(D)
    for name, shape in [("attn.c_attn", (D, 3 * D)), ("attn.c_proj", (D, D)), ("mlp.c_fc", (D, FFN)), ("mlp.c_proj", (FFN, D))]:
        t[p + name + ".weight"] = 0.4 * rng.standard_normal(shape)
        t[p + name + ".bias"] = 0.1 * rng.standard_normal(shape[1])
    safetensors_np.save_f32(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": D, "n_head": HEADS, "n_layer": 1,
                                                "n_positions": POS, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5}))
    return {k: v.astype(np.float32).astype(np.float64) for k, v in t.items()}


def ln_radius(t):
    """B6's radius of the LayerNorm before the attention: sqrt(d) max|gamma| + |beta|."""
    return float(np.sqrt(D) * np.abs(t["h.0.ln_1.weight"]).max() + np.linalg.norm(t["h.0.ln_1.bias"]))
