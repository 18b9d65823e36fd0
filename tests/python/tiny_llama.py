"""A two-layer Llama-layout checkpoint (grouped-query attention, 2 query heads on 1 kv head),
written with NumPy, for the tests of the Python package that need a rotary layer without importing
torch (the fuzz child, the integer checks)."""
import json

import numpy as np

import safetensors_np

D, HEADS, KV, FFN, LAYERS, VOCAB = 8, 2, 1, 16, 2, 12


def write(d):
    """Writes config.json and model.safetensors into directory `d`."""
    rng = np.random.default_rng(11)
    hd = D // HEADS
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, D)), "model.norm.weight": np.ones(D)}
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        for name, shape in [("self_attn.q_proj", (HEADS * hd, D)), ("self_attn.k_proj", (KV * hd, D)),
                            ("self_attn.v_proj", (KV * hd, D)), ("self_attn.o_proj", (D, HEADS * hd)),
                            ("mlp.gate_proj", (FFN, D)), ("mlp.up_proj", (FFN, D)), ("mlp.down_proj", (D, FFN))]:
            t[p + name + ".weight"] = 0.4 * rng.standard_normal(shape)
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(D)
    safetensors_np.save_f32(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": D, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "num_hidden_layers": LAYERS, "intermediate_size": FFN, "max_position_embeddings": 32,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": True}))
