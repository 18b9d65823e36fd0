"""config.json keys against transformers itself (docs/models.md#config-keys).

Tiny GPT-2 and BERT checkpoints are built and saved by transformers with one key set. Either
`lipattn hidden` reproduces transformers' own float64 `output_hidden_states` at every layer, or it
refuses the checkpoint with an error naming the key: a key that changes the model is never
ignored. Each honoured key is also checked to change transformers' output at these weights, so a
lipattn that ignored it would fail here.
"""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402
import transformers  # noqa: E402

from cli import run  # noqa: E402

WORDS = ["[UNK]"] + "the of to and a in is it you that he was for on are with as".split()
TEXT = "it was the best of times it was the worst of times for you and me"
IDS = [{w: i for i, w in enumerate(WORDS)}.get(w, 0) for w in TEXT.split()]
# Both sides compute in float64 from the same float32 weights: rounding only.
TOL = 1e-9
# reorder_and_upcast_attn computes the scores in float32 and refuses to run in a float64 model, so
# that case is compared with transformers in float32.
TOL_F32 = 1e-5
# A key is shown to matter when transformers' output moves by far more than TOL.
MATTERS = 1e3 * TOL


def gpt2_config(**keys):
    return transformers.GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=16, n_layer=3, n_head=4,
                                   **keys)


def bert_config(**keys):
    return transformers.BertConfig(vocab_size=len(WORDS), max_position_embeddings=32, hidden_size=16,
                                   num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, **keys)


def build(config):
    """The model transformers builds from `config`, in eval mode, with weights large enough that the
    attention is far from uniform (the default initialisation's 0.02 would hide the score scale)."""
    config._attn_implementation = "eager"
    model = transformers.AutoModel.from_config(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            base = 1.0 if "ln" in name.lower() and name.endswith("weight") else 0.0
            p.copy_(base + 0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def reference(model, dtype=torch.float64):
    with torch.no_grad():
        out = model.to(dtype)(input_ids=torch.tensor([IDS]), output_hidden_states=True)
    model.float()
    return [h[0].double().numpy() for h in out.hidden_states]


def save(model, path):
    model.save_pretrained(path)
    (path / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(WORDS)}, "unk_token": "[UNK]"}}))
    (path / "t.txt").write_text(TEXT)


def hidden(lipattn_bin, path, layer):
    return run(lipattn_bin, "hidden", "--model", path, "--text", path / "t.txt", "--layer", layer,
               "--out", path / "h.npy", "--ids-out", path / "ids.npy")


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def check_matches(lipattn_bin, path, model, tol, dtype=torch.float64):
    states = reference(model, dtype)
    save(model, path)
    errs = []
    for layer in range(len(states)):
        out = hidden(lipattn_bin, path, layer)
        assert out.returncode == 0, out.stderr
        np.testing.assert_array_equal(np.load(path / "ids.npy"), IDS)
        errs.append(rel(np.load(path / "h.npy"), states[layer]))
    assert max(errs) < tol, errs
    return states


# (family, keys, other): with `keys` lipattn must match transformers, and transformers' output must
# differ from the one with `other` (same weights), so that ignoring the key would fail the test.
# gelu_pytorch_tanh and gelu_fast are gelu_new up to rounding, so they are set against the erf gelu.
# n_inner changes the weight shapes, so there is no same-weights comparison.
HONOURED = [
    ("gpt2", {}, None),
    ("gpt2", {"scale_attn_weights": False}, {}),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, {}),
    ("gpt2", {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}),
    ("gpt2", {"layer_norm_epsilon": 0.5}, {}),
    ("gpt2", {"activation_function": "gelu"}, {}),
    ("gpt2", {"activation_function": "gelu_pytorch_tanh"}, {"activation_function": "gelu"}),
    ("gpt2", {"activation_function": "gelu_fast"}, {"activation_function": "gelu"}),
    ("gpt2", {"activation_function": "relu"}, {}),
    ("gpt2", {"n_inner": 24}, None),
    ("bert", {}, None),
    ("bert", {"hidden_act": "relu"}, {}),
    ("bert", {"hidden_act": "gelu_new"}, {}),
    ("bert", {"layer_norm_eps": 0.5}, {}),
]


def label(v):
    return json.dumps(v) if isinstance(v, dict) or v is None else str(v)


@pytest.mark.parametrize("family,keys,other", HONOURED, ids=label)
def test_honoured_keys_match_transformers(tmp_path, lipattn_bin, family, keys, other):
    make = gpt2_config if family == "gpt2" else bert_config
    states = check_matches(lipattn_bin, tmp_path, build(make(**keys)), TOL)
    if other is not None:
        assert rel(states[-1], reference(build(make(**other)))[-1]) > MATTERS, (keys, other)


# Keys that change nothing in the hidden states: accepted, and the output is transformers'.
NO_EFFECT = [
    ("gpt2", {"resid_pdrop": 0.3, "embd_pdrop": 0.3, "attn_pdrop": 0.3, "use_cache": False}, TOL),
    ("gpt2", {"reorder_and_upcast_attn": True}, TOL_F32),
    ("gpt2", {"reorder_and_upcast_attn": True, "scale_attn_by_inverse_layer_idx": True}, TOL_F32),
    ("bert", {"chunk_size_feed_forward": 2, "hidden_dropout_prob": 0.3, "type_vocab_size": 3}, TOL),
]


@pytest.mark.parametrize("family,keys,tol", NO_EFFECT, ids=label)
def test_keys_without_effect_are_accepted(tmp_path, lipattn_bin, family, keys, tol):
    make = gpt2_config if family == "gpt2" else bert_config
    dtype = torch.float32 if tol == TOL_F32 else torch.float64
    check_matches(lipattn_bin, tmp_path, build(make(**keys)), tol, dtype)


# Keys that change the model in ways lipattn does not implement: refused, naming the key.
REFUSED = [
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention"),
    ("bert", {"is_decoder": True}, "is_decoder"),
    ("bert", {"is_decoder": True, "add_cross_attention": True}, "add_cross_attention"),
    ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("bert", {"position_embedding_type": "relative_key_query"}, "position_embedding_type"),
]


@pytest.mark.parametrize("family,keys,key", REFUSED, ids=label)
def test_keys_that_change_the_model_are_refused(tmp_path, lipattn_bin, family, keys, key):
    make = gpt2_config if family == "gpt2" else bert_config
    model = build(make(**keys))
    save(model, tmp_path)
    assert key in json.loads((tmp_path / "config.json").read_text()), "transformers did not save the key"
    out = hidden(lipattn_bin, tmp_path, 0)
    assert out.returncode != 0, f"{keys} was accepted"
    assert key in out.stderr and "config.json" in out.stderr, out.stderr
    assert "panicked" not in out.stderr, out.stderr


def test_is_decoder_is_causal_in_transformers(tmp_path):
    """Why BERT's is_decoder is refused rather than ignored: transformers then masks the
    attention causally, a different model from the bidirectional encoder."""
    enc, dec = build(bert_config()), build(bert_config(is_decoder=True))
    assert rel(reference(dec)[-1], reference(enc)[-1]) > 1e-3
