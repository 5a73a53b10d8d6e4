#!/usr/bin/env bash
# The test command the README gives: set up, lint, type-check, run the default (non-slow) suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check optimizers sweep analysis tests bench examples
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
