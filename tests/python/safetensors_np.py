"""Minimal safetensors reader in NumPy (independent of the Rust loader under test)."""
import json
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw[base + start : base + end], dtype="<u2")
            arr = (u16.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw[base + start : base + end], dtype=_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def save_f32(path, tensors):
    """Writes a dict of arrays as an F32 safetensors file (the tests' own small checkpoints)."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def attention_sublayer(tensors, layer, x, weights=None, causal=False, prefix=""):
    """softmax(Q K^T / sqrt(dk) + log w) V per head, concatenated, then W_O and b_O, in float64."""
    p = f"{prefix}encoder.layer.{layer}.attention."
    g = lambda k: tensors[p + k].astype(np.float64)
    wq, bq = g("self.query.weight"), g("self.query.bias")
    wk, bk = g("self.key.weight"), g("self.key.bias")
    wv, bv = g("self.value.weight"), g("self.value.bias")
    wo, bo = g("output.dense.weight"), g("output.dense.bias")
    heads = 12 if wq.shape[0] == 384 else None
    return attention(x, wq, bq, wk, bk, wv, bv, wo, bo, heads, weights, causal)


def attention(x, wq, bq, wk, bk, wv, bv, wo, bo, heads, weights=None, causal=False):
    n = x.shape[0]
    dk = wq.shape[0] // heads
    dv = wv.shape[0] // heads
    logw = np.log(weights) if weights is not None else np.full(n, -np.log(n))
    q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
    outs = []
    for h in range(heads):
        qh, kh, vh = q[:, h * dk : (h + 1) * dk], k[:, h * dk : (h + 1) * dk], v[:, h * dv : (h + 1) * dv]
        s = qh @ kh.T / np.sqrt(dk) + logw[None, :]
        if causal:
            s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        outs.append((e / e.sum(axis=1, keepdims=True)) @ vh)
    return np.concatenate(outs, axis=1) @ wo.T + bo
