"""`lipattn local --scope sublayer-residual-norm|block|model [--pool ...]`: sigma against the largest
singular value of the Jacobian of transformers' own modules (BertAttention, BertLayer, GPT2Block,
the decoder layers, the whole base model with its final norm, then mean pooling and l2
normalisation) in float64, by torch.autograd.functional.jacobian; the composed certified bound
never below it; the errors of the scope flags."""
import json

import numpy as np
import pytest
import torch
import transformers

import tiny_bert
import tiny_gpt2
from cli import run
from tiny_decoders import build, causal_mask, config, float64_reference, save

TOL = 1e-8


def first(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def load(path):
    m = transformers.AutoModel.from_pretrained(path, dtype=torch.float64).eval()
    m.config._attn_implementation = "eager"
    return m


def torch_map(m, scope, layer, n, pool):
    """The scope as a function of X (n, d), in float64."""
    kind = m.config.model_type
    if kind == "bert":
        emb = m.embeddings
        shift = emb.position_embeddings.weight[:n] + emb.token_type_embeddings.weight[0]
        if scope == "sublayer-residual-norm":
            f = lambda h: first(m.encoder.layer[layer].attention(h[None]))[0]  # noqa: E731
        elif scope == "block":
            f = lambda h: first(m.encoder.layer[layer](h[None]))[0]  # noqa: E731
        else:
            f = lambda x: m(inputs_embeds=(x - shift)[None]).last_hidden_state[0]  # noqa: E731
    elif kind == "gpt2":
        if scope == "block":
            # Called alone, the block gets the causal mask its model would build.
            f = lambda h: first(m.h[layer](h[None], attention_mask=causal_mask(n, None)))[0]  # noqa: E731
        else:
            f = lambda x: m(inputs_embeds=(x - m.wpe.weight[:n])[None]).last_hidden_state[0]  # noqa: E731
    else:
        pos = torch.arange(n)[None]
        if scope == "block":
            attn = m.layers[layer].self_attn
            mask = causal_mask(n, getattr(attn, "sliding_window", getattr(m.config, "sliding_window", None)))

            def f(h):
                cos, sin = m.rotary_emb(h[None], pos)
                return first(m.layers[layer](h[None], attention_mask=mask, position_embeddings=(cos, sin)))[0]
        else:
            # Gemma's sqrt(d) belongs to its embedding module: inputs_embeds enter block 0 as given.
            f = lambda x: m(inputs_embeds=x[None]).last_hidden_state[0]  # noqa: E731
    if pool == "none":
        return f
    if pool == "mean":
        return lambda x: f(x).mean(0)
    return lambda x: (lambda p: p / p.norm())(f(x).mean(0))


def top_singular(m, scope, layer, x, pool):
    xt = torch.tensor(x, dtype=torch.float64)
    f = torch_map(m, scope, layer, x.shape[0], pool)
    with float64_reference():
        jac = torch.autograd.functional.jacobian(f, xt)
        y = f(xt)
    jac = jac.reshape(-1, x.size).numpy()
    return float(np.linalg.svd(jac, compute_uv=False)[0]), y.detach().numpy()


def local(lipattn_bin, path, x, scope, layer=None, pool=None, *extra):
    np.save(path / "x.npy", x)
    args = ["local", "--model", path, "--tokens", path / "x.npy", "--scope", scope, "--json", "--tol", "1e-12",
            *extra]
    if layer is not None:
        args += ["--layer", layer]
    if pool is not None:
        args += ["--pool", pool]
    out = run(lipattn_bin, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def checkpoint(kind, path):
    if kind == "bert":
        tiny_bert.write(path)
    elif kind == "gpt2":
        tiny_gpt2.write(path)
        # transformers reads the MLP width from n_inner (default 4 d); lipattn from the weights.
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "n_inner": tiny_gpt2.FFN}))
    else:
        family, keys = kind
        save(build(config(family, **keys)), path)
    return path


