#!/usr/bin/env python3
"""Table of bench/portable/run.sh: per case, the median of each side, new / base, and the range
of the per-round ratios. Also checks that both sides computed the same thing (step outputs
within rounding, the same sigma)."""
import glob
import json
import os
import statistics
import sys

import numpy as np


def load(path):
    with open(path) as f:
        return json.loads(f.readline())


def main(d):
    rows = []
    for new_path in sorted(glob.glob(os.path.join(d, "step-new-*.json"))):
        tag = os.path.basename(new_path)[len("step-new-"):-len(".json")]
        dtype, n = tag.split("-")
        new, base = load(new_path), load(os.path.join(d, f"step-base-{tag}.json"))
        per_round = [a / b for a, b in zip(new["round_medians_ms"], base["round_medians_ms"])]
        diff = max(
            np.linalg.norm(np.load(os.path.join(d, f"new-{tag}-{k}.npy")) - np.load(os.path.join(d, f"base-{tag}-{k}.npy")))
            / np.linalg.norm(np.load(os.path.join(d, f"base-{tag}-{k}.npy")))
            for k in ("jvp", "vjp")
        )
        rows.append(("step (JVP+VJP)", dtype, int(n), base["median_ms"], new["median_ms"], per_round,
                     f"outputs rel. diff {diff:.1e}"))
    for dtype in ("f32", "f64"):
        for n in (128, 512, 256, 1024):
            new_r = sorted(glob.glob(os.path.join(d, f"local-new-{dtype}-{n}.r*.json")))
            base_r = sorted(glob.glob(os.path.join(d, f"local-base-{dtype}-{n}.r*.json")))
            if not new_r:
                continue
            new = [load(p) for p in new_r]
            base = [load(p) for p in base_r]
            per_round = [a["median_ms"] / b["median_ms"] for a, b in zip(new, base)]
            sig = max(abs(a["sigma"] - b["sigma"]) / b["sigma"] for a, b in zip(new, base))
            its = sorted({(a["iterations"], b["iterations"]) for a, b in zip(new, base)})
            rows.append(("local (Lanczos)", dtype, n,
                         statistics.median(b["median_ms"] for b in base),
                         statistics.median(a["median_ms"] for a in new), per_round,
                         f"sigma rel. diff {sig:.1e}, iterations (new, base) {its}"))
    print("| what | dtype | n | base x86-64-v3 (ms) | new portable (ms) | new / base | per round (min-max) | check |")
    print("|---|---|---|---|---|---|---|---|")
    for what, dtype, n, b, a, pr, check in rows:
        print(f"| {what} | {dtype} | {n} | {b:.2f} | {a:.2f} | {a / b:.3f} | {min(pr):.3f}-{max(pr):.3f} ({len(pr)}) | {check} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
