"""`lipattn forward` on the real MiniLM against an independent NumPy implementation, and its errors."""
import json
import os

import numpy as np
import pytest

import safetensors_np
from cli import run, layer_norm_like




@pytest.mark.parametrize("layer,causal,weighted,dtype", [(0, False, False, np.float64), (3, True, False, np.float32), (5, False, True, np.float64)])
def test_forward_matches_numpy(tmp_path, lipattn_bin, minilm, layer, causal, weighted, dtype):
    rng = np.random.default_rng(layer)
    n = 37
    x = layer_norm_like(rng, n, 384).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    args = ["forward", "--model", minilm, "--layer", layer, "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy"]
    w = None
    if weighted:
        w = rng.uniform(0.1, 1.0, n)
        w /= w.sum()
        np.save(tmp_path / "w.npy", w)
        args += ["--weights", tmp_path / "w.npy"]
    if causal:
        args.append("--causal")
    out = run(lipattn_bin, *args)
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float64 and y.shape == (n, 384)
    tensors = safetensors_np.load(os.path.join(minilm, "model.safetensors"))
    ref = safetensors_np.attention_sublayer(tensors, layer, x.astype(np.float64), w, causal)
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel < 1e-12, rel


def test_forward_errors(tmp_path, lipattn_bin, minilm):
    rng = np.random.default_rng(0)
    x = layer_norm_like(rng, 5, 384)
    bad = x.copy()
    bad[2, 7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "narrow.npy", x[:, :100])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", np.full(5, 0.3))
    base = ["forward", "--model", minilm, "--layer", 0, "--out", tmp_path / "y.npy", "--tokens"]
    cases = [
        (base + [tmp_path / "nan.npy"], "NaN"),
        (base + [tmp_path / "narrow.npy"], "384"),
        (base + [tmp_path / "x.npy", "--weights", tmp_path / "w.npy"], "sum"),
        (base + [tmp_path / "missing.npy"], "missing.npy"),
        (["forward", "--model", minilm, "--layer", 9, "--out", tmp_path / "y.npy", "--tokens", tmp_path / "x.npy"], "layer"),
        (["forward", "--model", tmp_path, "--layer", 0, "--out", tmp_path / "y.npy", "--tokens", tmp_path / "x.npy"], "config.json"),
    ]
    for args, needle in cases:
        out = run(lipattn_bin, *args)
        assert out.returncode != 0, args
        assert "panicked" not in out.stderr, out.stderr
        assert needle in out.stderr, (needle, out.stderr)


def test_forward_missing_tensor(tmp_path, lipattn_bin, minilm):
    """A checkpoint without the key projection of layer 0: the error names the tensor."""
    tensors = safetensors_np.load(os.path.join(minilm, "model.safetensors"))
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        if name.startswith("encoder.layer.0.attention.self.key"):
            continue
        b = np.ascontiguousarray(arr).tobytes()
        dt = {"float32": "F32", "int64": "I64"}[str(arr.dtype)]
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    d = tmp_path / "model"
    d.mkdir()
    with open(d / "model.safetensors", "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    (d / "config.json").write_text(open(os.path.join(minilm, "config.json")).read())
    np.save(tmp_path / "x.npy", layer_norm_like(np.random.default_rng(1), 4, 384))
    out = run(lipattn_bin, "forward", "--model", d, "--layer", 0, "--tokens", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    assert out.returncode != 0
    assert "encoder.layer.0.attention.self.key.weight" in out.stderr, out.stderr
