#!/usr/bin/env python3
"""Reads the JSON lines of bench/local (one file per side, case and round) and prints the markdown
table of README.md: each side's time is the median over rounds of its median run; the speed-up
is their ratio, with the range of the per-round ratios beside it."""
import json
import os
import re
import statistics
import sys


def main():
    d = sys.argv[1]
    runs = {}
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"(rust|torch)-(f32|f64)-(\d+)\.r(\d+)\.json", name)
        if not m:
            continue
        with open(os.path.join(d, name)) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
        runs.setdefault((m.group(1), m.group(2), int(m.group(3))), {})[int(m.group(4))] = r
    print("| n | dtype | lipattn Lanczos (ms) | iters | torch power (ms) | iters | speed-up | "
          "per round (min-max) | sigma lipattn | sigma torch | rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = statistics.median
    for (side, dtype, n), ts in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if side != "torch" or ("rust", dtype, n) not in runs:
            continue
        rs = runs[("rust", dtype, n)]
        t_ms, r_ms = med(t["median_ms"] for t in ts.values()), med(r["median_ms"] for r in rs.values())
        per = [ts[k]["median_ms"] / rs[k]["median_ms"] for k in sorted(ts) if k in rs]
        t, r = next(iter(ts.values())), next(iter(rs.values()))
        rel = abs(r["sigma"] - t["sigma"]) / t["sigma"]
        print(f"| {n} | {dtype} | {r_ms:.1f} | {r['iterations']} | {t_ms:.1f} | "
              f"{t['iterations']}{'' if t['converged'] else ' (cap)'} | {t_ms / r_ms:.1f}x | "
              f"{min(per):.1f}-{max(per):.1f}x ({len(per)}) | "
              f"{r['sigma']:.10g} | {t['sigma']:.10g} | {rel:.2e} |")


if __name__ == "__main__":
    main()
