#!/usr/bin/env python3
"""Interleaved timing of one JVP + VJP (crates/lipattn/examples/profile_jvp_vjp.rs) for several
builds of the example, e.g. before and after a change:

    python3 bench/long/interleave_steps.py N DTYPE STREAM ROUNDS REPS BIN_A BIN_B ...

Each round runs every binary once (the order reverses from one round to the next), each run
linearises once and times REPS steps; printed per binary: the median over rounds of the run's
median wall time per step and of its CPU time per step (all threads, from /proc/self/stat, steadier
than wall time on a shared machine), their ratios to the first binary, and every round's values.
STREAM=1 times the streaming state, 0 the dense one.
"""
import os
import re
import statistics
import subprocess
import sys


def main():
    n, dtype, stream, rounds, reps = sys.argv[1:6]
    bins = sys.argv[6:]
    walls = {b: [] for b in bins}
    cpus = {b: [] for b in bins}
    env = dict(os.environ, STREAM=stream)
    for r in range(int(rounds)):
        for b in bins if r % 2 == 0 else bins[::-1]:
            out = subprocess.run(
                [b, n, dtype, reps], env=env, capture_output=True, text=True, check=True
            ).stdout
            m = re.search(r"median ([\d.]+) ms .*cpu ([\d.]+) ms/iter", out)
            walls[b].append(float(m.group(1)))
            cpus[b].append(float(m.group(2)))
    w0 = c0 = None
    for b in bins:
        w, c = statistics.median(walls[b]), statistics.median(cpus[b])
        w0, c0 = w0 or w, c0 or c
        print(
            f"{dtype} n={n} stream={stream} {os.path.basename(b):20s} wall {w:8.1f} ms  "
            f"cpu {c:8.1f} ms  (x{w / w0:.3f} wall, x{c / c0:.3f} cpu)  "
            f"walls {walls[b]} cpus {cpus[b]}"
        )


if __name__ == "__main__":
    main()
