"""Runs `lipattn robustness` over windows of a text and tolerances; prints one JSON line a run and
the table of certified radius, attack radius and their ratio. Usage:
python3 robustness.py --bin B --model M --text T --n 32 --windows 2 --scope model --pool mean-normalised
  --tolerances "cosine:0.999999 cosine:0.9999 delta:0.001"."""
import argparse
import json
import os
import subprocess

p = argparse.ArgumentParser()
for k in ("bin", "model", "text", "tolerances", "out"):
    p.add_argument("--" + k, required=True)
p.add_argument("--n", type=int, default=32)
p.add_argument("--windows", type=int, default=2)
p.add_argument("--scope", default="model")
p.add_argument("--layer", default=None)
p.add_argument("--pool", default="none")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
words = open(a.text, encoding="utf-8").read().split()
print("| scope | pool | tolerance | window | certified radius | attack radius | ratio | seconds |")
print("|---|---|---|---|---|---|---|---|")
for w in range(a.windows):
    path = os.path.join(a.out, f"robust-window-{a.n}-{w}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(" ".join(words[w * 3 * a.n:(w + 1) * 3 * a.n]))
    for tol in a.tolerances.split():
        kind, value = tol.split(":")
        args = [a.bin, "robustness", "--model", a.model, "--text", path, "--max-tokens", str(a.n), "--scope", a.scope,
                "--pool", a.pool, f"--{kind}", value, "--json"]
        if a.layer is not None:
            args += ["--layer", a.layer]
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {a.scope} | {a.pool} | {tol} | {w} | error: {out.stderr.strip()} | | | |", flush=True)
            continue
        r = json.loads(out.stdout)
        ratio = f"{r['ratio']:.3g}" if r["ratio"] is not None else "-"
        attack = f"{r['attack_radius']:.3g}" if r["attack_radius"] is not None else "none found"
        print(f"| {a.scope} | {a.pool} | {tol} | {w} | {r['certified_radius']:.3g} | {attack} | {ratio} | "
              f"{r['seconds']:.0f} |", flush=True)
