#!/usr/bin/env bash
# Inversion benchmark: y = x + g(x) with g a tied L2 attention layer, solved to a residual of
# 1e-10 by fixed-point iteration, Anderson (memory 6, regularisation 1e-4) and Broyden, against
# the anchor's fixed 100 fixed-point steps (invertible-resnet). Function evaluations and median
# wall time; results in .build/bench-dynamics/results.{jsonl,md}. See docs/dynamics.md.
#
# Knobs (environment): N (128), D (64), HEADS (4), REPEATS (7), THREADS (2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
n=${N:-128}
d=${D:-64}
heads=${HEADS:-4}
repeats=${REPEATS:-7}
threads=${THREADS:-2}
work="$root/.build/bench-dynamics"
mkdir -p "$work"
export RAYON_NUM_THREADS="$threads"

echo "== building"
cargo build --release --quiet -p lipattn --example bench_dynamics
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_dynamics"

echo "== n = $n, d = $d, heads = $heads, $repeats repeats, $threads threads"
"$bin" "$n" "$d" "$heads" "$repeats" | tee "$work/out.txt"
grep '^{' "$work/out.txt" > "$work/results.jsonl"
grep '^|' "$work/out.txt" > "$work/results.md"
echo "== written $work/results.jsonl and $work/results.md"
