#!/usr/bin/env bash
# Create .venv (if missing) and install NSN2N into it; the argument is the pip requirement of the project,
# "." for the engine alone or ".[test]" with the test tools. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch can pull a multi-GB CUDA build (see README, "Quick start").
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e "${1:-.}"
