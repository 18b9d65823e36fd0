#!/usr/bin/env python3
"""Table of the JVP/VJP benchmark results in a folder written by run.sh, with the Rust outputs
checked against torch's. Exits 1 if any pair of outputs disagrees beyond the tolerance of its
dtype, so that a fast but wrong implementation never reads as a win."""
import glob
import json
import os
import statistics
import sys

import numpy as np

# Relative Frobenius error allowed between the two implementations: both compute the same
# sums in a different order, so they differ by a few ulps times the conditioning of softmax.
TOL = {"f64": 1e-9, "f32": 1e-3}


def load(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    return json.loads(lines[-1])


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    res = sys.argv[1]
    rows, bad = [], []
    for tpath in sorted(glob.glob(os.path.join(res, "torch-*.json"))):
        t = load(tpath)
        dtype, n = t["dtype"], t["n"]
        rpath = os.path.join(res, f"rust-{dtype}-{n}.json")
        r = load(rpath) if os.path.exists(rpath) else None
        errs = []
        if r is not None:
            for kind in ("jvp", "vjp"):
                a = np.load(os.path.join(res, f"rust-{dtype}-{n}-{kind}.npy"))
                b = np.load(os.path.join(res, f"torch-{dtype}-{n}-{kind}.npy"))
                e = rel(a, b) if a.shape == b.shape else float("inf")
                errs.append(e)
                if not e <= TOL[dtype]:
                    bad.append(f"{dtype} n={n} {kind}: relative difference {e:.3e} > {TOL[dtype]:.0e}")
        rows.append((dtype, n, t, r, errs))
    rows.sort(key=lambda x: (x[0], x[1]))
    head = (f"{'dtype':5} {'n':>5} {'torch jvp':>10} {'torch vjp':>10} {'torch step':>11} {'rust step':>10} "
            f"{'torch/rust':>11} {'rounds: min, median, max':>25} {'rel diff jvp,vjp':>17} {'busy':>5}")
    print(head)
    print("-" * len(head))
    for dtype, n, t, r, errs in rows:
        rust = f"{r['median_ms']:10.2f}" if r else f"{'-':>10}"
        ratio = f"{t['median_ms'] / r['median_ms']:11.2f}" if r else f"{'-':>11}"
        per = [a / b for a, b in zip(t.get("round_medians_ms", []), (r or {}).get("round_medians_ms", []))]
        spread = f"{min(per):.2f}, {statistics.median(per):.2f}, {max(per):.2f}" if per else "-"
        diff = f"{errs[0]:.1e},{errs[1]:.1e}" if errs else "-"
        print(f"{dtype:5} {n:5d} {t['jvp_median_ms']:10.2f} {t['vjp_median_ms']:10.2f} {t['median_ms']:11.2f} "
              f"{rust} {ratio} {spread:>25} {diff:>17} {t.get('foreign_cores', float('nan')):5.2f}")
    print("(milliseconds, medians over all steps; step = one JVP + one VJP, timed together; the two sides")
    print(" ran at the same time in alternating batches (interleave.py); ratio = torch step / rust step,")
    print(" > 1 means Rust is faster; rounds: the ratio of the two sides' medians within each round;")
    print(" busy = most cores other processes used during a batch)")
    if bad:
        print("OUTPUT MISMATCH:\n  " + "\n  ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
