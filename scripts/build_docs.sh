#!/usr/bin/env bash
# Builds the documentation site into site/ and checks it; part of
# scripts/test.sh. Needs the `docs` extra (scripts/setup_env.sh installs it
# into ./.venv). Offline: nothing is fetched.
#   1. `mkdocs build --strict`: any warning (a broken link or anchor between
#      pages, a page missing from the nav, a docstring griffe cannot parse,
#      an unresolved cross-reference) fails the build.
#   2. scripts/check_docs.py: every name of the public modules' `__all__` is
#      in the API reference, and every link in the built HTML to a file of
#      the site resolves (file and anchor).
# Open the result: site/index.html in a browser (works from file://).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
start=$SECONDS
# NO_MKDOCS_2_WARNING: Material prints a notice about its future on every build.
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict
"$VENV/bin/python" scripts/check_docs.py
echo "--- docs site (build and checks): $((SECONDS - start)) s"
