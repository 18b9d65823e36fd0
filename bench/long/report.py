#!/usr/bin/env python3
"""Table and growth exponents of bench/long/run.sh's results (one JSON per run).

Per n: lipattn on the streaming state (and on `--attention auto` where it ran), the PyTorch
anchor where it ran, each with its compute seconds (lipattn's `seconds`: linearisation and
Lanczos; torch's `median_ms`: the power iteration with its VJP closure), wall and CPU seconds of
the whole process, peak RSS and the attained sigma; the speed-up of lipattn's default (`auto`)
over the anchor. Then the least-squares exponents b of time ~ n^b and memory ~ n^b over all n
and over n >= 4096, the least-squares line of peak memory in n (fixed part + bytes per token),
and the issue's memory targets (n = 16,384: <= 2 GB, n = 32,768: <= 4 GB, GB = 1e9 bytes) with the
requested accuracy (rel_error <= tol).
"""
import argparse
import json
import math
import os


def load(d, name):
    p = os.path.join(d, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def slope(points):
    pts = [(math.log(n), math.log(v)) for n, v in points if v and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else None


def linear(points):
    """Least-squares a + b n: the per-token cost b and the fixed part a (binary, weights)."""
    if len(points) < 2:
        return None
    mx = sum(n for n, _ in points) / len(points)
    my = sum(v for _, v in points) / len(points)
    sxx = sum((n - mx) ** 2 for n, _ in points)
    b = sum((n - mx) * (v - my) for n, v in points) / sxx
    return my - b * mx, b


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--sizes", required=True)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split()]
    rows, fails = [], 0
    print("| n | lipattn streaming: s (wall, CPU) | peak MB | iters | rel. error | sigma | lipattn auto: state, s | peak MB | torch power: s (wall) | peak MB | iters | sigma | speed-up auto / torch | rel. diff sigma |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        s = load(a.results, f"lipattn-streaming-{n}")
        au = load(a.results, f"lipattn-auto-{n}")
        t = load(a.results, f"torch-{n}")
        if s is None:
            fails += 1
        rows.append((n, s))
        t_s = t["median_ms"] / 1e3 if t else None
        speed = t_s / au["seconds"] if (t and au) else None
        rel = abs(au["sigma"] - t["sigma"]) / au["sigma"] if (t and au) else None
        print(
            f"| {n} | {fmt(s and s['seconds'], '.2f')} ({fmt(s and s['wall_seconds'], '.1f')}, {fmt(s and s.get('cpu_seconds'), '.1f')}) "
            f"| {fmt(s and s['peak_rss_bytes'] / 1e6, '.0f')} | {fmt(s and s['iterations'], 'd')} "
            f"| {fmt(s and s['rel_error'], '.1e')} | {fmt(s and s['sigma'], '.8f')} "
            f"| {au['attention'] + ', ' + format(au['seconds'], '.2f') if au else '-'} "
            f"| {fmt(au and au['peak_rss_bytes'] / 1e6, '.0f')} "
            f"| {fmt(t_s, '.2f')} ({fmt(t and t['wall_seconds'], '.1f')}) "
            f"| {fmt(t and t['peak_rss_bytes'] / 1e6, '.0f')} "
            f"| {(str(t['iterations']) + ('' if t['converged'] else ' (cap)')) if t else '-'} "
            f"| {fmt(t and t['sigma'], '.8f')} | {fmt(speed, '.1f')}{'x' if speed else ''} | {fmt(rel, '.1e')} |"
        )
    ok = [(n, s) for n, s in rows if s]
    for label, sel in (("all n", ok), ("n >= 4096", [(n, s) for n, s in ok if n >= 4096])):
        bt = slope([(n, s["seconds"]) for n, s in sel])
        bc = slope([(n, s.get("cpu_seconds")) for n, s in sel])
        bm = slope([(n, s["peak_rss_bytes"]) for n, s in sel])
        lin = linear([(n, s["peak_rss_bytes"]) for n, s in sel])
        per_token = f"; peak memory = {lin[0] / 1e6:.0f} MB + {lin[1] / 1e3:.1f} kB n" if lin else ""
        print(
            f"\ngrowth over {label} ({len(sel)} sizes, streaming): time ~ n^{fmt(bt, '.2f')}, "
            f"CPU time ~ n^{fmt(bc, '.2f')}, peak memory ~ n^{fmt(bm, '.2f')}{per_token}"
        )
    targets = {16384: 2e9, 32768: 4e9}
    print()
    for n, cap in targets.items():
        s = dict(rows).get(n)
        if s is None:
            print(f"target n = {n}: not run")
            continue
        met = s["peak_rss_bytes"] <= cap and s["rel_error"] <= s.get("tol", 1e-6)
        print(
            f"target n = {n}: peak {s['peak_rss_bytes'] / 1e9:.2f} GB (<= {cap / 1e9:.0f} GB), "
            f"rel. error {s['rel_error']:.1e}, {s['seconds']:.0f} s: {'met' if met else 'NOT met'}"
        )
    if fails:
        print(f"\n{fails} streaming run(s) missing or failed (see the .err files)")


if __name__ == "__main__":
    main()
