"""`lipattn local` on the real MiniLM against a NumPy oracle: the dense Jacobian of the attention
sublayer (or of one head's contribution) by central differences of an independent forward pass,
and its largest singular value."""
import json
import os

import numpy as np
import pytest

import safetensors_np
from cli import run, layer_norm_like




def sublayer(tensors, layer, head):
    """The sublayer's weights (or head `head`'s contribution: its rows, its W_O columns, no b_O)."""
    p = f"encoder.layer.{layer}.attention."
    g = lambda k: tensors[p + k].astype(np.float64)
    w = {k: g(s) for k, s in [("wq", "self.query.weight"), ("bq", "self.query.bias"), ("wk", "self.key.weight"),
                              ("bk", "self.key.bias"), ("wv", "self.value.weight"), ("bv", "self.value.bias"),
                              ("wo", "output.dense.weight"), ("bo", "output.dense.bias")]}
    heads = 12
    if head is not None:
        dk = w["wq"].shape[0] // heads
        rows = slice(head * dk, (head + 1) * dk)
        w = dict(wq=w["wq"][rows], bq=w["bq"][rows], wk=w["wk"][rows], bk=w["bk"][rows], wv=w["wv"][rows],
                 bv=w["bv"][rows], wo=w["wo"][:, rows], bo=np.zeros_like(w["bo"]))
        heads = 1
    return w, heads


def batched_forward(xb, w, heads):
    """The sublayer on a batch of sequences (B, n, d) at once (checked against safetensors_np below)."""
    b, n, _ = xb.shape
    dk = w["wq"].shape[0] // heads
    # 2-D products: NumPy's broadcast (B, n, d) @ (d, e) does not reach BLAS efficiently.
    flat = xb.reshape(b * n, -1)
    q = (flat @ w["wq"].T + w["bq"]).reshape(b, n, heads, dk).transpose(0, 2, 1, 3)
    k = (flat @ w["wk"].T + w["bk"]).reshape(b, n, heads, dk).transpose(0, 2, 1, 3)
    v = (flat @ w["wv"].T + w["bv"]).reshape(b, n, heads, -1).transpose(0, 2, 1, 3)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dk)
    s -= s.max(axis=3, keepdims=True)
    e = np.exp(s)
    p = e / e.sum(axis=3, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return (o.reshape(b * n, -1) @ w["wo"].T + w["bo"]).reshape(b, n, -1)


def dense_jacobian(w, heads, x, h=1e-5):
    """Columns (i, k) by central differences, all perturbations in one batch."""
    n, d = x.shape
    eye = np.eye(n * d).reshape(n * d, n, d) * h
    plus = batched_forward(x[None] + eye, w, heads)
    minus = batched_forward(x[None] - eye, w, heads)
    return ((plus - minus) / (2 * h)).reshape(n * d, -1).T


@pytest.mark.parametrize("layer,head,method", [(0, None, "lanczos"), (2, 5, "lanczos"), (0, None, "power")])
def test_local_matches_dense_jacobian(tmp_path, lipattn_bin, minilm, layer, head, method):
    rng = np.random.default_rng(11 + layer)
    n = 3
    x = layer_norm_like(rng, n, 384)
    np.save(tmp_path / "x.npy", x)
    args = ["local", "--model", minilm, "--layer", layer, "--tokens", tmp_path / "x.npy", "--json",
            "--method", method, "--save-vector", tmp_path / "v.npy"]
    if head is not None:
        args += ["--head", head]
    out = run(lipattn_bin, *args)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["norm"] == "frobenius" and r["dtype"] == "f64" and r["n"] == n and r["layer"] == layer
    assert r["head"] == head and r["method"] == method
    assert abs(r["radius"] - np.linalg.norm(x, axis=1).max()) < 1e-12
    w, heads = sublayer(safetensors_np.load(os.path.join(minilm, "model.safetensors")), layer, head)
    ref = safetensors_np.attention(x, heads=heads, **w)
    assert np.abs(batched_forward(x[None], w, heads)[0] - ref).max() <= 1e-12 * np.abs(ref).max()
    jac = dense_jacobian(w, heads, x)
    exact = np.linalg.svd(jac, compute_uv=False)[0]
    # An attained value: never above the true norm (beyond the oracle's own differencing error).
    assert r["sigma"] <= exact * (1 + 1e-7)
    tol = 1e-6 if method == "lanczos" else 1e-3
    assert (exact - r["sigma"]) / exact < tol, (r["sigma"], exact)
    v = np.load(tmp_path / "v.npy")
    assert v.shape == x.shape
    assert abs(np.linalg.norm(jac @ v.reshape(-1)) / np.linalg.norm(v) - r["sigma"]) < 1e-6 * exact


def test_local_errors(tmp_path, lipattn_bin, minilm):
    rng = np.random.default_rng(0)
    x = layer_norm_like(rng, 5, 384)
    bad = x.copy()
    bad[1, 3] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "narrow.npy", x[:, :10])
    np.save(tmp_path / "x.npy", x)
    base = ["local", "--model", minilm, "--layer", 0, "--tokens"]
    cases = [
        (base + [tmp_path / "inf.npy"], "inf"),
        (base + [tmp_path / "narrow.npy"], "384"),
        (base + [tmp_path / "x.npy", "--head", 12], "head 12"),
        (base + [tmp_path / "x.npy", "--tol", "0"], "tolerance"),
        (base + [tmp_path / "x.npy", "--method", "svd"], "svd"),
        (base + [tmp_path / "missing.npy"], "missing.npy"),
    ]
    for args, needle in cases:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "panicked" not in out.stderr, out.stderr
        assert needle in out.stderr, (needle, out.stderr)


