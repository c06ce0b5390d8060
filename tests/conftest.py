# Importing torch before TensorFlow avoids a known segfault when both load in
# one process (Keras' own conftest does the same); the ivon-opt reference
# test needs torch on every backend.
try:
    import torch  # noqa: F401
except ImportError:
    pass

import keras
import pytest


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return x[:1200], y[:1200], x[1200:], y[1200:]
