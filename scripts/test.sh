#!/usr/bin/env bash
# Installs everything, then runs the test suite once per backend.
# Usage: scripts/test.sh [pytest args...]   (BACKENDS="jax torch" to subset)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider \
    --timeout=900 "$@" || status=1
done
exit $status
