#!/usr/bin/env bash
# The CIFAR-10 table on a GPU, for a session that is lent a device machine.
# Prepare the wheels as in scripts/gpu_check.sh, then copy the offline data
# into an ignored path of the checkout (it is 18 MB; the device tool carries
# at most 64 MiB in all):
#
#   echo /.data/ >> .git/info/exclude
#   mkdir -p .data && cp ../shared/data/cifar10/cifar10-jpeg.npz.xz .data/
#
# and run with the device tool: command "bash scripts/gpu_cifar10.sh",
# carry [".whl", ".data"], timeout_s up to 600. METHODS and EPOCHS pick the
# runs (one device call holds about 8 minutes of training: on an H200 JAX
# trains ResNet-20 at about 1.3 s an epoch with batch 128; SOBA's batch 50
# and bSAM's 8 sub-batches cost more per epoch). Results (JSON + Markdown,
# with date, device and commit) land in $OUT; a second call with the same
# OUT file resumes and skips finished runs.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_cifar10}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export KERAS_BAYES_CIFAR10=$PWD/.data/cifar10-jpeg.npz.xz
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
KERAS_BACKEND=${BACKEND:-jax} timeout ${LIMIT:-540} python3 benchmarks/cifar10.py \
  --methods "${METHODS:-sgd,soba,bsam}" --model resnet20 \
  --epochs "${EPOCHS:-30}" --seeds 0 --heldout-classes 8,9 --verbose 2 \
  --out "$OUT/cifar10_gpu" 2>&1 | tee "$OUT/bench.log" | tail -30
