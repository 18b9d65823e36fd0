#!/usr/bin/env python3
"""PyTorch anchor for the local-constant benchmark: power iteration on J^T J for one BERT
attention sublayer (MiniLM layer 0 by default; no residual, no LayerNorm), as Castin, Ablin,
Peyre (2024) estimate the local Lipschitz constant: v <- J^T J v / ||J^T J v|| with
torch.func.jvp then torch.func.vjp, stopping when the Rayleigh quotient <v, J^T J v> changes by
less than 1e-4 (absolute), at most 100 iterations. The VJP closure is built once per run and
reused (the linearisation point is fixed), which favours torch over rebuilding it every step.
Times the whole run (closure construction included) and prints one JSON line.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jvp_vjp"))
from torch_anchor import load_layer, make_f  # noqa: E402


def power(f, x, abs_tol, max_iter, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    v /= torch.linalg.norm(v)
    _, pullback = torch.func.vjp(f, x)
    prev = None
    rq = None
    it = 0
    for it in range(1, max_iter + 1):
        jv = torch.func.jvp(f, (x,), (v,))[1]
        w = pullback(jv)[0]
        rq = float(torch.dot(v.reshape(-1), w.reshape(-1)))
        if prev is not None and abs(rq - prev) < abs_tol:
            return rq, it, True
        prev = rq
        v = w / torch.linalg.norm(w)
    return rq, it, False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--x", required=True)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--abs-tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "f64": torch.float64}[a.dtype]
    heads, w = load_layer(a.model, a.layer)
    w = {k: torch.tensor(v, dtype=dtype) for k, v in w.items()}
    f = make_f(heads, w)
    x = torch.tensor(np.load(a.x), dtype=dtype)
    # One untimed short run: allocator and thread-pool warm-up.
    power(f, x, a.abs_tol, 2, a.seed)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        rq, iters, conv = power(f, x, a.abs_tol, a.max_iter, a.seed)
        times.append(1e3 * (time.perf_counter() - t0))
    print(json.dumps({
        "side": "torch", "dtype": a.dtype, "n": int(x.shape[0]), "threads": a.threads,
        "median_ms": statistics.median(times), "min_ms": min(times),
        "sigma": float(np.sqrt(max(rq, 0.0))), "rayleigh_quotient": rq,
        "iterations": iters, "converged": conv, "abs_tol": a.abs_tol, "max_iter": a.max_iter,
        "repeats": a.repeats, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
