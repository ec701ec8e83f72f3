#!/usr/bin/env bash
# Production DDP launch: one process per device with torchrun, Redis replay buffer, checkpoints in
# a fixed directory, and automatic resume from its last.ckpt. Extra arguments are Hydra overrides.
#
#   ./run_4gpu_ddp.sh                                  # experiment=full_scale on 4 GPUs
#   NPROC=8 ./run_4gpu_ddp.sh optimizer.lr=5e-5             # 8 GPUs, one override
#   NPROC=2 EXPERIMENT= ./run_4gpu_ddp.sh trainer=ddp_sim   # the offline default on 2 CPU processes (gloo)
#   tail -f training_production.log                    # follow it
#
# Environment:
#   NPROC        processes (devices) on this node, default 4
#   EXPERIMENT   experiment config, default full_scale; empty for the offline default (an
#                `experiment=...` argument also replaces it)
#   PYTHON       interpreter, default `python` from PATH (activate your environment first)
#   CKPT_DIR     checkpoint directory, default production_checkpoints/ (resumes from its last.ckpt)
#   LOG_FILE     combined output of all ranks, appended, default training_production.log
#   RUN_DIR      Hydra output directory (W&B offline run, CSV, config), default logs/production/runs/<time>
#   REDIS_URL    redis://[:password@]host:port/db of a running server; unset: a local server on
#                127.0.0.1:${REDIS_PORT:-6379}, started with scripts/start_redis.sh if it is not answering
#   MASTER_PORT  rendezvous port, default 29500
# The replay buffer is Redis (buffer=redis) unless a `buffer=` argument says otherwise; with
# `buffer=memory` Redis is neither needed nor started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

NPROC=${NPROC:-4}
EXPERIMENT=${EXPERIMENT-full_scale}
PYTHON=${PYTHON:-python}
CKPT_DIR=${CKPT_DIR:-$ROOT/production_checkpoints}
LOG_FILE=${LOG_FILE:-$ROOT/training_production.log}
RUN_DIR=${RUN_DIR:-$ROOT/logs/production/runs/$(date +%Y-%m-%d_%H-%M-%S)}
MASTER_PORT=${MASTER_PORT:-29500}

die() { echo "run_4gpu_ddp: $*" >&2; exit 1; }
# secrets out of anything this script prints or logs: URL passwords and values of secret-named keys
redact() { sed -E 's#(://[^:/@[:space:]]*:)[^@[:space:]]+@#\1<redacted>@#g; s#((password|passwd|api_?key|token|secret)[A-Za-z_]*=)[^[:space:]]+#\1<redacted>#Ig'; }
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$NPROC'"
command -v "$PYTHON" >/dev/null || die "interpreter '$PYTHON' not found: activate the project's environment (source .venv/bin/activate) or set PYTHON"
"$PYTHON" -c "import torch, pytorch_lightning, hydra" 2>/dev/null \
  || die "'$PYTHON' lacks torch, pytorch_lightning or hydra: run scripts/setup.sh and activate .venv, or set PYTHON"

has_arg() { local prefix=$1; shift; local a; for a in "$@"; do [[ "$a" == "$prefix"* ]] && return 0; done; return 1; }

overrides=()
if [[ -n "$EXPERIMENT" ]] && ! has_arg experiment= "$@"; then overrides+=("experiment=$EXPERIMENT"); fi
has_arg buffer= "$@" || overrides+=(buffer=redis)
overrides+=(callbacks=production_checkpoint "callbacks.model_checkpoint.dirpath=$CKPT_DIR"
            "trainer.devices=$NPROC" "hydra.run.dir=$RUN_DIR")

if ! has_arg buffer=memory "$@"; then
  if [[ -z "${REDIS_URL:-}" ]]; then
    port=${REDIS_PORT:-6379}
    REDIS_PORT=$port bash "$ROOT/scripts/start_redis.sh"
    export REDIS_URL="redis://127.0.0.1:$port/0"
  elif ! "$PYTHON" -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3).ping()" "$REDIS_URL" 2>/dev/null; then
    die "Redis not reachable at REDIS_URL=$(printf %s "$REDIS_URL" | redact): start that server, unset REDIS_URL to use a local one, or pass buffer=memory"
  fi
fi

if has_arg ckpt_path= "$@"; then
  resume="resuming from the ckpt_path given"
elif [[ -f "$CKPT_DIR/last.ckpt" ]]; then
  overrides+=("ckpt_path=$CKPT_DIR/last.ckpt")
  resume="resuming from $CKPT_DIR/last.ckpt"
else
  resume="starting fresh (no $CKPT_DIR/last.ckpt)"
fi

# A weight-edited answerer (answerer/edit=rome|lora_ft) is computed here, once, and saved: under DDP
# rank 0 builds the reward while the other ranks wait in their first collective.
"$PYTHON" "$ROOT/scripts/prepare_edits.py" "${overrides[@]}" "$@" 2>&1 | tee -a "$LOG_FILE" \
  || die "preparing the answerer's edits failed (scripts/prepare_edits.py, log above)"

cmd=("$PYTHON" -m torch.distributed.run --nnodes=1 --nproc_per_node="$NPROC" --master_addr=127.0.0.1
     --master_port="$MASTER_PORT" train.py "${overrides[@]}" "$@")
mkdir -p "$(dirname "$LOG_FILE")"
{
  echo "=== $(date -Is) run_4gpu_ddp: $NPROC processes, $resume"
  echo "=== run directory: $RUN_DIR"
  echo "=== ${cmd[*]}" | redact
} | tee -a "$LOG_FILE"
set +e
"${cmd[@]}" 2>&1 | tee -a "$LOG_FILE"
status=${PIPESTATUS[0]}
set -e
echo "=== $(date -Is) run_4gpu_ddp: exit status $status" | tee -a "$LOG_FILE"
exit "$status"
