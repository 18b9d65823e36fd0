"""`lipattn hidden` against an independent NumPy forward pass.

The real MiniLM on real text (the GPL-3 licence), with token ids from a WordPiece tokeniser
written here from vocab.txt; and a tiny GPT-2-layout checkpoint written here (Conv1D weights
[in, out], fused QKV, causal, pre-LayerNorm, tanh GELU, final ln_f) with a word-level tokenizer.
"""
import json
import math
import os
import unicodedata

import numpy as np
import pytest

import safetensors_np
from cli import run

TEXT = "/usr/share/common-licenses/GPL-3"
MAX_TOKENS = 128
# Both sides compute in float64 from the same float32 weights, so they differ by rounding only;
# the requirement is 1e-5 and this is far inside it.
TOL = 1e-9



# ---------- BERT tokenisation (BasicTokenizer + WordPiece, as in the original BERT code) ----------


def _is_punct(c):
    o = ord(c)
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_control(c):
    if c in "\t\n\r":
        return False
    return unicodedata.category(c) in ("Cc", "Cf")


def _is_cjk(o):
    return any(a <= o <= b for a, b in [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)])


def basic_tokens(text):
    out = []
    for c in text:
        o = ord(c)
        if o == 0 or o == 0xFFFD or _is_control(c):
            continue
        out.append(" " if c.isspace() else (f" {c} " if _is_cjk(o) else c))
    words = []
    for w in "".join(out).split():
        w = "".join(c for c in unicodedata.normalize("NFD", w.lower()) if unicodedata.category(c) != "Mn")
        cur = ""
        for c in w:
            if _is_punct(c):
                if cur:
                    words.append(cur)
                words.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            words.append(cur)
    return words


