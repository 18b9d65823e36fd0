#!/usr/bin/env python3
"""Reads bench/rotary_local's results folder (rust.rK.json / .wall from `lipattn local --json`,
torch.rK.json / .wall from torch_power.py, one pair a round) and prints the README's table:
medians over rounds, the speed-up (torch power-iteration time / lipattn whole command, loading
included) with the per-round ratios, and both sigmas. Then the raw JSON lines."""
import json
import os
import re
import statistics
import sys


def main():
    d = sys.argv[1]
    rust, torch = {}, {}
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"(rust|torch)\.r(\d+)\.json", name)
        if not m:
            continue
        with open(os.path.join(d, name)) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
        with open(os.path.join(d, name[:-5] + ".wall")) as f:
            r["wall_s"] = float(f.read())
        (rust if m.group(1) == "rust" else torch)[int(m.group(2))] = r
    rounds = sorted(set(rust) & set(torch))
    if not rounds:
        sys.exit("no complete round")
    med = statistics.median
    r_wall = med(rust[k]["wall_s"] for k in rounds)
    r_sec = med(rust[k]["seconds"] for k in rounds)
    t_sec = med(torch[k]["median_ms"] / 1e3 for k in rounds)
    t_wall = med(torch[k]["wall_s"] for k in rounds)
    per = [torch[k]["median_ms"] / 1e3 / rust[k]["wall_s"] for k in rounds]
    per_est = [torch[k]["median_ms"] / 1e3 / rust[k]["seconds"] for k in rounds]
    r, t = rust[rounds[-1]], torch[rounds[-1]]
    rel = abs(r["sigma"] - t["sigma"]) / t["sigma"]
    print("| n | d | dtype lipattn / torch | lipattn command (s) | lipattn estimator (s) | iters | "
          "torch power (s) | torch command (s) | iters | speed-up (command) | per round | "
          "speed-up (estimator) | sigma lipattn | sigma torch | rel. diff |")
    print("|" + "---|" * 15)
    print(f"| {r['n']} | {r['d']} | {r['dtype']} / {t['dtype']} | {r_wall:.1f} | {r_sec:.1f} | "
          f"{r['iterations']} | {t_sec:.1f} | {t_wall:.1f} | "
          f"{t['iterations']}{'' if t['converged'] else ' (cap)'} | {t_sec / r_wall:.2f}x | "
          f"{', '.join(f'{p:.2f}x' for p in per)} | {t_sec / r_sec:.2f}x "
          f"({', '.join(f'{p:.2f}x' for p in per_est)}) | "
          f"{r['sigma']:.10g} | {t['sigma']:.10g} | {rel:.2e} |")
    print()
    print(f"rounds: {len(rounds)}; lipattn converged: {[rust[k]['converged'] for k in rounds]}, "
          f"estimated rel. error {r['rel_error']:.2e}")
    print()
    print("raw:")
    for k in rounds:
        for side, runs in (("lipattn", rust), ("torch", torch)):
            print(json.dumps({"round": k, "side": side, **{kk: runs[k][kk] for kk in runs[k]
                                                          if kk not in ("operator", "vector")}}))


if __name__ == "__main__":
    main()
