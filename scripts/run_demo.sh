#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded offline default: a short real
# GFlowNet training run on CPU on the example data (SmolLM2-135M-Instruct sampler and answerer,
# offline judge). Ends with a checkpoint, an offline W&B run and a table of sampled questions.
# Extra arguments are Hydra overrides, e.g. `bash scripts/run_demo.sh trainer.max_steps=30`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
exec "${VENV:-.venv}/bin/python" train.py experiment=demo "$@"
