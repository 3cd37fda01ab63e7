#!/usr/bin/env bash
# Set up, lint, and run the whole test suite on the CPU, one pytest-xdist worker per core.
# Extra arguments go to pytest (e.g. tests/kernels, -k router, -n 0 for one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -n auto --dist worksteal "$@"