def wordpiece_ids(text, vocab_path, max_tokens):
    with open(vocab_path, encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    ids = []
    for w in basic_tokens(text):
        if len(w) > 100:
            ids.append(vocab["[UNK]"])
            continue
        start, pieces = 0, []
        while start < len(w):
            for end in range(len(w), start, -1):
                s = w[start:end] if start == 0 else "##" + w[start:end]
                if s in vocab:
                    pieces.append(vocab[s])
                    start = end
                    break
            else:
                pieces = [vocab["[UNK]"]]
                break
        ids.extend(pieces)
    return np.array([vocab["[CLS]"]] + ids[: max_tokens - 2] + [vocab["[SEP]"]], dtype=np.int64)


# ---------- NumPy forward passes ----------


def layer_norm(x, g, b, eps):
    m = x.mean(axis=1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=1, keepdims=True)
    return g * (x - m) / np.sqrt(v + eps) + b


_erf = np.vectorize(math.erf)


def gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def bert_states(t, ids, heads, eps):
    g = lambda k: t[k].astype(np.float64)
    n = len(ids)
    h = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:n] \
        + g("embeddings.token_type_embeddings.weight")[0]
    h = layer_norm(h, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    states = [h]
    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in t:
        p = lambda k: g(f"encoder.layer.{layer}.{k}")
        lin = lambda x, m: x @ p(m + ".weight").T + p(m + ".bias")
        a = safetensors_np.attention(h, p("attention.self.query.weight"), p("attention.self.query.bias"),
                                     p("attention.self.key.weight"), p("attention.self.key.bias"),
                                     p("attention.self.value.weight"), p("attention.self.value.bias"),
                                     p("attention.output.dense.weight"), p("attention.output.dense.bias"), heads)
        a = layer_norm(h + a, p("attention.output.LayerNorm.weight"), p("attention.output.LayerNorm.bias"), eps)
        f = lin(gelu_erf(lin(a, "intermediate.dense")), "output.dense")
        h = layer_norm(a + f, p("output.LayerNorm.weight"), p("output.LayerNorm.bias"), eps)
        states.append(h)
        layer += 1
    return states


def gpt2_states(t, ids, heads, eps):
    g = lambda k: t[k].astype(np.float64)
    d = g("wte.weight").shape[1]
    h = g("wte.weight")[ids] + g("wpe.weight")[: len(ids)]
    states = [h]
    layer = 0
    while f"h.{layer}.attn.c_attn.weight" in t:
        p = lambda k: g(f"h.{layer}.{k}")
        x = layer_norm(h, p("ln_1.weight"), p("ln_1.bias"), eps)
        w, b = p("attn.c_attn.weight"), p("attn.c_attn.bias")
        # Conv1D [in, out]: the Linear-convention weight of each part is the transpose of a column block.
        wq, wk, wv = (w[:, i * d : (i + 1) * d].T for i in range(3))
        bq, bk, bv = (b[i * d : (i + 1) * d] for i in range(3))
        a = safetensors_np.attention(x, wq, bq, wk, bk, wv, bv, p("attn.c_proj.weight").T, p("attn.c_proj.bias"),
                                     heads, causal=True)
        h = h + a
        x = layer_norm(h, p("ln_2.weight"), p("ln_2.bias"), eps)
        h = h + gelu_tanh(x @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
        states.append(h)
        layer += 1
    states[-1] = layer_norm(states[-1], g("ln_f.weight"), g("ln_f.bias"), eps)
    return states


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


# ---------- MiniLM on the GPL-3 ----------


@pytest.fixture(scope="module")
def minilm_reference(minilm):
    with open(TEXT, encoding="utf-8") as f:
        text = f.read()
    ids = wordpiece_ids(text, os.path.join(minilm, "vocab.txt"), MAX_TOKENS)
    with open(os.path.join(minilm, "config.json")) as f:
        cfg = json.load(f)
    t = safetensors_np.load(os.path.join(minilm, "model.safetensors"))
    return ids, bert_states(t, ids, cfg["num_attention_heads"], cfg["layer_norm_eps"])


def test_minilm_hidden_states_match_numpy(tmp_path, lipattn_bin, minilm, minilm_reference):
    ids, states = minilm_reference
    assert len(ids) == MAX_TOKENS and len(states) == 7
    errs = []
    for layer in range(len(states)):
        out = run(lipattn_bin, "hidden", "--model", minilm, "--text", TEXT, "--layer", layer,
                  "--max-tokens", MAX_TOKENS, "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
        assert out.returncode == 0, out.stderr
        got_ids = np.load(tmp_path / "ids.npy")
        assert got_ids.dtype == np.int64
        np.testing.assert_array_equal(got_ids, ids)
        h = np.load(tmp_path / "h.npy")
        assert h.dtype == np.float64 and h.shape == (MAX_TOKENS, 384)
        errs.append(rel(h, states[layer]))
    print("MiniLM hidden-state relative errors per layer:", " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL, errs


def test_hidden_errors(tmp_path, lipattn_bin, minilm):
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(minilm, f), no_tok / f)
    (tmp_path / "empty.txt").write_text("  \n\t\n")
    (tmp_path / "t.txt").write_text("Some text.")
    base = ["hidden", "--out", tmp_path / "h.npy"]
    cases = [
        (base + ["--model", no_tok, "--text", tmp_path / "t.txt", "--layer", 0], "tokenizer.json"),
        (base + ["--model", minilm, "--text", tmp_path / "empty.txt", "--layer", 0], "empty"),
        (base + ["--model", minilm, "--text", tmp_path / "t.txt", "--layer", 7], "out of range"),
        (base + ["--model", minilm, "--text", tmp_path / "missing.txt", "--layer", 0], "missing.txt"),
        (base + ["--model", minilm, "--text", TEXT, "--layer", 0], "position"),
        (base + ["--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", 0], "config.json"),
    ]
    for args, needle in cases:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "panicked" not in out.stderr, out.stderr
        assert needle in out.stderr, (needle, out.stderr)


# ---------- a tiny GPT-2 written here ----------




def test_tiny_gpt2_matches_numpy(tmp_path, lipattn_bin):
    rng = np.random.default_rng(0)
    d, heads, ffn, layers, positions = 16, 4, 64, 2, 32
    words = ["[UNK]"] + "the of to and a in is it you that he was for on are with as".split()
    r = lambda *s, scale=0.2: (scale * rng.standard_normal(s)).astype(np.float32)
    t = {"transformer.wte.weight": r(len(words), d, scale=1.0), "transformer.wpe.weight": r(positions, d, scale=0.5)}
    for l in range(layers):
        p = f"transformer.h.{l}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = 1.0 + r(d)
            t[p + ln + ".bias"] = r(d)
        t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = r(d, 3 * d), r(3 * d)
        t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = r(d, d), r(d)
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = r(d, ffn), r(ffn)
        t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = r(ffn, d), r(d)
    t["transformer.ln_f.weight"], t["transformer.ln_f.bias"] = 1.0 + r(d), r(d)
    t["lm_head.weight"] = t["transformer.wte.weight"]
    safetensors_np.save_f32(tmp_path / "model.safetensors", t)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_embd": d, "n_head": heads, "n_layer": layers, "n_positions": positions,
        "vocab_size": len(words), "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": "[UNK]"}}))
    text = "it was the best of times it was the worst of times for you and me"
    (tmp_path / "t.txt").write_text(text)
    vocab = {w: i for i, w in enumerate(words)}
    ids = np.array([vocab.get(w, 0) for w in text.split()], dtype=np.int64)
    plain = {k[len("transformer."):]: v for k, v in t.items() if k.startswith("transformer.")}
    states = gpt2_states(plain, ids, heads, 1e-5)
    errs = []
    for layer in range(layers + 1):
        out = run(lipattn_bin, "hidden", "--model", tmp_path, "--text", tmp_path / "t.txt", "--layer", layer,
                  "--out", tmp_path / "h.npy", "--ids-out", tmp_path / "ids.npy")
        assert out.returncode == 0, out.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ids)
        errs.append(rel(np.load(tmp_path / "h.npy"), states[layer]))
    print("tiny GPT-2 hidden-state relative errors per layer:", " ".join(f"{e:.2e}" for e in errs))
    assert max(errs) < TOL, errs
