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
import runpy
import shutil
import sys
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


@pytest.fixture(autouse=True)
def _fresh_session():
    # Keras' `clear_session()` ends with a full `gc.collect()`, which walks
    # every object alive: the backends' import-time objects and whatever
    # the earlier tests left in caches (compiled functions, traces), so it
    # grew from ~0.3 s to ~1 s a test over a JAX run (measured; ~4 of the
    # JAX lane's 16 minutes). The same collection, then `gc.freeze()`:
    # what survives it is no garbage of the previous test, and frozen it
    # stays out of later collections, which then look only at what the
    # tests since created (setup 71 s -> 7 s on 224 JAX tests, same peak
    # memory). Nothing a running test creates is frozen. The price: what was
    # alive at a test's start and later dies inside a reference cycle (a
    # module fixture's model, an evicted cache entry) is never freed; the
    # peak memory did not grow (224 JAX tests: 3.47 GB before, 3.46 after).
    keras.backend.clear_session(free_memory=False)
    gc.collect()
    gc.freeze()
    keras.utils.set_random_seed(1234)
    yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_script(monkeypatch):
    """`run_script(path, *args)` runs the repository script `path` as
    `python <path> <args>` from the checkout's root would, but inside this
    process (`runpy`, as `__main__`).

    A new interpreter would import the backends and compile every program
    again: half of a short script's time (the demo's 40 s, measured). The
    process already has the backend the script would select
    (`KERAS_BACKEND` is set for it too); environment, working directory,
    `sys.argv` and `sys.path` are restored after, figures closed. A script
    that fails raises, as a non-zero exit status would; `sys.exit(0)` is
    success.
    """
    def run(path, *args):
        monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
        monkeypatch.setattr(sys, "path", list(sys.path))  # scripts extend it
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (None, 0), f"{path} exited with {exit_.code}"
        finally:
            if "matplotlib.pyplot" in sys.modules:
                sys.modules["matplotlib.pyplot"].close("all")

    return run


@pytest.fixture
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return x[:1200], y[:1200], x[1200:], y[1200:]
