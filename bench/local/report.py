#!/usr/bin/env python3
"""Reads the JSON lines of bench/local and prints the markdown table of README.md."""
import json
import os
import sys


def main():
    d = sys.argv[1]
    rows = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name)) as f:
                r = json.loads(f.read().strip().splitlines()[-1])
            rows[(r["side"], r["dtype"], r["n"])] = r
    print("| n | dtype | lipattn Lanczos (ms) | iters | torch power (ms) | iters | speed-up | "
          "sigma lipattn | sigma torch | rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (side, dtype, n), t in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if side != "torch":
            continue
        rs = rows.get(("lipattn", dtype, n))
        if rs is None:
            continue
        ratio = t["median_ms"] / rs["median_ms"]
        rel = abs(rs["sigma"] - t["sigma"]) / t["sigma"]
        print(f"| {n} | {dtype} | {rs['median_ms']:.1f} | {rs['iterations']} | {t['median_ms']:.1f} | "
              f"{t['iterations']}{'' if t['converged'] else ' (cap)'} | {ratio:.1f}x | "
              f"{rs['sigma']:.10g} | {t['sigma']:.10g} | {rel:.2e} |")


if __name__ == "__main__":
    main()
