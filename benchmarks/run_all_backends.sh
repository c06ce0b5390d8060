#!/usr/bin/env bash
# Run benchmarks/step_cost.py once per Keras backend (each in its own
# process) and collect the results in
#   benchmarks/results/step_cost_cpu.json   (one entry per backend)
#   benchmarks/results/step_cost_cpu.md     (markdown table, via report.py)
#
# Usage (from anywhere; extra arguments go to step_cost.py):
#   benchmarks/run_all_backends.sh                    # full CPU run
#   benchmarks/run_all_backends.sh --quick            # smoke test
#   PYTHON=/tmp/venv/bin/python BACKENDS="jax torch" benchmarks/run_all_backends.sh
#   OUT=benchmarks/results/step_cost_gpu benchmarks/run_all_backends.sh --model resnet20
#
# Run it on an otherwise idle machine: the numbers are wall-clock times.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
backends="${BACKENDS:-tensorflow jax torch}"
out="${OUT:-$here/results/step_cost_cpu}"

mkdir -p "$(dirname "$out")"
rm -f "$out.json"
for backend in $backends; do
    echo "=== $backend ==="
    KERAS_BACKEND="$backend" "$python" "$here/step_cost.py" \
        --json "$out.json" "$@"
done
"$python" "$here/report.py" "$out.json" --output "$out.md"
echo "wrote $out.json and $out.md"
