#!/usr/bin/env bash
# Set up .venv with the test tools and the cluster extra (Ray, for the cohort tests), lint, and run the whole
# test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh ".[test,cluster]"
.venv/bin/ruff check .
# A crash anywhere prints every thread's Python stack (PYTHONFAULTHANDLER). Once pytest has reported, the process
# leaves with pytest's status without the interpreter's teardown: one CI run crashed there (exit 139) after every
# test had passed, with native threads of other libraries still running (Ray's client leaves its gRPC threads
# after ray.shutdown()). A crash during the tests still fails the run; the command line's own exit status is
# tested in subprocesses (test_cli.py, test_cohort.py).
NSN2N_STRICT_SKIPS=1 PYTHONFAULTHANDLER=1 .venv/bin/python -c '
import os, sys
import pytest
status = int(pytest.main(sys.argv[1:]))
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
' "$@"
