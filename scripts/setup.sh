#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its test extras.
# torch is installed first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLIP_VIP_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "torch==${CLIP_VIP_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".[test,index]"
