#!/usr/bin/env bash
# Set up ./.venv for spanbert-fast: `./setup.sh` (library + CLI) or `./setup.sh dev` (+ test tools).
#
# torch is installed first, and only when the venv lacks it, as torch==2.13.0: a bare
# `torch` requirement would pull a multi-GB CUDA build. GPU users who want their own
# torch build install it into .venv before running this script (it is kept).
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -c "import spanbert_fast, torch; print(f'spanbert-fast {spanbert_fast.__version__} ready (torch {torch.__version__})')"
