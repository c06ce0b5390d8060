"""Models and checks shared by the tests."""

import keras
import numpy as np


def backend():
    return keras.backend.backend()


def small_classifier(kind="sequential", hidden=16, inputs=64, classes=10):
    """A small MLP built the three ways Keras allows."""
    init = keras.initializers.GlorotUniform(seed=7)
    if kind == "sequential":
        return keras.Sequential(
            [
                keras.Input((inputs,)),
                keras.layers.Dense(hidden, activation="tanh",
                                   kernel_initializer=init),
                keras.layers.Dense(classes, kernel_initializer=init),
            ]
        )
    if kind == "functional":
        x_in = keras.Input((inputs,))
        h = keras.layers.Dense(hidden, activation="tanh",
                               kernel_initializer=init)(x_in)
        return keras.Model(x_in, keras.layers.Dense(
            classes, kernel_initializer=init)(h))
    if kind == "subclassed":
        return SubclassedMLP(hidden, classes, init)
    raise ValueError(kind)


class SubclassedMLP(keras.Model):
    def __init__(self, hidden, classes, init):
        super().__init__()
        self.hidden = keras.layers.Dense(hidden, activation="tanh",
                                         kernel_initializer=init)
        self.out = keras.layers.Dense(classes, kernel_initializer=init)

    def call(self, x):
        return self.out(self.hidden(x))


def weights_close(a, b, atol=1e-6, rtol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol,
                                   rtol=rtol)
