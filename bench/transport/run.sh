#!/usr/bin/env bash
# lipattn's exact transport against POT's ot.emd2 (and Sinkhorn against ot.sinkhorn2), same
# instances, same run, both single-threaded. Writes bench/transport/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
. scripts/deps.sh
ensure_python_deps
cargo build --release -p lipattn --example bench_transport
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
exec "$py" bench/transport/bench.py "$root/target/release/examples/bench_transport" \
  "$root/.build/bench-transport" "$root/bench/transport/results.md" "$@"
