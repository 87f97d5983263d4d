#!/usr/bin/env bash
# Set up .venv and denoise the built-in phantom into ./nsn2n-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh .
.venv/bin/nsn2n demo nsn2n-demo "$@"
