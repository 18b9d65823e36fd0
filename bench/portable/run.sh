#!/usr/bin/env bash
# Portable build against the x86-64-v3 build: the JVP+VJP step (crates/lipattn/examples/
# bench_jvp_vjp.rs) and the Lanczos local constant (bench_local.rs) of MiniLM layer 0, the two
# builds interleaved in one run. See README.md in this folder.
#
# The "base" side is commit BASE_REV (dd6fdca: the last one built with
# `-C target-cpu=x86-64-v3` from .cargo/config.toml), exported with `git archive` and built
# with its own config into BASE_TARGET; the "new" side is this working tree, built into
# CARGO_TARGET_DIR (default target/). Both run the same inputs on the same cores, alternating.
#
# Knobs (environment): SIZES ("128 512"), DTYPES ("f32 f64"), ROUNDS (8 for the step: batches of
# BATCH=10 steps, bench/jvp_vjp/interleave.py; LOCAL_ROUNDS=6 for the local constant, one process of
# LOCAL_REPEATS=3 runs per side a round), THREADS (2), BASE_REV, BASE_TARGET (/work/target-v3 if
# writable, else .build/portable-base/target), NEW_ENV (extra environment for the new side, e.g.
# "LIPATTN_NO_AVX2=1" to time its baseline code), SKIP_LOCAL=1, PYTHON (python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
py=${PYTHON:-python3}
sizes=${SIZES:-"128 512"}
dtypes=${DTYPES:-"f32 f64"}
rounds=${ROUNDS:-8}
batch=${BATCH:-10}
local_rounds=${LOCAL_ROUNDS:-6}
local_repeats=${LOCAL_REPEATS:-3}
threads=${THREADS:-2}
base_rev=${BASE_REV:-dd6fdca}
new_env=${NEW_ENV:-}
work="$root/.build/bench-portable"
if [ -z "${BASE_TARGET:-}" ]; then
  if [ -w /work ]; then BASE_TARGET=/work/target-v3; else BASE_TARGET="$work/base-target"; fi
fi

. scripts/deps.sh
ensure_python_deps
ensure_minilm
export RAYON_NUM_THREADS="$threads"

echo "== building the base side ($base_rev) into $BASE_TARGET"
base_src="$work/base-src-$base_rev"
if [ ! -d "$base_src" ]; then
  mkdir -p "$base_src"
  git archive "$base_rev" | tar -x -C "$base_src"
fi
grep -q 'target-cpu=x86-64-v3' "$base_src/.cargo/config.toml" ||
  echo "   note: $base_rev's .cargo/config.toml has no x86-64-v3 flag"
(cd "$base_src" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release --quiet -p lipattn \
  --example bench_jvp_vjp --example bench_local)
echo "== building the new side (working tree)"
cargo build --release --quiet -p lipattn --example bench_jvp_vjp --example bench_local
new_dir="${CARGO_TARGET_DIR:-$root/target}/release/examples"
base_dir="$BASE_TARGET/release/examples"

rm -rf "$work/results"
mkdir -p "$work/results"
for n in $sizes; do
  "$py" bench/jvp_vjp/make_inputs.py --n "$n" --seed 0 --out-dir "$work/inputs/n$n" >/dev/null
done
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

for dtype in $dtypes; do
  for n in $sizes; do
    in="$work/inputs/n$n"
    out="$work/results"
    common="--model $model --layer 0 --x $in/X.npy --u $in/U.npy --v $in/V.npy --dtype $dtype --serve 1"
    echo "== step $dtype n=$n"
    # interleave.py calls its two sides "rust" and "torch": here "rust" is the new build and
    # "torch" the base build (renamed below).
    "$py" bench/jvp_vjp/interleave.py --dtype "$dtype" --n "$n" --out-dir "$out" \
      --rounds "$rounds" --batch "$batch" \
      --rust "env $new_env $new_dir/bench_jvp_vjp $common --out-jvp $out/new-$dtype-$n-jvp.npy --out-vjp $out/new-$dtype-$n-vjp.npy" \
      --torch "$base_dir/bench_jvp_vjp $common --out-jvp $out/base-$dtype-$n-jvp.npy --out-vjp $out/base-$dtype-$n-vjp.npy"
    mv "$out/rust-$dtype-$n.json" "$out/step-new-$dtype-$n.json"
    mv "$out/torch-$dtype-$n.json" "$out/step-base-$dtype-$n.json"
  done
done

if [ "${SKIP_LOCAL:-0}" != 1 ]; then
  for dtype in $dtypes; do
    for n in $sizes; do
      echo "== local $dtype n=$n"
      args="--model $model --layer 0 --x $work/inputs/n$n/X.npy --dtype $dtype --tol 1e-6 --repeats $local_repeats"
      for round in $(seq "$local_rounds"); do
        # The side going first alternates.
        if [ $((round % 2)) = 1 ]; then order="new base"; else order="base new"; fi
        for side in $order; do
          if [ "$side" = new ]; then
            env $new_env "$new_dir/bench_local" $args | tail -n 1 >"$work/results/local-new-$dtype-$n.r$round.json"
          else
            "$base_dir/bench_local" $args | tail -n 1 >"$work/results/local-base-$dtype-$n.r$round.json"
          fi
        done
      done
    done
  done
fi
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" "$here/report.py" "$work/results"
