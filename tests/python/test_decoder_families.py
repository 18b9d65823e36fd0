"""The rotary decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2) against transformers.

No trained checkpoint of these families can be installed offline here, so every checkpoint is a tiny
random model built and saved by transformers itself (tiny_decoders.py). For each family and variant,
`lipattn hidden` must give transformers' float64 `output_hidden_states` at every layer to 1e-10
relative, and its token ids must be those of transformers' own tokenizer.

transformers computes the rotary angles, the RMSNorms and the eager softmax in float32 even in a
float64 model; for the 1e-10 comparison the reference computes them in float64
(`tiny_decoders.float64_reference`), and the unpatched transformers must then differ from lipattn by
no more than that float32 rounding (1e-5), which shows the patches are the only difference.
"""
import json

import numpy as np
import pytest
import torch
import transformers

from cli import run
from tiny_decoders import TEXT, TEXTS, TOL, TOL_F32, build, config, ids_of, load, reference, rel, save

def lipattn_states(lipattn_bin, path, layers):
    states = []
    for layer in range(layers + 1):
        out = run(lipattn_bin, "hidden", "--model", path, "--text", path / "t.txt", "--layer", layer,
                  "--out", path / "h.npy", "--ids-out", path / "ids.npy")
        assert out.returncode == 0, out.stderr
        states.append(np.load(path / "h.npy"))
    return states, np.load(path / "ids.npy")


def compare(lipattn_bin, path, tol=TOL):
    """Saves `model`, reloads it with transformers in float64, and compares every hidden state."""
    ref_model = load(path)
    want = reference(ref_model)
    got, ids = lipattn_states(lipattn_bin, path, len(want) - 1)
    np.testing.assert_array_equal(ids, ids_of(TEXT))
    errs = [rel(g, w) for g, w in zip(got, want)]
    assert max(errs) < tol, errs
    unpatched = reference(ref_model, patched=False)
    f32 = [rel(g, w) for g, w in zip(got, unpatched)]
    assert max(f32) < TOL_F32, f32
    return errs, f32


# (family, config keys, what the case shows, others): transformers' output with the keys of each
# of `others` set over them, at the same weights, must differ from the case's (by more than MATTERS),
# so that a lipattn ignoring those keys would fail.
MATTERS = 1e-6
CASES = [
    ("llama", {}, "default rope, GQA 2", []),
    ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}, "MQA, tied", []),
    ("llama", {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True, "head_dim": 12,
               "rope_theta": 500.0}, "biases, head_dim given separately, MHA", [{"rope_theta": 10000.0}]),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0}}, "linear",
     [{"rope_parameters": None}]),
    ("llama", {"max_position_embeddings": 10, "rope_parameters": {"rope_type": "dynamic", "factor": 3.0,
                                                                   "rope_theta": 10000.0}},
     "dynamic, n beyond max_position_embeddings", [{"rope_parameters": None}, {"max_position_embeddings": 40}]),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                   "rope_theta": 10000.0}}, "llama3", [{"rope_parameters": None}]),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                   "beta_fast": 8.0, "beta_slow": 1.0, "rope_theta": 10000.0}}, "yarn",
     [{"rope_parameters": None}]),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                   "beta_fast": 8.0, "beta_slow": 1.0, "truncate": False, "mscale": 2.0,
                                   "mscale_all_dim": 1.0, "rope_theta": 10000.0}}, "yarn, no truncation, mscale",
     [{"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                           "beta_fast": 8.0, "beta_slow": 1.0, "rope_theta": 10000.0}}]),
    ("mistral", {"sliding_window": 6}, "sliding window below n", [{"sliding_window": None}]),
    ("qwen2", {}, "q/k/v biases", []),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1},
     "windows from max_window_layers on", [{"use_sliding_window": False}, {"max_window_layers": 2}]),
    ("qwen3", {}, "q/k norms", []),
    ("gemma", {}, "(1 + w) norms, scaled embeddings, GeGLU", []),
    ("gemma2", {}, "sandwich norms, soft-capping, alternating windows, query_pre_attn_scalar",
     [{"attn_logit_softcapping": None}, {"sliding_window": 64}, {"query_pre_attn_scalar": 8}]),
]


def moved(path, family, keys, others):
    """Checks that transformers' own output moves with each of `others` at the saved weights."""
    base = load(path)
    want = reference(base, patched=False)
    for other in others:
        cfg = config(family, **{**keys, **other})
        model = transformers.AutoModel.from_config(cfg, dtype=torch.float64).eval()
        model.load_state_dict(base.state_dict())
        got = reference(model, patched=False)
        assert max(rel(g, w) for g, w in zip(got, want)) > MATTERS, other


@pytest.mark.parametrize("family,keys,what,others", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hidden_states_equal_transformers(lipattn_bin, tmp_path, family, keys, what, others):
    model = build(config(family, **keys))
    save(model, tmp_path)
    errs, f32 = compare(lipattn_bin, tmp_path)
    print(f"{family} ({what}): max rel err {max(errs):.2e} (unpatched transformers {max(f32):.2e})")
    moved(tmp_path, family, keys, others)


def test_bare_model_sharded_and_half_precision(lipattn_bin, tmp_path):
    """A bare LlamaModel save (no `model.` prefix), a sharded save, and F32 / BF16 / F16 weights,
    compared with transformers loading the same files in float64."""
    model = build(config("llama"), causal_lm=False)
    bare = tmp_path / "bare"
    save(model, bare, max_shard_size="20KB")
    assert (bare / "model.safetensors.index.json").exists()
    compare(lipattn_bin, bare)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        half = tmp_path / str(dtype).split(".")[1]
        save(build(config("gemma2")).to(dtype), half)
        compare(lipattn_bin, half)


def test_token_ids_equal_transformers_tokenizer(lipattn_bin, tmp_path):
    """BOS from tokenizer.json's post-processor, as transformers 5.25 reads it; tokenizer_config.json's
    add_bos_token / add_eos_token do not change transformers' ids when tokenizer.json has a
    template, and lipattn's ids are the same."""
    model = build(config("llama", num_hidden_layers=1))
    save(model, tmp_path)
    for flags in ({}, {"add_bos_token": True, "add_eos_token": True}):
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", **flags}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
        for text in TEXTS + ["wisdom and foolishness"]:
            (tmp_path / "t.txt").write_text(text)
            out = run(lipattn_bin, "hidden", "--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", 0,
                      "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
            assert out.returncode == 0, out.stderr
            want = hf(text)["input_ids"]
            assert want[0] == 1
            np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), want)


def test_unsupported_commands_and_values_are_refused(lipattn_bin, tmp_path):
    model = build(config("llama", num_hidden_layers=1))
    save(model, tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((5, 32)))
    # The maps of measures only (forward, invert, fixed-point in token space and the token flow
    # run: test_rotary_dynamics_cli.py).
    commands = [
        ["fixed-point", "--model", tmp_path, "--layer", 0, "--space", "measure", "--json"],
    ]
    for args in commands:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "model_type 'llama'" in out.stderr and "rotary" in out.stderr, (args, out.stderr)
        assert "no map of measures" in out.stderr and "(invert, fixed-point" in out.stderr, (args, out.stderr)
    out = run(lipattn_bin, "forward", "--model", tmp_path, "--layer", 0, "--tokens", x, "--out", tmp_path / "y.npy")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                              "long_factor": [1.0] * 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = run(lipattn_bin, "hidden", "--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", 1,
              "--out", tmp_path / "h.npy")
    assert out.returncode != 0 and "rope_parameters" in out.stderr and "longrope" in out.stderr, out.stderr
