#!/usr/bin/env bash
# The whole test suite: Rust (release, numerics are heavy) then the Python oracle tests.
# Installs what the tests need into .build/ (never into the system).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/deps.sh
ensure_python_deps
ensure_minilm
export LIPATTN_MINILM="$model"

echo "== cargo test (release)"
cargo test --release --workspace

echo "== building the CLI for the Python tests"
cargo build --release -p lipattn-cli
export LIPATTN_BIN="$root/target/release/lipattn"

echo "== pytest"
"$py" -m pytest -q tests/python
