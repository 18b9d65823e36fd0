#!/usr/bin/env bash
# Installs a CPU-usable PyTorch into a target folder (default .build/bench-py), from PyPI only.
#
# PyPI's Linux torch wheel is a CUDA build: libtorch.so links libtorch_cuda.so, which links the
# CUDA runtime libraries, so `import torch` fails without them even on a machine with no GPU.
# Installing torch with --no-deps plus exactly the libraries it loads at import (the list in
# torch/__init__.py's _preload_cuda_deps) skips triton and cuda-bindings, which CPU runs never
# load. Everything is pinned so that the timings in README.md can be reproduced.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
site=${1:-$(pwd)/.build/bench-py}
marker="$site/.installed-torch-2.15.0-v1"
if [ -f "$marker" ]; then
  exit 0
fi
mkdir -p "$site"
echo "== installing torch 2.15.0 (CPU use of the PyPI CUDA wheel) into $site"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" \
  torch==2.15.0 \
  numpy==2.4.6 filelock==4.3.1 typing-extensions==4.16.0 sympy==1.14.0 mpmath==1.4.1 \
  networkx==3.6.1 jinja2==3.1.6 markupsafe==3.0.4 fsspec==2026.9.0 \
  nvidia-cublas==13.4.1.3 nvidia-cuda-runtime==13.2.86 nvidia-cuda-nvrtc==13.2.86 \
  nvidia-cuda-cupti==13.2.86 nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22 \
  nvidia-cusolver==12.2.0.11 nvidia-cusparse==12.7.10.12 nvidia-nvjitlink==13.5.37 \
  nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.30.7 \
  nvidia-nvshmem-cu13==3.7.2
PYTHONPATH="$site" "$py" -c "import torch, numpy; torch.ones(2) @ torch.ones(2)" 
touch "$marker"
