#!/usr/bin/env bash
# Binding overhead: the local constant ||J(X)||_2 of MiniLM layer 0 (d = 384, 12 heads) at a
# LayerNorm-like input, from Python (lipattn package) and from Rust (examples/bench_local.rs),
# same input, same tolerance, same thread count; medians. Results in .build/bench-python/.
#
# Knobs (environment): SIZES ("128"), DTYPES ("f64 f32"), ROUNDS (4), REPEATS (5), THREADS (2),
# TOL (1e-6). Each round runs the Rust side then the Python side, REPEATS timed calls each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
. scripts/deps.sh
ensure_python_deps
ensure_minilm
sizes=${SIZES:-"128"}
dtypes=${DTYPES:-"f64 f32"}
rounds=${ROUNDS:-4}
repeats=${REPEATS:-5}
threads=${THREADS:-2}
tol=${TOL:-1e-6}
work="$root/.build/bench-python"
mkdir -p "$work"
export RAYON_NUM_THREADS="$threads"

echo "== building the Python package and the Rust example"
build_python_package
cargo build --release --quiet -p lipattn --example bench_local
rust_bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_local"

: >"$work/results.jsonl"
for n in $sizes; do
  "$py" - "$n" "$work/x$n.npy" <<'PY'
import sys, numpy as np
n, path = int(sys.argv[1]), sys.argv[2]
x = np.random.default_rng(0).standard_normal((n, 384))
x -= x.mean(axis=1, keepdims=True)
np.save(path, x / x.std(axis=1, keepdims=True))
PY
  for dtype in $dtypes; do
    # Alternate the two sides so that a drift of the machine's speed hits both.
    for side in $(for _ in $(seq "$rounds"); do echo rust python; done); do
      if [ "$side" = rust ]; then
        "$rust_bin" --model "$model" --layer 0 --x "$work/x$n.npy" --dtype "$dtype" --tol "$tol" \
          --repeats "$repeats" | tail -n 1
      else
        "$py" "$here/bench_local.py" --model "$model" --x "$work/x$n.npy" --dtype "$dtype" --tol "$tol" \
          --repeats "$repeats"
      fi
    done | tee -a "$work/results.jsonl"
  done
done

"$py" - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Medians over rounds of each process's median; "binding" is the median per-call difference
# between Python's wall time and the library's own time inside that call.
print(f"{'dtype':>5} {'n':>5} {'rust ms':>9} {'python ms':>10} {'py/rust-1':>10} {'rust min':>9} {'py min':>9} {'binding ms':>11} {'binding %':>10}  sigma equal")
for key in sorted({(r["dtype"], r["n"]) for r in rows}):
    rs = [r for r in rows if (r["dtype"], r["n"]) == key]
    rust = statistics.median(r["median_ms"] for r in rs if r["side"] == "lipattn")
    py = statistics.median(r["median_ms"] for r in rs if r["side"] == "python")
    rust_min = min(r["min_ms"] for r in rs if r["side"] == "lipattn")
    py_min = min(r["min_ms"] for r in rs if r["side"] == "python")
    bind = statistics.median(r["binding_ms_median"] for r in rs if r["side"] == "python")
    sig = {round(r["sigma"], 9) for r in rs}
    print(f"{key[0]:>5} {key[1]:>5} {rust:9.2f} {py:10.2f} {100 * (py / rust - 1):9.1f}% {rust_min:9.2f} {py_min:9.2f} {bind:11.3f} {100 * bind / rust:9.2f}%  {len(sig) == 1}")
PY
