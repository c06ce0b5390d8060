"""Every tutorial runs top to bottom (shortened by KERAS_BAYES_FAST=1)."""

import glob
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "*.py")))


# Backend-independent notebooks run once (under the first backend that
# scripts/test.sh runs): 04 starts one process per backend itself.
ONCE = {"04_switching_backends.py"}
# The slowest notebooks (0.5-2 min each with JAX's CPU compiles) skip JAX,
# whose suite is the longest; what they run is trained on JAX by the unit
# tests (test_lie_group, test_continual, test_bench).
NOT_ON_JAX = {"03_choosing_the_noise.py", "05_cifar10_in_practice.py",
              "06_continual_learning.py"}


def _tutorial(path):
    if os.path.basename(path) in ONCE:
        return pytest.param(path, marks=pytest.mark.backend_independent)
    return path


@pytest.mark.parametrize("path", [_tutorial(p) for p in TUTORIALS],
                         ids=os.path.basename)
def test_tutorial_runs(path):
    if (os.path.basename(path) in NOT_ON_JAX
            and keras.backend.backend() == "jax"):
        pytest.skip("slow on JAX; runs under TensorFlow and torch")
    env = {**os.environ, "KERAS_BAYES_FAST": "1",
           "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run([sys.executable, path], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Tutorial finished." in result.stdout, result.stdout[-2000:]
