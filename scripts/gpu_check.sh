#!/usr/bin/env bash
# The GPU check, for a session that is lent a device machine (see the
# device tool's README). That machine has PyTorch, JAX, NumPy, SciPy,
# scikit-learn, h5py, matplotlib, pytest and torchmetrics but no Keras, so
# the missing pure-Python/cp312 packages travel as wheels. Once, here:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     keras==3.15.1 namex optree ivon-opt==0.1.3 mnist1d==0.0.2.post1
#
# then run this script there with the device tool: command
# "bash scripts/gpu_check.sh", carry [".whl"], timeout_s about 540. It runs
# the suite on the JAX and torch backends on the GPU (TensorFlow is not on
# that machine) and the ResNet-20 step-cost benchmark; logs land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
for backend in jax torch; do
  KERAS_BACKEND=$backend timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/optimizers/test_soba_update.py tests/optimizers/test_soba_fit.py tests/test_saving.py \
    tests/training/test_two_pass.py tests/optimizers/test_bsam.py tests/optimizers/test_reference_ivon.py \
    2>&1 | tee "$OUT/pytest_$backend.log" | tail -3 || status=1
done
for backend in jax torch; do
  KERAS_BACKEND=$backend timeout 150 python3 benchmarks/step_cost.py \
    --model resnet20 --batch-size 128 --steps 100 --data-batches 20 \
    --rounds 3 --optimizers adam,sgd,soba,sam,bsam \
    --json "$OUT/step_cost_gpu.json" 2>&1 | tail -12
done
exit $status