def test_streaming_attention_on_minilm(tmp_path, lipattn_bin, minilm):
    """`--attention streaming` (per-row statistics, docs/streaming.md) gives the dense path's local
    constant, and `auto` streams exactly when `--max-memory` refuses the dense n x n probabilities
    (n = 2,000 tokens: 12 heads x 2,000^2 x 8 bytes x 2 = 768 MB dense), saying so in the JSON."""
    rng = np.random.default_rng(5)
    np.save(tmp_path / "x.npy", layer_norm_like(rng, 40, 384))
    base = ["local", "--model", minilm, "--layer", 1, "--tokens", tmp_path / "x.npy", "--json", "--tol", "1e-10"]
    got = {}
    for attention in ["dense", "streaming", "auto"]:
        out = run(lipattn_bin, *base, "--attention", attention)
        assert out.returncode == 0, out.stderr
        got[attention] = json.loads(out.stdout)
    assert got["dense"]["attention"] == "dense" and got["streaming"]["attention"] == "streaming"
    assert got["auto"]["attention"] == "dense"
    assert abs(got["streaming"]["sigma"] - got["dense"]["sigma"]) <= 1e-9 * got["dense"]["sigma"]
    np.save(tmp_path / "long.npy", layer_norm_like(rng, 2000, 384))
    long = ["local", "--model", minilm, "--layer", 0, "--tokens", tmp_path / "long.npy", "--json", "--tol", "1e-4",
            "--max-memory", "200M"]
    out = run(lipattn_bin, *long, "--attention", "dense")
    assert out.returncode == 2 and "max-memory" in out.stderr and "panicked" not in out.stderr, out.stderr
    out = run(lipattn_bin, *long)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["attention"] == "streaming" and r["n"] == 2000 and r["sigma"] > 0


def test_block_local_constant_on_the_streaming_state(tmp_path, lipattn_bin, minilm):
    """`local --scope block --attention streaming` (docs/streaming.md#blocks-and-models) gives the
    dense chain's local constant, and under a `--max-memory` that refuses the dense chain
    (n = 1,200: 12 heads x 1,200^2 x 8 bytes x 2 = 276 MB dense) `--attention dense` is refused
    naming the budget and `auto` streams (the streaming chain: 226 MB), saying so in the JSON."""
    rng = np.random.default_rng(6)
    np.save(tmp_path / "x.npy", layer_norm_like(rng, 40, 384))
    base = ["local", "--model", minilm, "--layer", 2, "--scope", "block", "--tokens", tmp_path / "x.npy",
            "--json", "--tol", "1e-10"]
    got = {}
    for attention in ["dense", "streaming", "auto"]:
        out = run(lipattn_bin, *base, "--attention", attention)
        assert out.returncode == 0, out.stderr
        got[attention] = json.loads(out.stdout)
    assert [got[a]["attention"] for a in ["dense", "streaming", "auto"]] == ["dense", "streaming", "dense"]
    assert abs(got["streaming"]["sigma"] - got["dense"]["sigma"]) <= 1e-9 * got["dense"]["sigma"]
    np.save(tmp_path / "long.npy", layer_norm_like(rng, 1200, 384))
    long = ["local", "--model", minilm, "--layer", 0, "--scope", "block", "--tokens", tmp_path / "long.npy",
            "--json", "--tol", "1e-3", "--max-iter", "4", "--max-memory", "300M"]
    out = run(lipattn_bin, *long, "--attention", "dense")
    assert out.returncode == 2 and "max-memory" in out.stderr and "panicked" not in out.stderr, out.stderr
    out = run(lipattn_bin, *long)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["attention"] == "streaming" and r["n"] == 1200 and r["sigma"] > 0


def test_streaming_attention_on_a_rotary_sublayer(tmp_path, lipattn_bin):
    """A rotary (Llama-layout, grouped-query) sublayer streams too (docs/streaming.md#rotary-sublayers):
    `--attention streaming` gives the dense local constant, and under a `--max-memory` that refuses
    the dense band of probabilities `auto` streams and matches the dense value computed without
    the limit, while `--attention dense` is refused naming the budget."""
    import tiny_llama
    tiny_llama.write(tmp_path)
    rng = np.random.default_rng(7)
    np.save(tmp_path / "x.npy", rng.standard_normal((1500, tiny_llama.D)))
    base = ["local", "--model", tmp_path, "--layer", 1, "--tokens", tmp_path / "x.npy", "--json", "--tol", "1e-10"]
    got = {}
    for attention in ["dense", "streaming"]:
        out = run(lipattn_bin, *base, "--attention", attention)
        assert out.returncode == 0, out.stderr
        got[attention] = json.loads(out.stdout)
        assert got[attention]["attention"] == attention and got[attention]["operator"]["rotary"]["kv_heads"] == 1
    out = run(lipattn_bin, *base, "--max-memory", "8M", "--attention", "dense")
    assert out.returncode == 2 and "max-memory" in out.stderr and "panicked" not in out.stderr, out.stderr
    out = run(lipattn_bin, *base, "--max-memory", "8M")
    assert out.returncode == 0, out.stderr
    got["auto"] = json.loads(out.stdout)
    assert got["auto"]["attention"] == "streaming"
    dense = got["dense"]["sigma"]
    for attention in ["streaming", "auto"]:
        assert abs(got[attention]["sigma"] - dense) <= 1e-9 * dense, (attention, got[attention]["sigma"], dense)
