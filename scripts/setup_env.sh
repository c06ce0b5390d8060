#!/usr/bin/env bash
# Creates ./.venv with keras_bayes, the three CPU backends and the
# test/demo/docs extras (docs: the site generator of scripts/build_docs.sh).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements/cpu-backends.txt
"$VENV/bin/python" -m pip install -q -e ".[test,demo,docs]"
