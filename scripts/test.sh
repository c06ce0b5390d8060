#!/usr/bin/env bash
# Installs everything, builds and checks the documentation site
# (scripts/build_docs.sh), then runs the test suite once per backend, and the
# training-step/saving/optimizer subset on the oldest Keras pyproject.toml
# admits (scripts/test_keras_floor.sh).
# Usage: scripts/test.sh [pytest args...]
#   BACKENDS="jax torch"  run a subset of backends (the Keras floor run is
#                         then skipped unless KERAS_FLOOR=1)
#   DOCS=0                skip the documentation build (scripts/build_docs.sh,
#                         about 20 s, run before the test lanes)
#   TEST_LANES=1          run everything one after the other (default 2:
#                         the first backend and the floor subset in one
#                         lane, the other backends in a second lane; the
#                         machine has 2 cores and a test process mostly
#                         keeps one busy)
# Tests marked `backend_independent` (their outcome cannot depend on
# KERAS_BACKEND) run under the first backend only; a `-m` of your own
# replaces that filter, so they then run under every backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh

read -r -a backends <<< "${BACKENDS:-tensorflow jax torch}"
if [ -n "${BACKENDS:-}" ]; then floor=${KERAS_FLOOR:-0}; else floor=${KERAS_FLOOR:-1}; fi
lanes=${TEST_LANES:-2}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# One compute thread per test process: the two lanes share the two cores,
# and a tiny test model gains nothing from a second thread while the thread
# pools of two processes spinning against each other cost a lot (measured:
# the ivon-opt reference run, 34.7 s of CPU with torch's default 2 threads,
# 3.5 s with 1). Set before Python starts, so subprocesses (tutorials,
# harness runs, workers) inherit it. Override by exporting them yourself.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"

run_backend() {  # BACKEND ONLY_ONCE(0|1) [pytest args...]
  local backend=$1 first=$2
  shift 2
  local filter=()
  if [ "$first" = 0 ]; then filter=(-m "not backend_independent"); fi
  echo "=== KERAS_BACKEND=$backend ==="
  # A temporary folder per backend: tutorials and the harness write there,
  # and two lanes must not share their outputs.
  local tmp
  tmp=$(mktemp -d)
  # KERAS_BAYES_TEST_FAST_COMPILE: less compiler optimisation for the many
  # small, briefly-run train steps of the suite (tests/conftest.py says why
  # that is safe; the floor subset runs with the default compilers).
  TMPDIR=$tmp KERAS_BACKEND=$backend KERAS_BAYES_TEST_FAST_COMPILE=${KERAS_BAYES_TEST_FAST_COMPILE:-1} \
    .venv/bin/python -m pytest -q \
    -p no:cacheprovider --timeout=900 ${filter[@]+"${filter[@]}"} "$@"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

lane_first() {  # the first backend with everything, then the Keras floor
  local rc=0
  local start=$SECONDS
  run_backend "${backends[0]}" 1 "$@" || rc=1
  echo "--- ${backends[0]}: $((SECONDS - start)) s"
  if [ "$floor" = 1 ]; then
    start=$SECONDS
    scripts/test_keras_floor.sh || rc=1
    echo "--- Keras floor subset (with its install): $((SECONDS - start)) s"
  fi
  return $rc
}

lane_rest() {  # every other backend, without the backend-independent tests
  local rc=0 backend start
  for backend in "${backends[@]:1}"; do
    start=$SECONDS
    run_backend "$backend" 0 "$@" || rc=1
    echo "--- $backend: $((SECONDS - start)) s"
  done
  return $rc
}

status=0
if [ "${DOCS:-1}" = 1 ]; then
  scripts/build_docs.sh || status=1
fi
start=$SECONDS
if [ "$lanes" -le 1 ] || [ "${#backends[@]}" -le 1 ]; then
  lane_first "$@" || status=1
  lane_rest "$@" || status=1
else
  lane_first "$@" > "$logs/first.log" 2>&1 &
  first_pid=$!
  lane_rest "$@" > "$logs/rest.log" 2>&1 &
  rest_pid=$!
  wait "$first_pid" || status=1
  wait "$rest_pid" || status=1
  cat "$logs/first.log" "$logs/rest.log"
fi
echo "=== all tests: $((SECONDS - start)) s, exit status $status ==="
exit $status
