"""A two-layer BERT-layout checkpoint with a WordPiece tokenizer.json, written with NumPy, for the
fuzz tests of the CLI and of the Python package (small enough that every run takes milliseconds)."""
import json

import numpy as np

import safetensors_np

D, HEADS, FFN, LAYERS, POS = 8, 2, 16, 2, 16
WORDS = ["the", "a", "cat", "sat", "on", "mat", "and", "dog", "ran", "far", "away"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def write(d):
    """Writes config.json, model.safetensors and tokenizer.json into directory `d`."""
    rng = np.random.default_rng(7)
    t = {"embeddings.word_embeddings.weight": rng.standard_normal((len(VOCAB), D)),
         "embeddings.position_embeddings.weight": 0.5 * rng.standard_normal((POS, D)),
         "embeddings.token_type_embeddings.weight": 0.5 * rng.standard_normal((2, D)),
         "embeddings.LayerNorm.weight": np.ones(D), "embeddings.LayerNorm.bias": np.zeros(D)}
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        for name, shape in [("attention.self.query", (D, D)), ("attention.self.key", (D, D)),
                            ("attention.self.value", (D, D)), ("attention.output.dense", (D, D)),
                            ("intermediate.dense", (FFN, D)), ("output.dense", (D, FFN))]:
            t[p + name + ".weight"] = 0.3 * rng.standard_normal(shape)
            t[p + name + ".bias"] = 0.1 * rng.standard_normal(shape[0])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = 1 + 0.1 * rng.standard_normal(D)
            t[p + ln + ".bias"] = 0.1 * rng.standard_normal(D)
    safetensors_np.save_f32(d / "model.safetensors", t)
    (d / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": D, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "intermediate_size": FFN, "max_position_embeddings": POS, "vocab_size": len(VOCAB),
        "layer_norm_eps": 1e-12, "hidden_act": "gelu"}))
    special = [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, w in enumerate(VOCAB[:5])]
    (d / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": None,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {w: i for i, w in enumerate(VOCAB)}}}))
