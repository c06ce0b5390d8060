#!/usr/bin/env bash
# Installs everything, then runs the test suite once per backend.
# Usage: scripts/test.sh [pytest args...]   (BACKENDS="jax torch" to subset)
# Tests marked `backend_independent` (their outcome cannot depend on
# KERAS_BACKEND) run under the first backend only; a `-m` of your own
# replaces that filter, so they then run under every backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
status=0
only_once=()
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
    --timeout=900 ${only_once[@]+"${only_once[@]}"} "$@" || status=1
  only_once=(-m "not backend_independent")
done
exit $status