# (checkpoint, scope, layer, pool, n)
CASES = [
    ("bert", "sublayer-residual-norm", 1, None, 5),
    ("bert", "block", 0, None, 5),
    ("bert", "model", None, None, 5),
    ("bert", "model", None, "mean-normalised", 5),
    ("gpt2", "block", 0, None, 6),
    ("gpt2", "model", None, "mean", 6),
    (("llama", {"num_key_value_heads": 2}), "block", 1, None, 6),
    (("llama", {"num_key_value_heads": 2}), "model", None, None, 6),
    (("mistral", {"sliding_window": 3}), "block", 0, None, 6),
    (("qwen3", {}), "model", None, "mean-normalised", 5),
    (("gemma2", {}), "block", 0, None, 6),
    (("gemma2", {}), "model", None, None, 5),
]


def case_id(c):
    kind = c[0] if isinstance(c[0], str) else c[0][0]
    return f"{kind}-{c[1]}-{c[3] or 'none'}"


@pytest.mark.parametrize("kind,scope,layer,pool,n", CASES, ids=[case_id(c) for c in CASES])
def test_scope_equals_transformers_jacobian(lipattn_bin, tmp_path, kind, scope, layer, pool, n):
    path = checkpoint(kind, tmp_path)
    m = load(path)
    d = m.config.hidden_size
    x = np.random.default_rng(n + (layer or 0)).standard_normal((n, d))
    r = local(lipattn_bin, path, x, scope, layer, pool, "--save-vector", tmp_path / "v.npy")
    exact, _ = top_singular(m, scope, layer, x, pool or "none")
    assert abs(r["sigma"] - exact) <= TOL * exact, (r["sigma"], exact)
    assert r["scope"] == scope and r["pool"] == (pool or "none") and r["layer"] == layer
    assert r["kind"] == "attained_lower_bound" and r["norm"] == "frobenius" and r["dtype"] == "f64"
    assert r["n"] == n and r["d"] == d and r["rows_out"] == (1 if pool else n)
    v = np.load(tmp_path / "v.npy")
    assert v.shape == x.shape and abs(np.linalg.norm(v) - 1) < 1e-12
    c = r["certified"]
    assert c["n"] == n and c["factors"]
    if pool == "mean-normalised":
        assert c["value"] is None and c["notes"]
    else:
        # A certified global bound below an attained value would be the worst bug.
        assert c["value"] >= r["sigma"] and r["ratio"] == pytest.approx(c["value"] / r["sigma"])
    print(f"{case_id((kind, scope, layer, pool))}: sigma {r['sigma']:.12e}, rel err "
          f"{abs(r['sigma'] - exact) / exact:.1e}, certified {c['value']}")


def test_text_input_is_the_models_own(lipattn_bin, tmp_path):
    """--text: X is what the model computes at the scope's input, so the attention scope at --text
    equals --tokens at the hidden state `lipattn hidden` writes, after the block's norm."""
    path = checkpoint(("llama", {}), tmp_path)
    text = tmp_path / "t.txt"
    out = run(lipattn_bin, "hidden", "--model", path, "--text", text, "--layer", 1, "--out", tmp_path / "h.npy")
    assert out.returncode == 0, out.stderr
    h = np.load(tmp_path / "h.npy")
    by_text = run(lipattn_bin, "local", "--model", path, "--text", text, "--scope", "block", "--layer", 1, "--json")
    assert by_text.returncode == 0, by_text.stderr
    r = json.loads(by_text.stdout)
    by_tokens = local(lipattn_bin, path, h, "block", 1)
    assert r["n"] == h.shape[0]
    assert abs(r["sigma"] - by_tokens["sigma"]) <= 1e-6 * by_tokens["sigma"]


def test_minilm_sentence_embedding(lipattn_bin, minilm, tmp_path):
    """The whole MiniLM with sentence-transformers' mean pooling and normalisation, on real text."""
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    out = run(lipattn_bin, "local", "--model", minilm, "--text", text, "--scope", "model", "--pool",
              "mean-normalised", "--json", "--tol", "1e-10")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    m = load(minilm)
    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"][0]
    n = len(ids)
    emb = m.embeddings
    with torch.no_grad():
        x = (emb.word_embeddings.weight[ids] + emb.position_embeddings.weight[:n]
             + emb.token_type_embeddings.weight[0]).numpy()
    exact, y = top_singular(m, "model", None, x, "mean-normalised")
    assert r["n"] == n and r["rows_out"] == 1
    assert abs(r["sigma"] - exact) <= 1e-8 * exact, (r["sigma"], exact)
    assert abs(np.linalg.norm(y) - 1) < 1e-12


