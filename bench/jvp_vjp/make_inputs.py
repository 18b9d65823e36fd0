#!/usr/bin/env python3
"""Writes the inputs of one JVP/VJP benchmark case: X (n x d), U (n x d), V (n x d_out), float64.

X has LayerNorm-like rows (mean 0, variance 1 per row), the distribution a BERT attention
sublayer actually sees. U and V are Gaussian with unit Frobenius norm, as the iterates of a
power iteration are. Both implementations read these files, so they differentiate at exactly
the same point in exactly the same directions.
"""
import argparse
import os

import numpy as np


def make(n: int, d: int, d_out: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x -= x.mean(axis=1, keepdims=True)
    x /= np.sqrt((x * x).mean(axis=1, keepdims=True))
    u = rng.standard_normal((n, d))
    u /= np.linalg.norm(u)
    v = rng.standard_normal((n, d_out))
    v /= np.linalg.norm(v)
    return x, u, v


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, required=True, help="number of tokens")
    ap.add_argument("--d", type=int, default=384, help="token width (MiniLM: 384)")
    ap.add_argument("--d-out", type=int, default=None, help="output width (default: d)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    if a.n < 1 or a.d < 2:
        ap.error("need n >= 1 and d >= 2")
    x, u, v = make(a.n, a.d, a.d_out or a.d, a.seed)
    os.makedirs(a.out_dir, exist_ok=True)
    for name, arr in (("X", x), ("U", u), ("V", v)):
        np.save(os.path.join(a.out_dir, f"{name}.npy"), arr)
    print(os.path.abspath(a.out_dir))


if __name__ == "__main__":
    main()
