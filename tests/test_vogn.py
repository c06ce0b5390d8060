"""VOGN and the per-example squared gradients it is built on."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bayes.optimizers import VOGN
from keras_bayes.per_example import VOGNModel
from keras_bayes.per_example import per_example_squared_gradients
from tests.helpers import small_classifier
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _gradient_of_one_example(model, x, y):
    """∇ℓ(x, y) for one example with the backend's own autodiff."""
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "jax":
        import jax

        def loss(values):
            y_pred, _ = model.stateless_call(
                values, [v.value for v in model.non_trainable_variables], x)
            return LOSS(y, y_pred)

        return jax.grad(loss)([v.value for v in variables])
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = LOSS(y, model(x))
        return tape.gradient(value, [v.value for v in variables])
    import torch

    model.zero_grad()
    value = LOSS(y, model(x))
    return torch.autograd.grad(value, [v.value for v in variables])


def _cnn():
    init = keras.initializers.GlorotUniform(seed=3)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, activation="tanh", kernel_initializer=init),
        keras.layers.LayerNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dense(4, kernel_initializer=init),
    ])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_per_example_curvature_equals_a_loop_over_examples(kind):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model = small_classifier(hidden=5, inputs=7, classes=3)
        x = rng.normal(size=(6, 7)).astype("float32")
        y = rng.integers(0, 3, size=6)
    else:
        model = _cnn()
        x = rng.normal(size=(5, 6, 6, 2)).astype("float32")
        y = rng.integers(0, 4, size=5)
    if kind == "cnn" and keras.backend.backend() == "torch":
        # Keras' torch convolutions clone channels-last tensors, which
        # torch.func.vmap does not implement: a clear error, not a result.
        with pytest.raises(ValueError, match="Could not vectorize"):
            per_example_squared_gradients(model, x, y, LOSS)
        return
    loss, mean, squared = per_example_squared_gradients(model, x, y, LOSS)
    per_example = [
        [_numpy(g) for g in _gradient_of_one_example(model, x[i:i + 1],
                                                     y[i:i + 1])]
        for i in range(len(x))
    ]
    expected_mean = [np.mean([g[j] for g in per_example], axis=0)
                     for j in range(len(per_example[0]))]
    expected_squared = [np.mean([g[j] ** 2 for g in per_example], axis=0)
                        for j in range(len(per_example[0]))]
    weights_close([_numpy(s) for s in squared], expected_squared,
                  atol=1e-6, rtol=1e-4)
    weights_close([_numpy(g) for g in mean], expected_mean, atol=1e-6,
                  rtol=1e-4)
    # The mean per-example gradient is the ordinary minibatch gradient.
    weights_close([_numpy(g) for g in mean],
                  [_numpy(g) for g in _gradient_of_one_example(model, x, y)],
                  atol=1e-6, rtol=1e-4)
    batch_loss = _numpy(LOSS(y, model(x)))
    assert float(_numpy(loss)) == pytest.approx(float(batch_loss), rel=1e-5)


def test_batch_normalization_is_a_clear_error():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    x = np.ones((3, 4), "float32")
    with pytest.raises(ValueError, match="BatchNormalization"):
        per_example_squared_gradients(model, x, np.zeros(3, "int32"), LOSS)


def test_unvectorizable_model_is_a_clear_error():
    class DataDependent(keras.layers.Layer):
        def call(self, x):
            # Python control flow on a value: cannot be vectorized.
            if float(ops.convert_to_numpy(ops.sum(x))) > 0:
                return x
            return -x

        def compute_output_shape(self, input_shape):
            return input_shape

    # No `keras.Input`: a symbolic build would already fail.
    model = keras.Sequential([keras.layers.Dense(2), DataDependent()])
    x = np.ones((3, 4), "float32")
    model(x)
    with pytest.raises(ValueError, match="Could not vectorize"):
        per_example_squared_gradients(model, x, np.zeros(3, "int32"), LOSS)


