#!/usr/bin/env bash
# Runs the CI subset (training-step, saving and optimizer tests) on the
# OLDEST Keras that pyproject.toml admits, with one backend (JAX, which
# exercises the most private Keras pieces: see keras_bayes/_keras_compat.py).
# The newest Keras is covered by scripts/test.sh (the whole suite).
#
# Creates ./.venv-keras-floor with keras==<floor of pyproject.toml>, the
# backend pinned as in requirements/cpu-backends.txt and the subset's test
# needs, then installs keras_bayes from this checkout. Idempotent: a second
# run only checks the installs.
# Usage: scripts/test_keras_floor.sh [pytest args...]
#   (KERAS_FLOOR_TESTS="tests/a.py tests/b.py" to change the subset;
#   KERAS_FLOOR_INSTALL_ONLY=1 to prepare the environment and stop)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-keras-floor}
BACKEND=jax

floor=$(sed -n 's/.*"keras>=\([0-9.]*\),<[0-9.]*".*/\1/p' pyproject.toml)
if [ -z "$floor" ]; then
  echo "pyproject.toml does not declare keras as \"keras>=X,<Y\"" >&2
  exit 2
fi
backend_pin=$(grep -E "^jax" requirements/cpu-backends.txt)
tests=${KERAS_FLOOR_TESTS:-"tests/test_keras_compat.py tests/training/test_two_pass.py
  tests/test_saving.py tests/optimizers/test_soba_update.py tests/optimizers/test_bsam.py
  tests/training/test_multi_sample.py"}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "keras==$floor" "$backend_pin" \
  "pytest>=8" "pytest-timeout>=2" "pytest-xdist>=3.5" "scikit-learn>=1.3"
"$VENV/bin/python" -m pip install -q --no-deps -e .
if [ "${KERAS_FLOOR_INSTALL_ONLY:-0}" = 1 ]; then
  exit 0
fi

echo "=== Keras $floor (the declared floor), KERAS_BACKEND=$BACKEND ==="
# shellcheck disable=SC2086  # the test list is meant to split on spaces
KERAS_BACKEND=$BACKEND "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  --timeout=900 $tests "$@"
