#!/usr/bin/env python3
"""Runs the Rust and the torch side of one benchmark case at the same time, in alternating batches.

The shared 2-core machines change speed by up to 1.5x over minutes (other tenants of the host;
no steal time or load shows it), so two runs one after the other can disagree more than the
effect being measured. Here both sides start once, warm up, and then take turns: ROUNDS rounds,
each one batch of BATCH steps per side, the side that goes first alternating, with a pause
between batches so that the other side's idle threads have gone to sleep, and untimed steps at
the start of each batch so that it is timed in the steady state of a power iteration: at least
--warm steps and at least --warm-ms milliseconds (from the side's previous batch). The first
steps after a pause run up to twice as slow (the idle cores come back slowly), and a count alone
warmed a 3 ms step for 9 ms but a 12 ms step for 36 ms, which penalised the faster side. A batch is redone
(up to --tries times) when other processes used more than --max-foreign cores during it,
measured as in quiet.py.

Each side's JSON (written to --out-dir as rust-DTYPE-N.json and torch-DTYPE-N.json) has the
median over all its steps, the median of each round, and its last line of output (the side's own
summary, including its outputs' paths). usage:

  interleave.py --rust CMD... --torch CMD... --dtype f32 --n 512 --out-dir DIR
                [--rounds 8] [--batch 10] [--warm 3] [--warm-ms 100] [--max-foreign 0.15] [--tries 5]

where each CMD is one shell-quoted string (run.sh builds them).
"""
import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import time


def busy_jiffies():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]) - (fields[3] + fields[4])


def proc_jiffies(pid):
    with open(f"/proc/{pid}/stat") as f:
        after = f.read().rsplit(")", 1)[1].split()
    return int(after[11]) + int(after[12])


class Side:
    def __init__(self, name, cmd):
        self.name = name
        self.proc = subprocess.Popen(shlex.split(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"{name} side did not start (said {line!r}); command: {cmd}")
        self.steps, self.jvp, self.vjp, self.rounds = [], [], [], []
        # Step time of the latest batch, for the warm-up in time; a first untimed batch sets it.
        self.last_ms = None

    def batch(self, warm, warm_ms, k):
        if self.last_ms:
            warm = max(warm, math.ceil(warm_ms / self.last_ms))
        self.proc.stdin.write(f"{warm} {k}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} side exited during a batch")
        res = json.loads(line)
        if res["steps"]:
            self.last_ms = statistics.median(res["steps"])
        return res

    def finish(self):
        self.proc.stdin.write("end\n")
        self.proc.stdin.flush()
        out = [l for l in self.proc.stdout.read().splitlines() if l.strip()]
        if self.proc.wait() != 0 or not out:
            raise SystemExit(f"{self.name} side failed at the end")
        return json.loads(out[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--dtype", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--warm", type=int, default=3, help="untimed steps before each batch, at least")
    ap.add_argument("--warm-ms", type=float, default=100.0,
                    help="untimed milliseconds before each batch, at least (estimated from the previous batch)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between batches")
    ap.add_argument("--max-foreign", type=float, default=0.15)
    ap.add_argument("--tries", type=int, default=5)
    a = ap.parse_args()

    sides = {"rust": Side("rust", a.rust), "torch": Side("torch", a.torch)}
    pids = [s.proc.pid for s in sides.values()] + [os.getpid()]
    hz = os.sysconf("SC_CLK_TCK")
    worst_foreign, redone = 0.0, 0
    for side in sides.values():
        side.batch(a.warm, a.warm_ms, 5)
    for r in range(a.rounds):
        order = ["rust", "torch"] if r % 2 == 0 else ["torch", "rust"]
        for name in order:
            side = sides[name]
            for attempt in range(a.tries):
                time.sleep(a.pause)
                b0, p0, t0 = busy_jiffies(), sum(proc_jiffies(p) for p in pids), time.monotonic()
                res = side.batch(a.warm, a.warm_ms, a.batch)
                b1, p1, t1 = busy_jiffies(), sum(proc_jiffies(p) for p in pids), time.monotonic()
                foreign = max(0.0, (b1 - b0) - (p1 - p0)) / hz / max(t1 - t0, 1e-9)
                if foreign <= a.max_foreign or attempt == a.tries - 1:
                    break
                redone += 1
            worst_foreign = max(worst_foreign, foreign)
            side.steps += res["steps"]
            side.jvp += res["jvp"]
            side.vjp += res["vjp"]
            side.rounds.append(statistics.median(res["steps"]))
    med = statistics.median
    for name, side in sides.items():
        summary = side.finish()
        summary.update({
            "interleaved": True,
            "median_ms": med(side.steps),
            "min_ms": min(side.steps),
            "jvp_median_ms": med(side.jvp),
            "vjp_median_ms": med(side.vjp),
            "round_medians_ms": side.rounds,
            "steps": len(side.steps),
            "batch": a.batch,
            "foreign_cores": worst_foreign,
            "redone_batches": redone,
        })
        with open(os.path.join(a.out_dir, f"{name}-{a.dtype}-{a.n}.json"), "w") as f:
            f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
