#!/usr/bin/env bash
# Set up .venv (see setup_env.sh), build, lint, and run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh requirements-dev.txt
.venv/bin/ruff check gtopk_mpi tests scripts setup.py
.venv/bin/mypy  # gtopk_mpi/ (pyproject.toml [tool.mypy]): each Space and Transport against its protocol
.venv/bin/python -m pytest -q --durations=15 "$@" tests  # the 15 slowest: where the suite's time goes
