# Importing torch before TensorFlow avoids a known segfault when both load in
# one process (Keras' own conftest does the same); the ivon-opt reference
# test needs torch on every backend.
try:
    import torch  # noqa: F401
except ImportError:
    pass

import atexit
import gc
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

    # Private to each process, also to each pytest-xdist worker: measured
    # on the JAX files, sharing it between two workers gained nothing.
    _JAX_CACHE = tempfile.mkdtemp(prefix="keras_bayes_jax_cache_")
    atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# KERAS_BAYES_TEST_FAST_COMPILE=1 (scripts/test.sh sets it for the main
# runs): a test's time is mostly compiling small train steps that then run
# a few times, so the suite asks the compilers for less optimisation work.
# The programs compiled are the same; only how hard the compiler works on
# them changes (no fast-math either way, so results agree within the tests'
# tolerances; the Keras floor subset runs without it, so the default
# compiler path stays tested too). Run pytest without the variable to get
# the settings a user gets.
FAST_COMPILE = os.environ.get("KERAS_BAYES_TEST_FAST_COMPILE") == "1"

if FAST_COMPILE and keras.backend.backend() == "jax":
    # Inherited by subprocesses through the environment as well.
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    jax.config.update("jax_disable_most_optimizations", True)

if FAST_COMPILE and keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Grappler rewrites every traced graph before its first run; on graphs
    # that run a handful of steps that costs more than it saves.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def pytest_report_header(config):
    return (
        f"keras {keras.__version__}, backend {keras.backend.backend()}"
        + (", fast compile (KERAS_BAYES_TEST_FAST_COMPILE=1)" if FAST_COMPILE else "")
    )


def pytest_collection_modifyitems(config, items):
    # In a parallel run (pytest-xdist; scripts/test.sh runs `-n 2 --dist
    # loadgroup`) each worker takes the next test as it frees up, in this
    # order. Starting with the long ones (marked `slow`) keeps the end of
    # the run from being one worker alone on a minute-long test. A stable
    # sort: the rest keeps pytest's order. Plain runs are not reordered.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session):
    # Every test starts with `clear_session()`, whose `gc.collect()` walks
    # every object alive, and with TensorFlow, JAX and torch imported that is
    # ~0.5 s a test (~10 minutes of the suite). Freezing what exists once
    # the tests are collected (modules, the backends' import-time objects:
    # none of it is garbage a test could leave) keeps those objects out of
    # every later collection, which then only looks at what tests created.
    gc.collect()
    gc.freeze()


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
