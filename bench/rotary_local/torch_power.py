#!/usr/bin/env python3
"""PyTorch anchor for bench/rotary_local: power iteration on J^T J for layer 0's attention
sublayer of a Llama checkpoint (transformers' own LlamaAttention module, eager attention, causal
mask, positions 0..n-1; no residual, no RMSNorm), exactly as bench/local/torch_power.py:
v <- J^T J v / ||J^T J v|| with torch.func.jvp then torch.func.vjp (the VJP closure built once
per run and reused, which favours torch), stopping when the Rayleigh quotient <v, J^T J v>
changes by less than 1e-4 (absolute), at most 100 iterations.

f(X) = self_attn(X[None], position_embeddings=rotary_emb(X, positions),
                 attention_mask=causal)[0][0]
The rotary cos/sin depend on the positions only (not on X's values), so they are computed once,
outside the timed region; the checkpoint load is outside it too. Times the power iteration (VJP
closure construction included) and prints one JSON line.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

# The anchor's power iteration itself, shared with bench/local.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "local"))
from torch_power import power  # noqa: E402


def make_f(model_dir, layer, n, dtype):
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    att = model.model.layers[layer].self_attn
    pos = torch.arange(n)[None]
    probe = torch.zeros(1, n, model.config.hidden_size, dtype=dtype)
    cos, sin = model.model.rotary_emb(probe, pos)
    if dtype == torch.float64:
        # transformers computes cos/sin in float32; recompute them in float64 (default rope).
        hd = att.head_dim
        theta = model.config.rope_parameters["rope_theta"]
        inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        emb = torch.cat([pos[..., None].double() * inv] * 2, dim=-1)
        cos, sin = emb.cos(), emb.sin()
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]

    def f(x):
        return att(x[None], position_embeddings=(cos, sin), attention_mask=mask)[0][0]

    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--x", required=True)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--abs-tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed power steps before timing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "f64": torch.float64}[a.dtype]
    x = torch.tensor(np.load(a.x), dtype=dtype)
    f = make_f(a.model, a.layer, x.shape[0], dtype)
    if a.warmup:
        # An untimed short run: allocator and thread-pool warm-up.
        power(f, x, a.abs_tol, a.warmup, a.seed)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        rq, iters, conv = power(f, x, a.abs_tol, a.max_iter, a.seed)
        times.append(1e3 * (time.perf_counter() - t0))
    print(json.dumps({
        "side": "torch", "dtype": a.dtype, "n": int(x.shape[0]), "d": int(x.shape[1]),
        "threads": a.threads, "median_ms": statistics.median(times), "min_ms": min(times),
        "sigma": float(np.sqrt(max(rq, 0.0))), "rayleigh_quotient": rq,
        "iterations": iters, "converged": conv, "abs_tol": a.abs_tol, "max_iter": a.max_iter,
        "repeats": a.repeats, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
