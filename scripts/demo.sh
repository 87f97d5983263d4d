#!/usr/bin/env bash
# Set up a virtual environment (.venv) and denoise the built-in phantom into ./nsn2n-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned: an unpinned torch can pull a multi-GB CUDA build (see README, "Installing").
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e .
.venv/bin/nsn2n demo nsn2n-demo "$@"
