#!/usr/bin/env bash
# The main job: SOBA vs Adam on MNIST-1D (generated offline), accuracy /
# NLL / ECE / Brier at the mean and averaged over posterior samples.
# Usage: scripts/demo.sh [demo args...]   (KERAS_BACKEND defaults to jax)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
KERAS_BACKEND=${KERAS_BACKEND:-jax} exec .venv/bin/python examples/demo.py "$@"
