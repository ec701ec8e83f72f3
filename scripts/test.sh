#!/usr/bin/env bash
# Set up (idempotent) and run the fast test suite (pyproject's addopts deselect `slow` tests).
# Extra arguments go to pytest: `bash scripts/test.sh -k losses` for a subset,
# `bash scripts/test.sh -m slow` for the slow tests, `-m ""` for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
