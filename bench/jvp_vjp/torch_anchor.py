#!/usr/bin/env python3
"""PyTorch anchor for the JVP/VJP benchmark: one BERT attention sublayer (MiniLM by default).

f(X) = concat_h softmax((X Wq_h^T + bq_h)(X Wk_h^T + bk_h)^T / sqrt(dk)) (X Wv_h^T + bv_h) @ Wo^T + bo,
with no residual and no LayerNorm: the map whose local Lipschitz constant Castin et al. estimate
by power iteration on J^T J. One step of that iteration is one torch.func.jvp and one
torch.func.vjp; the VJP is timed including the construction of its closure because power
iteration has to rebuild it at every step (the linearisation point is fixed, but torch.func.vjp
re-runs the forward pass each call). Writes the JVP and VJP results (float64 .npy) so the Rust
side can be checked against them, and prints one JSON line of timings.

Dependencies: numpy and torch only; the safetensors header is parsed here.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch

NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def read_safetensors(path, names):
    """The named tensors of a .safetensors file as float64 numpy arrays."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        out = {}
        for name in names:
            if name not in header:
                found = sorted(k for k in header if k != "__metadata__")[:8]
                raise SystemExit(f"{path}: tensor '{name}' not found; found e.g. {found}")
            info = header[name]
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = f.read(end - start)
            dt = info["dtype"]
            if dt in NP_DTYPES:
                arr = np.frombuffer(raw, dtype=np.dtype(NP_DTYPES[dt]).newbyteorder("<"))
            elif dt == "BF16":
                # bfloat16 is the top half of a float32.
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = bits.view(np.float32)
            else:
                raise SystemExit(f"{path}: tensor '{name}' has unsupported dtype {dt}")
            out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def load_layer(model_dir, layer):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    heads = cfg["num_attention_heads"]
    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        keys = json.loads(f.read(n)).keys()
    prefix = "bert." if any(k.startswith("bert.encoder.layer.") for k in keys) else ""
    p = f"{prefix}encoder.layer.{layer}.attention."
    parts = {
        "wq": "self.query.weight", "bq": "self.query.bias",
        "wk": "self.key.weight", "bk": "self.key.bias",
        "wv": "self.value.weight", "bv": "self.value.bias",
        "wo": "output.dense.weight", "bo": "output.dense.bias",
    }
    t = read_safetensors(path, [p + s for s in parts.values()])
    return heads, {k: t[p + s] for k, s in parts.items()}


def make_f(heads, w):
    wq, bq, wk, bk, wv, bv, wo, bo = (w[k] for k in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"))
    dk = wq.shape[0] // heads
    dv = wv.shape[0] // heads
    scale = 1.0 / math.sqrt(dk)
    lin = torch.nn.functional.linear

    def f(x):
        n = x.shape[0]
        q = lin(x, wq, bq).view(n, heads, dk).transpose(0, 1)
        k = lin(x, wk, bk).view(n, heads, dk).transpose(0, 1)
        v = lin(x, wv, bv).view(n, heads, dv).transpose(0, 1)
        p = torch.softmax((q @ k.transpose(1, 2)) * scale, dim=-1)
        o = (p @ v).transpose(0, 1).reshape(n, heads * dv)
        return lin(o, wo, bo)

    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="directory with config.json and model.safetensors")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--x", required=True)
    ap.add_argument("--u", required=True)
    ap.add_argument("--v", required=True)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f64")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-jvp")
    ap.add_argument("--out-vjp")
    ap.add_argument("--serve", action="store_true",
                    help="after warm-up print 'ready', then per input line 'W K' run W untimed and K timed "
                         "steps and answer the K times as JSON, until a line 'end' (interleave.py "
                         "drives this)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "f64": torch.float64}[a.dtype]
    heads, w = load_layer(a.model, a.layer)
    w = {k: torch.tensor(v, dtype=dtype) for k, v in w.items()}
    f = make_f(heads, w)
    x, u, v = (torch.tensor(np.load(p), dtype=dtype) for p in (a.x, a.u, a.v))
    n, d = x.shape
    if u.shape != x.shape or v.shape != (n, w["wo"].shape[0]) or d != w["wq"].shape[1]:
        raise SystemExit(f"shapes do not fit the layer: X {tuple(x.shape)}, U {tuple(u.shape)}, "
                         f"V {tuple(v.shape)}, layer d={w['wq'].shape[1]} d_out={w['wo'].shape[0]}")

    def jvp():
        return torch.func.jvp(f, (x,), (u,))[1]

    def vjp():
        _, pullback = torch.func.vjp(f, x)
        return pullback(v)[0]

    for _ in range(a.warmup):
        jvp()
        vjp()
    t_jvp, t_vjp, t_step = [], [], []

    def steps(k):
        out = None
        for _ in range(k):
            t0 = time.perf_counter()
            ju = jvp()
            t1 = time.perf_counter()
            gv = vjp()
            t2 = time.perf_counter()
            t_jvp.append(1e3 * (t1 - t0))
            t_vjp.append(1e3 * (t2 - t1))
            t_step.append(1e3 * (t2 - t0))
            out = (ju, gv)
        return out

    if a.serve:
        print("ready", flush=True)
        ju, gv = jvp(), vjp()
        for line in sys.stdin:
            if line.strip() == "end":
                break
            warm, k = (int(x) for x in line.split())
            for _ in range(warm):  # untimed: caches and threads warm up after the other side's batch
                jvp()
                vjp()
            start = len(t_step)
            ju, gv = steps(k)
            print(json.dumps({"steps": t_step[start:], "jvp": t_jvp[start:], "vjp": t_vjp[start:]}),
                  flush=True)
    else:
        ju, gv = steps(a.repeats)
    ju64 = ju.to(torch.float64).numpy()
    gv64 = gv.to(torch.float64).numpy()
    # <V, J U> = <J^T V, U> holds exactly in exact arithmetic: a cheap check that the two
    # derivatives are each other's adjoint at the working precision.
    lhs = float((v.to(torch.float64).numpy() * ju64).sum())
    rhs = float((gv64 * u.to(torch.float64).numpy()).sum())
    adjoint_rel_err = abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300)
    if a.out_jvp:
        np.save(a.out_jvp, ju64)
    if a.out_vjp:
        np.save(a.out_vjp, gv64)
    print(json.dumps({
        "impl": "torch",
        "torch": torch.__version__,
        "dtype": a.dtype,
        "n": n,
        "d": d,
        "heads": heads,
        "layer": a.layer,
        "threads": a.threads,
        "repeats": len(t_step),
        "median_ms": statistics.median(t_step),
        "jvp_median_ms": statistics.median(t_jvp),
        "vjp_median_ms": statistics.median(t_vjp),
        "min_ms": min(t_step),
        "adjoint_rel_err": adjoint_rel_err,
    }))


if __name__ == "__main__":
    main()
