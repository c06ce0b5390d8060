"""The per-variable updates as one XLA program on TensorFlow
(`keras_bayes.backend.compile_function`): used from `COMPILE_MIN_ENTRIES`
weights up, and the same training as the plain graph."""

import keras
import numpy as np
import pytest

from keras_bayes import optimizers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow compiles the update (JAX compiles the whole step, "
    "torch runs eagerly)")


def test_compiles_from_the_threshold_up():
    import tensorflow as tf

    from keras_bayes.backend import tensorflow as tf_backend

    def update():
        return None

    threshold = tf_backend.COMPILE_MIN_ENTRIES
    assert tf_backend.compile_function(update, threshold - 1) is update
    compiled = tf_backend.compile_function(update, threshold)
    assert isinstance(compiled, tf.types.experimental.PolymorphicFunction)


def _train(monkeypatch, min_entries, make_optimizer):
    from keras_bayes.backend import tensorflow as tf_backend

    monkeypatch.setattr(tf_backend, "COMPILE_MIN_ENTRIES", min_entries)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    optimizer = make_optimizer()
    model.compile(optimizer=optimizer, loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                        verbose=0)
    return optimizer, history.history["loss"]


def _soba():
    return optimizers.SOBA(0.05, ess=64, hess_init=0.5, seed=3,
                           weight_decay=1e-3)


def test_compiled_update_trains_as_the_plain_graph(monkeypatch):
    import tensorflow as tf

    plain, plain_loss = _train(monkeypatch, 10**9, _soba)
    compiled, compiled_loss = _train(monkeypatch, 0, _soba)
    assert isinstance(compiled._compiled_updates["function"],
                      tf.types.experimental.PolymorphicFunction)
    assert not isinstance(plain._compiled_updates["function"],
                          tf.types.experimental.PolymorphicFunction)
    # Same noise (one generator), same arithmetic up to XLA's fused
    # multiply-adds: equal to float32 rounding after 8 steps.
    np.testing.assert_allclose(compiled_loss, plain_loss, rtol=1e-5)
    for a, b in zip(compiled.posterior_mean(), plain.posterior_mean()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(compiled.posterior_std(), plain.posterior_std()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert int(compiled.iterations.numpy()) == 8


def test_lie_group_rules_keep_the_plain_graph(monkeypatch):
    # Their noise comes from Keras' random ops, slow under XLA on a CPU.
    import tensorflow as tf

    optimizer, loss = _train(monkeypatch, 0, lambda: optimizers.LieAffine(
        0.1, ess=64, seed=3, weight_decay=1e-3))
    assert not isinstance(optimizer._compiled_updates["function"],
                          tf.types.experimental.PolymorphicFunction)
    assert np.all(np.isfinite(loss))
