"""The Filter Response Normalization layer against NumPy."""

import keras
import numpy as np
import pytest

from keras_bayes.layers import FilterResponseNormalization


def _numpy_frn(x, gamma, beta, tau, eps):
    nu2 = np.mean(x**2, axis=(1, 2), keepdims=True)
    return np.maximum(gamma * x / np.sqrt(nu2 + eps) + beta, tau)


def test_frn_matches_numpy_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 6)).astype("float32")
    layer = FilterResponseNormalization(epsilon=1e-3)
    layer.build(x.shape)
    gamma = rng.normal(size=(1, 1, 1, 6)).astype("float32")
    beta = rng.normal(size=(1, 1, 1, 6)).astype("float32")
    tau = rng.normal(size=(1, 1, 1, 6)).astype("float32")
    layer.set_weights([gamma, beta, tau])
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, _numpy_frn(x, gamma, beta, tau, 1e-3),
                               rtol=1e-5, atol=1e-5)
    # Same in training and inference: no batch statistics.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x, training=True)), out, rtol=1e-6)
    model = keras.Sequential([keras.Input((5, 4, 6)), layer])
    path = str(tmp_path / "frn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), out, rtol=1e-6)


def test_frn_bad_input():
    with pytest.raises(ValueError, match="epsilon"):
        FilterResponseNormalization(epsilon=0)
    with pytest.raises(ValueError, match="rank >= 3"):
        FilterResponseNormalization().build((4, 3))
