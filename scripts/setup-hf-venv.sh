#!/usr/bin/env bash
# Sets up a CPU-only Hugging Face transformers environment for kiln's parity tests (DESIGN.md §9):
# Debian's python3-torch (1.13) under Debian's own /usr/bin/python3, in a venv made with
# --system-site-packages, plus pinned transformers/tokenizers/huggingface-hub/safetensors from PyPI.
# Idempotent: each step runs only if what it provides is missing. Needs root (or sudo) for apt-get.
#
#   scripts/setup-hf-venv.sh VENV_DIR
#   VENV_DIR/bin/python scripts/hf_parity.py make --out DIR
set -euo pipefail

VENV=${1:?usage: setup-hf-venv.sh VENV_DIR}
PY=/usr/bin/python3
export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! $PY -c "import torch" 2>/dev/null || ! $PY -c "import venv, ensurepip" 2>/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends python3-torch python3-venv >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    $PY -m venv --system-site-packages "$VENV"
fi

if ! "$VENV/bin/python" -c "import transformers, tokenizers, huggingface_hub, safetensors" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        transformers==4.47.1 tokenizers==0.21.4 huggingface-hub==0.36.2 safetensors==0.8.0
fi

"$VENV/bin/python" -c "import sys, torch, transformers, tokenizers, safetensors, numpy; \
print(f'python {sys.version.split()[0]} torch {torch.__version__} transformers {transformers.__version__} '
      f'tokenizers {tokenizers.__version__} safetensors {safetensors.__version__} numpy {numpy.__version__}')"
