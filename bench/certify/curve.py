"""Runs `lipattn certify` over windows of a text, radii, lengths and layers; writes results.csv
(one line a run) and prints the median certified/attained per (layer, n, eps)."""
import argparse
import csv
import json
import os
import statistics
import subprocess

p = argparse.ArgumentParser()
for k in ("bin", "model", "text", "ns", "layers", "eps", "ball", "out"):
    p.add_argument("--" + k, required=True)
p.add_argument("--scope", default="attention")
p.add_argument("--pool", default="none")
p.add_argument("--windows", type=int, required=True)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
words = open(a.text, encoding="utf-8").read().split()
rows = []
print(f"scope {a.scope}, pool {a.pool}", flush=True)
for n in map(int, a.ns.split()):
    # Window w: the text from word w * 3n on, cut to n tokens by --max-tokens (a word is at
    # least one token, so 3n words always hold n tokens).
    for w in range(a.windows):
        path = os.path.join(a.out, f"window-{n}-{w}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(" ".join(words[w * 3 * n:(w + 1) * 3 * n]))
        layers = ["-"] if a.scope == "model" else a.layers.split()
        for layer in layers:
            where = [] if layer == "-" else ["--layer", layer]
            for eps in a.eps.split():
                out = subprocess.run([a.bin, "certify", "--model", a.model, *where, "--text", path,
                                      "--max-tokens", str(n), "--epsilon", eps, "--ball", a.ball, "--scope", a.scope,
                                      "--pool", a.pool, "--json"], capture_output=True, text=True)
                if out.returncode != 0:
                    rows.append(dict(n=n, window=w, layer=layer, eps=float(eps), error=out.stderr.strip()))
                    print(n, w, layer, eps, "error:", out.stderr.strip(), flush=True)
                    continue
                r = json.loads(out.stdout)
                row = dict(n=n, window=w, layer=layer, eps=float(eps), certified=r["certified"],
                           attained=r["attained"], ratio=r["ratio"], centre_attained=r["centre_attained"],
                           centre_upper=r["centre"]["value"],
                           slope=r["slope"]["value"] if r.get("slope") else "",
                           output_change=r["output_change"], seconds=r["seconds"], error="")
                rows.append(row)
                print(json.dumps(row), flush=True)
keys = ["n", "window", "layer", "eps", "certified", "attained", "ratio", "centre_attained", "centre_upper", "slope",
        "output_change", "seconds", "error"]
with open(os.path.join(a.out, "results.csv"), "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=keys)
    wr.writeheader()
    for r in rows:
        wr.writerow({k: r.get(k, "") for k in keys})
print("\n| layer | n | eps | median certified/attained | windows |")
print("|---|---|---|---|---|")
groups = {}
for r in rows:
    if not r.get("error"):
        groups.setdefault((r["layer"], r["n"], r["eps"]), []).append(r["ratio"])
for (layer, n, eps), rs in sorted(groups.items()):
    print(f"| {layer} | {n} | {eps:g} | {statistics.median(rs):.3g} | {len(rs)} |")
