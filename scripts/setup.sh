#!/usr/bin/env bash
# Create .venv with the CPU build of torch pre-installed, then optsweep with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Pre-install torch: the CPU build on CPU machines (never an accidental multi-GB CUDA build).
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==${OPTSWEEP_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[examples,dev]"
