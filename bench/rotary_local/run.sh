#!/usr/bin/env bash
# Local constant ||J(X)||_2 of a Llama-shaped rotary attention sublayer (random weights), lipattn
# Lanczos (`lipattn local`, relative accuracy 1e-6; `--dtype f32`: f32 Lanczos refined in f64,
# and the all-f64 run beside it as a row and accuracy check) against PyTorch power iteration
# through transformers' own LlamaAttention (the anchor's rule, f32 by default). See README.md.
#
# Knobs (environment): D (4096), HEADS (32), KV (8), HEAD_DIM (128), N (512), SEED (0),
# ROUNDS (2: the sides alternate, the first one switching each round), THREADS (2),
# TOL (1e-6), TORCH_DTYPE (f32), F64 (1: also time the f64 lipattn run each round; 0: skip it),
# PYTHON (python3), WORK (.build/bench-rotary/<shape>).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
py=${PYTHON:-python3}
d=${D:-4096}; heads=${HEADS:-32}; kv=${KV:-8}; hd=${HEAD_DIM:-128}; n=${N:-512}; seed=${SEED:-0}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}
tol=${TOL:-1e-6}
tdtype=${TORCH_DTYPE:-f32}
with_f64=${F64:-1}
if [ "$d.$heads.$kv.$hd.$n.$seed" = "4096.32.8.128.512.0" ]; then
  work=${WORK:-$root/.build/bench-rotary}
else
  work=${WORK:-$root/.build/bench-rotary/d$d-h$heads-kv$kv-hd$hd-n$n-s$seed}
fi
# torch 2.15, transformers 5.25, numpy, safetensors (scripts/deps.sh puts them in .build/py).
export PYTHONPATH="$root/.build/py${PYTHONPATH:+:$PYTHONPATH}"
export RAYON_NUM_THREADS="$threads"

echo "== building the lipattn CLI"
cargo build --release --quiet -p lipattn-cli
bin="${CARGO_TARGET_DIR:-$root/target}/release/lipattn"

if [ ! -f "$work/X.npy" ] || [ ! -f "$work/model/model.safetensors" ]; then
  echo "== making the checkpoint and X in $work"
  "$py" "$here/make_checkpoint.py" --d "$d" --heads "$heads" --kv "$kv" --head-dim "$hd" \
    --n "$n" --seed "$seed" --out-dir "$work" 2>/dev/null | tail -n 1
fi

out="$work/results"
rm -rf "$out"
mkdir -p "$out"
now() { date +%s.%N; }
for round in $(seq "$rounds"); do
  # rust: the timed side (--dtype f32); rust64: the all-f64 run (--dtype f64).
  lip() {
    local name=$1 dtype=$2 t0 t1
    t0=$(now)
    "$bin" local --model "$work/model" --layer 0 --tokens "$work/X.npy" --json --tol "$tol" \
      --dtype "$dtype" >"$out/$name.r$round.json"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >"$out/$name.r$round.wall"
    echo "   round $round lipattn $dtype: $(cat "$out/$name.r$round.wall") s"
  }
  rust() { lip rust f32; }
  rust64() { if [ "$with_f64" = 1 ]; then lip rust64 f64; fi; }
  torch() {
    local t0 t1
    t0=$(now)
    "$py" -W ignore "$here/torch_power.py" --model "$work/model" --layer 0 --x "$work/X.npy" \
      --dtype "$tdtype" --threads "$threads" 2>/dev/null | tail -n 1 >"$out/torch.r$round.json"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >"$out/torch.r$round.wall"
    echo "   round $round torch:   $(cat "$out/torch.r$round.wall") s"
  }
  if [ $((round % 2)) -eq 1 ]; then rust; torch; rust64; else rust64; torch; rust; fi
done

"$py" "$here/report.py" "$out"
