#!/usr/bin/env bash
# The README's main command: sets up the environment (idempotent: .venv, torch, the package), then runs
# `clip-vip demo` with any options given here, e.g. `bash scripts/run_demo.sh --max_steps 2000 --output_dir big`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${CLIP_VIP_VENV:-.venv}/bin/clip-vip" demo "$@"
