#!/usr/bin/env python3
"""Reads bench/rotary_local's results folder (rust.rK.json / .wall from `lipattn local --json
--dtype f32`, rust64.rK.* from the same with --dtype f64 when run, torch.rK.json / .wall from
torch_power.py, one of each a round) and prints the README's table: medians over rounds, the
speed-up (torch power-iteration time / lipattn whole command, loading included) with the
per-round ratios, the sigmas and their relative differences to the f64 lipattn value. Then the
raw JSON lines."""
import json
import os
import re
import statistics
import sys


def main():
    d = sys.argv[1]
    runs = {"rust": {}, "rust64": {}, "torch": {}}
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"(rust|rust64|torch)\.r(\d+)\.json", name)
        if not m:
            continue
        with open(os.path.join(d, name)) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
        with open(os.path.join(d, name[:-5] + ".wall")) as f:
            r["wall_s"] = float(f.read())
        runs[m.group(1)][int(m.group(2))] = r
    torch = runs["torch"]
    med = statistics.median
    sides = [s for s in ("rust", "rust64") if set(runs[s]) & set(torch)]
    if not sides:
        sys.exit("no complete round")
    t_last = torch[max(torch)]
    # The reference sigma: the f64 lipattn run when there is one.
    ref = runs["rust64"][max(runs["rust64"])]["sigma"] if runs["rust64"] else None
    print("| n | d | dtype lipattn / torch | lipattn command (s) | lipattn estimator (s) | iters | "
          "torch power (s) | torch command (s) | iters | speed-up (command) | per round | "
          "speed-up (estimator) | sigma lipattn | est. rel. error | rel. diff to f64 lipattn | "
          "sigma torch | torch rel. diff |")
    print("|" + "---|" * 17)
    for side in sides:
        rs = runs[side]
        rounds = sorted(set(rs) & set(torch))
        r_wall = med(rs[k]["wall_s"] for k in rounds)
        r_sec = med(rs[k]["seconds"] for k in rounds)
        t_sec = med(torch[k]["median_ms"] / 1e3 for k in rounds)
        t_wall = med(torch[k]["wall_s"] for k in rounds)
        per = [torch[k]["median_ms"] / 1e3 / rs[k]["wall_s"] for k in rounds]
        per_est = [torch[k]["median_ms"] / 1e3 / rs[k]["seconds"] for k in rounds]
        r, t = rs[rounds[-1]], torch[rounds[-1]]
        sigmas = {rs[k]["sigma"] for k in rounds}
        to_ref = "-" if ref is None else f"{max(abs(s - ref) / ref for s in sigmas):.1e}"
        rel_t = abs(r["sigma"] - t["sigma"]) / r["sigma"]
        # Full matvecs, and the restricted start's steps (`start_steps`) when there were any.
        iters = f"{r['iterations']}" + (f" (+{r['start_steps']} restricted)"
                                        if r.get("start_steps") else "")
        print(f"| {r['n']} | {r['d']} | {r['dtype']} / {t['dtype']} | {r_wall:.1f} | "
              f"{r_sec:.1f} | {iters} | {t_sec:.1f} | {t_wall:.1f} | "
              f"{t['iterations']}{'' if t['converged'] else ' (cap)'} | {t_sec / r_wall:.2f}x | "
              f"{', '.join(f'{p:.2f}x' for p in per)} | {t_sec / r_sec:.2f}x "
              f"({', '.join(f'{p:.2f}x' for p in per_est)}) | "
              f"{r['sigma']:.13g} | {max(rs[k]['rel_error'] for k in rounds):.1e} | {to_ref} | "
              f"{t['sigma']:.10g} | {rel_t:.2e} |")
    print()
    for side in sides:
        rs = runs[side]
        print(f"{side} ({rs[max(rs)]['dtype']}): rounds {sorted(rs)}, converged "
              f"{[rs[k]['converged'] for k in sorted(rs)]}, sigma per round "
              f"{[repr(rs[k]['sigma']) for k in sorted(rs)]}")
    print(f"torch sigma {t_last['sigma']!r}, iterations {t_last['iterations']}")
    print()
    print("raw:")
    for k in sorted(torch):
        for side in ("rust", "torch", "rust64"):
            if k in runs[side]:
                print(json.dumps({"round": k, "side": side,
                                  **{kk: runs[side][k][kk] for kk in runs[side][k]
                                     if kk not in ("operator", "vector")}}))


if __name__ == "__main__":
    main()
