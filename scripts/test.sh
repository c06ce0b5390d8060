#!/usr/bin/env bash
# Installs everything, builds and checks the documentation site
# (scripts/build_docs.sh), then runs the test suite once per backend, and the
# training-step/saving/optimizer subset on the oldest Keras pyproject.toml
# admits (scripts/test_keras_floor.sh).
# Usage: scripts/test.sh [pytest args...]
#   BACKENDS="jax torch"  run a subset of backends (the Keras floor run is
#                         then skipped unless KERAS_FLOOR=1)
#   DOCS=0                skip the documentation build (scripts/build_docs.sh,
#                         about 10 s, run before the tests)
#   TEST_WORKERS=1        everything one after the other, one process per
#                         backend (default 2, for the 2-core machine: two
#                         lanes run side by side, JAX in one process in the
#                         first, TensorFlow, torch and the floor subset each
#                         shared by two pytest-xdist workers in the second)
#   SOLO_BACKENDS="jax"   the backends run in one process (first lane)
# Why JAX runs alone: a JAX process compiles every op and program once and
# reuses it for the rest of the run; split across two workers, each compiles
# them again (measured: 46 % more CPU time for tests/optimizers/
# test_soba_fit.py), while TensorFlow and torch split with no such loss.
# Tests marked `backend_independent` (their outcome cannot depend on
# KERAS_BACKEND) run under the first backend only; a `-m` of your own
# replaces that filter, so they then run under every backend.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh

read -r -a backends <<< "${BACKENDS:-tensorflow jax torch}"
if [ -n "${BACKENDS:-}" ]; then floor=${KERAS_FLOOR:-0}; else floor=${KERAS_FLOOR:-1}; fi
workers=${TEST_WORKERS:-2}
solo=" ${SOLO_BACKENDS-jax} "
parallel=()
if [ "$workers" -gt 1 ]; then
  # loadgroup: a test at a time, except files marked with one
  # `xdist_group` (their tests share an expensive module fixture).
  parallel=(-n "$workers" --dist loadgroup)
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# One compute thread per test process: the two workers share the two cores,
# and a tiny test model gains nothing from a second thread while the thread
# pools of two processes spinning against each other cost a lot (measured:
# the ivon-opt reference run, 34.7 s of CPU with torch's default 2 threads,
# 3.5 s with 1). Set before Python starts, so subprocesses (tutorials,
# harness runs, workers) inherit it. Override by exporting them yourself.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false"
# torch.compile (the jit_compile=True tests on torch) otherwise starts a pool
# of compiler processes next to the two workers.
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}

run_backend() {  # BACKEND ONLY_ONCE(0|1) SPLIT(0|1) [pytest args...]
  local backend=$1 first=$2 split=$3
  shift 3
  local filter=() workers_args=()
  if [ "$first" = 0 ]; then filter=(-m "not backend_independent"); fi
  if [ "$split" = 1 ]; then workers_args=(${parallel[@]+"${parallel[@]}"}); fi
  echo "=== KERAS_BACKEND=$backend ==="
  # A temporary folder per backend (tutorials, the harness and
  # torch.compile write there), removed after.
  local tmp rc=0 start=$SECONDS
  tmp=$(mktemp -d)
  # KERAS_BAYES_TEST_FAST_COMPILE: less compiler optimisation for the many
  # small, briefly-run train steps of the suite (tests/conftest.py says why
  # that is safe; the floor subset runs with the default compilers).
  TMPDIR=$tmp KERAS_BACKEND=$backend KERAS_BAYES_TEST_FAST_COMPILE=${KERAS_BAYES_TEST_FAST_COMPILE:-1} \
    .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 \
    ${workers_args[@]+"${workers_args[@]}"} ${filter[@]+"${filter[@]}"} "$@" || rc=1
  rm -rf "$tmp"
  echo "--- $backend: $((SECONDS - start)) s"
  return $rc
}

floor_subset() {  # waits for the floor's install, then runs its tests
  local rc=0 start=$SECONDS
  if wait "$install_pid"; then
    scripts/test_keras_floor.sh ${parallel[@]+"${parallel[@]}"} || rc=1
  else
    cat "$logs/floor_install.log"
    rc=1
  fi
  echo "--- Keras floor subset: $((SECONDS - start)) s"
  return $rc
}

lane() {  # SOLO(0|1) [pytest args...]: this lane's backends, in order
  local want=$1 rc=0 backend is_solo split
  shift
  for backend in "${backends[@]}"; do
    is_solo=0
    if [[ "$solo" == *" $backend "* ]]; then is_solo=1; fi
    if [ "$workers" -gt 1 ] && [ "$is_solo" != "$want" ]; then continue; fi
    split=$((1 - is_solo))
    run_backend "$backend" "$([ "$backend" = "${backends[0]}" ] && echo 1 || echo 0)" \
      "$split" "$@" || rc=1
  done
  # The floor subset (JAX, shared by two workers) ends the split lane.
  if [ "$floor" = 1 ] && { [ "$workers" -le 1 ] || [ "$want" = 0 ]; }; then
    floor_subset || rc=1
  fi
  return $rc
}

status=0
start=$SECONDS
if [ "$floor" = 1 ]; then
  # The floor's virtual environment installs (mostly waiting on the package
  # index) while the docs build and the first tests run.
  KERAS_FLOOR_INSTALL_ONLY=1 scripts/test_keras_floor.sh > "$logs/floor_install.log" 2>&1 &
  install_pid=$!
fi
if [ "${DOCS:-1}" = 1 ]; then
  scripts/build_docs.sh || status=1
fi
if [ "$workers" -le 1 ]; then
  lane 0 "$@" || status=1
else
  lane 1 "$@" > "$logs/solo.log" 2>&1 &
  solo_pid=$!
  lane 0 "$@" > "$logs/split.log" 2>&1 || status=1
  wait "$solo_pid" || status=1
  cat "$logs/split.log" "$logs/solo.log"
fi
echo "=== all tests: $((SECONDS - start)) s, exit status $status ==="
exit $status
