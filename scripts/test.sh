#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust (release, numerics are heavy), the Python
# oracle tests of the CLI, then the tests of the Python package (crates/lipattn-py, built here
# with maturin).
# Installs what the tests need into .build/ (never into the system).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/deps.sh
echo "== cargo fmt --check and clippy (warnings are errors)"
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

ensure_python_deps
ensure_transformers
ensure_ray
ensure_minilm
export LIPATTN_MINILM="$model"

echo "== building the Python package (maturin)"
t0=$SECONDS
build_python_package
echo "   built and installed into .build/pyext in $((SECONDS - t0)) s"

echo "== cargo test (release)"
cargo test --release --workspace

echo "== building the CLI for the Python tests"
cargo build --release -p lipattn-cli
export LIPATTN_BIN="$root/target/release/lipattn"

echo "== pytest"
"$py" -m pytest -q --durations=15 tests/python

echo "== pytest: the Python package"
"$py" -m pytest -q --durations=15 tests/python_bindings