@pytest.mark.parametrize("args,message", [
    (["--scope", "model", "--layer", "0"], "scope 'model' runs every layer"),
    (["--scope", "block"], "give the layer"),
    (["--scope", "block", "--layer", "0", "--pool", "mean"], "applies to scope 'model' only"),
    (["--scope", "block", "--layer", "0", "--head", "1"], "scope 'attention'"),
    (["--scope", "blocks", "--layer", "0"], "blocks"),
    (["--scope", "block", "--layer", "7"], "7"),
])
def test_scope_errors(lipattn_bin, tmp_path, args, message):
    tiny_bert.write(tmp_path)
    np.save(tmp_path / "x.npy", np.ones((3, tiny_bert.D)))
    out = run(lipattn_bin, "local", "--model", tmp_path, "--tokens", tmp_path / "x.npy", *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert "panicked" not in out.stderr


@pytest.mark.parametrize("kind,scope,layer", [(("llama", {"num_key_value_heads": 2}), "block", 1),
                                              ("bert", "attention", 0), ("gpt2", "model", None)])
def test_probabilistic_upper_bound(lipattn_bin, tmp_path, kind, scope, layer):
    """--upper-failure-probability: the bound is above the exact largest singular value of
    transformers' Jacobian and within its stated factor 1 / sqrt(1 - eps) of the Ritz value."""
    path = checkpoint(kind, tmp_path)
    m = load(path)
    x = np.random.default_rng(11).standard_normal((5, m.config.hidden_size))
    r = local(lipattn_bin, path, x, scope, layer, None, "--upper-failure-probability", "1e-6",
              "--upper-steps", "60")
    if scope == "attention":
        f = lambda h: first(m.encoder.layer[layer].attention.self(h[None]))[0]  # noqa: E731
        xt = torch.tensor(x)
        jac = torch.autograd.functional.jacobian(lambda h: m.encoder.layer[layer].attention.output.dense(f(h)), xt)
        exact = float(np.linalg.svd(jac.reshape(-1, x.size).numpy(), compute_uv=False)[0])
    else:
        exact, _ = top_singular(m, scope, layer, x, "none")
    u = r["upper"]
    assert u["kind"] == "probabilistic" and u["failure_probability"] == 1e-6
    # The Krylov dimension reached: 60, or fewer at a numerical breakdown (never extrapolated).
    k, eps, dim = u["krylov_dimension"], u["epsilon"], u["dimension"]
    assert 2 <= k <= 60 and dim == x.size and "Lemma P" in u["theorem"]
    # eps meets Lemma P's failure bound for that dimension.
    assert 0.5 * np.log(2 * (dim - 1) / (np.pi * eps)) + (k - 0.5) * np.log1p(-eps) <= np.log(1e-6) + 1e-12
    assert r["sigma"] <= exact * (1 + 1e-9) <= u["value"] * (1 + 1e-9)
    assert u["value"] <= exact / np.sqrt(1 - u["epsilon"]) * (1 + 1e-8)
    assert r["scope"] == scope


def test_upper_bound_errors(lipattn_bin, tmp_path):
    tiny_bert.write(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, tiny_bert.D)))
    base = ["local", "--model", tmp_path, "--tokens", tmp_path / "x.npy", "--layer", "0"]
    for extra, message in [(["--upper-failure-probability", "1"], "upper_failure_probability"),
                           (["--upper-failure-probability", "1e-3", "--head", "0"], "not one head"),
                           (["--upper-failure-probability", "1e-3", "--upper-steps", "1"], "upper_steps")]:
        out = run(lipattn_bin, *base, *extra)
        assert out.returncode != 0 and message in out.stderr, out.stderr
        assert "panicked" not in out.stderr
