"""Every tutorial runs top to bottom (shortened by KERAS_BAYES_FAST=1).

Each runs as `__main__` inside the test process (the `run_script` fixture),
as `python tutorials/<name>.py` would run it, but without starting an
interpreter and importing the backends again for every tutorial (a third of
a short tutorial's time). The process already has the backend the tutorial would
select (`KERAS_BACKEND` is set before it imports Keras).
"""

import glob
import os

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "*.py")))

# Each runs for 10-50 s.
pytestmark = pytest.mark.slow

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
def test_tutorial_runs(path, monkeypatch, capsys, run_script):
    if (os.path.basename(path) in NOT_ON_JAX
            and keras.backend.backend() == "jax"):
        pytest.skip("slow on JAX; runs under TensorFlow and torch")
    monkeypatch.setenv("KERAS_BAYES_FAST", "1")
    run_script(path)
    assert "Tutorial finished." in capsys.readouterr().out
