#!/usr/bin/env bash
# Set up .venv with the test tools and the cluster extra (Ray, for the cohort tests), lint, and run the whole
# test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh ".[test,cluster]"
.venv/bin/ruff check .
NSN2N_STRICT_SKIPS=1 .venv/bin/python -m pytest "$@"
