# Importing torch before TensorFlow avoids a known segfault when both load in
# one process (Keras' own conftest does the same); the ivon-opt reference
# test needs torch on every backend.
try:
    import torch  # noqa: F401
except ImportError:
    pass

import atexit
import os
import shutil
import tempfile

import keras
import pytest

if keras.backend.backend() == "jax":
    # Most of a JAX test's time is XLA compiling a train step that an
    # earlier test already compiled (the same model, optimizer and shapes
    # in a new `compile`). A compilation cache private to this run reuses
    # those executables; the same program gives the same executable, so no
    # result changes. Subprocesses (tutorials, workers) inherit it through
    # the environment.
    import jax

    _JAX_CACHE = tempfile.mkdtemp(prefix="keras_bayes_jax_cache_")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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
