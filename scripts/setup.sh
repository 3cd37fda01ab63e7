#!/usr/bin/env bash
# Create .venv in the repository root and install the project into it (editable, with pytest).
# Where no NVIDIA GPU is visible, install PyTorch's CPU build first (torch==2.13.0 resolves to it on
# the project's CPU machines); where a torch is already importable in .venv, leave it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "$VPY" -m pip install -q "torch>=2.9"
    else
        "$VPY" -m pip install -q "torch==2.13.0"
    fi
fi
"$VPY" -m pip install -q -e ".[test]"
"$VPY" -c "import torch; print(f'setup done: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