def test_vogn_without_the_wrapper_is_a_clear_error(digits):
    x, y, _, _ = digits
    model = small_classifier()
    model.compile(VOGN(1e-3, ess=len(x)), LOSS)
    with pytest.raises(ValueError, match="VOGNModel"):
        model.fit(x[:32], y[:32], verbose=0)


def test_one_step_matches_equations():
    rng = np.random.default_rng(4)
    shape = (5, 2)
    mu, s, m, g, h = (rng.normal(size=shape) for _ in range(5))
    s, h = np.abs(s), np.abs(h)
    hp = dict(ess=50.0, beta1=0.8, beta2=0.9, temperature=0.5, damping=0.01,
              weight_decay=0.02)
    opt = VOGN(0.1, seed=0, fused_update=False, **hp)
    variable = keras.Variable(mu.astype("float32"))
    opt.build([variable])
    opt.iterations.assign(1)
    for name, value in (("mean", mu), ("precision", s), ("momentum", m)):
        opt._state[name][0].assign(value.astype("float32"))
    with opt.per_example_step():
        opt.set_squared_gradients([h.astype("float32")], [variable])
        opt.apply_gradients([(g.astype("float32"), variable)])
    prior = hp["temperature"] * hp["weight_decay"]
    m_new = hp["beta1"] * m + g + prior * mu
    s_new = (1 - hp["temperature"] * (1 - hp["beta2"])) * s + (
        1 - hp["beta2"]) * h
    mu_new = mu - 0.1 * m_new / (s_new + prior + hp["damping"])
    np.testing.assert_allclose(opt.posterior_mean()[0], mu_new, rtol=1e-5)
    np.testing.assert_allclose(
        opt.posterior_std()[0],
        1 / np.sqrt(hp["ess"] * (s_new + prior + hp["damping"])), rtol=1e-5)


def test_short_fit_reduces_the_loss(digits):
    x, y, _, _ = digits
    x, y = x[:256], y[:256]
    model = VOGNModel(small_classifier())
    opt = VOGN(0.05, ess=len(x), beta2=0.99, seed=1)
    model.compile(opt, LOSS)
    before = float(LOSS(y, model(x)))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    after = float(LOSS(y, model(x)))
    assert after < 0.7 * before, (before, after, history.history["loss"])
    # The curvature estimate was filled by the per-example pass.
    # (Some pixels of the digits are always 0, so some entries stay 0.)
    for squared in opt._state["squared_gradient"]:
        squared = _numpy(squared)
        assert np.all(squared >= 0) and np.mean(squared > 0) > 0.5
    weights_close(model.get_weights(), opt.posterior_mean(), atol=0)


def test_config_round_trip_and_bad_arguments():
    args = dict(learning_rate=0.01, ess=100.0, beta1=0.5, beta2=0.99,
                temperature=0.5, damping=0.1, precision_init=0.2,
                weight_decay=3e-4, seed=5, name="v")
    opt = VOGN(**args)
    config = opt.get_config()
    for key, value in args.items():
        assert config[key] == pytest.approx(value), key
    assert VOGN.from_config(config).get_config() == config
    for kwargs, message in [
        ({"ess": 0.0}, r"`ess` must be in \(0.0, inf\]"),
        ({"beta1": 1.0}, r"`beta1` must be in \[0.0, 1.0\)"),
        ({"beta2": -0.1}, r"`beta2`"),
        ({"damping": -1.0}, r"`damping` must be in \[0.0, inf\]"),
        ({"temperature": -1.0}, r"`temperature`"),
        ({"precision_init": -1.0}, r"`precision_init`"),
        ({"gradient_accumulation_steps": 2},
         r"`gradient_accumulation_steps`"),
    ]:
        with pytest.raises(ValueError, match=message):
            VOGN(**{**dict(learning_rate=0.1, ess=10.0), **kwargs})
