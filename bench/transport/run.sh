#!/usr/bin/env bash
# lipattn's exact transport against POT's ot.emd2 (and Sinkhorn against ot.sinkhorn2), same
# instances, same run, both single-threaded. Writes bench/transport/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
py=${PYTHON:-python3}
site="$root/.build/py"
mkdir -p "$site"
if [ ! -f "$site/.installed-v1" ]; then
  echo "== installing Python dependencies into $site"
  "$py" -m pip install --quiet --disable-pip-version-check --target "$site" numpy==2.* pot pytest
  touch "$site/.installed-v1"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
cargo build --release -p lipattn --example bench_transport
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1
exec "$py" bench/transport/bench.py "$root/target/release/examples/bench_transport" \
  "$root/.build/bench-transport" "$root/bench/transport/results.md" "$@"
