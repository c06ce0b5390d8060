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


def _gradient_of_one_example(model, x, y, training=False):
    """∇ℓ(x, y) with the backend's own autodiff (one example or a batch)."""
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "jax":
        import jax

        def loss(values, x, y):
            y_pred, _ = model.stateless_call(
                values, [v.value for v in model.non_trainable_variables], x,
                training=training)
            return LOSS(y, y_pred)

        # Jitted once per shape: the eager loop is slow on a busy CPU.
        grad = _JAX_GRADS.setdefault((id(model), training),
                                     jax.jit(jax.grad(loss)))
        return grad([v.value for v in variables], x, y)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = LOSS(y, model(x, training=training))
        return tape.gradient(value, [v.value for v in variables])
    import torch

    model.zero_grad()
    value = LOSS(y, model(x, training=training))
    return torch.autograd.grad(value, [v.value for v in variables])


_JAX_GRADS = {}


def _loop_over_examples(model, x, y):
    """mean_i ∇ℓ_i and mean_i (∇ℓ_i)² from one autodiff call per example."""
    per_example = [
        [_numpy(g) for g in _gradient_of_one_example(model, x[i:i + 1],
                                                     y[i:i + 1])]
        for i in range(len(x))
    ]
    mean = [np.mean([g[j] for g in per_example], axis=0)
            for j in range(len(per_example[0]))]
    squared = [np.mean([g[j] ** 2 for g in per_example], axis=0)
               for j in range(len(per_example[0]))]
    return mean, squared


def _cnn():
    init = keras.initializers.GlorotUniform(seed=3)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, activation="tanh", kernel_initializer=init),
        keras.layers.LayerNormalization(),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4, kernel_initializer=init),
    ])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_per_example_curvature_equals_a_loop_over_examples(kind):
    # On torch, the cnn case checks the vmap-friendly path for Keras'
    # channels-last convolutions (and a pooling after them).
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model = small_classifier(hidden=5, inputs=7, classes=3)
        x = rng.normal(size=(6, 7)).astype("float32")
        y = rng.integers(0, 3, size=6)
    else:
        model = _cnn()
        x = rng.normal(size=(5, 6, 6, 2)).astype("float32")
        y = rng.integers(0, 4, size=5)
    loss, mean, squared = per_example_squared_gradients(model, x, y, LOSS)
    expected_mean, expected_squared = _loop_over_examples(model, x, y)
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


def test_a_loss_name_gives_what_the_loss_object_gives():
    # A name resolves to Keras' per-example loss *function*; it must be
    # averaged like the `Loss` object (JAX refused its non-scalar output).
    rng = np.random.default_rng(1)
    model = small_classifier(hidden=5, inputs=7, classes=3)
    x = rng.normal(size=(6, 7)).astype("float32")
    y = rng.normal(size=(6, 3)).astype("float32")
    by_name = per_example_squared_gradients(model, x, y, "mse")
    by_object = per_example_squared_gradients(
        model, x, y, keras.losses.MeanSquaredError())
    assert float(_numpy(by_name[0])) == pytest.approx(
        float(_numpy(by_object[0])), rel=1e-6)
    for name_part, object_part in zip(by_name[1:], by_object[1:]):
        weights_close([_numpy(v) for v in name_part],
                      [_numpy(v) for v in object_part], atol=1e-7, rtol=1e-5)


def _batch_norm_model(kind):
    init = keras.initializers.GlorotUniform(seed=5)
    # γ, β away from 1, 0 so that a wrong normalisation shows.
    norm = keras.layers.BatchNormalization(
        gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=1),
        beta_initializer=keras.initializers.RandomUniform(-0.5, 0.5, seed=2))
    if kind == "dense":
        layers = [keras.Input((7,)), keras.layers.Dense(5,
                                                        kernel_initializer=init)]
    else:
        layers = [keras.Input((6, 6, 2)),
                  keras.layers.Conv2D(3, 3, kernel_initializer=init)]
    layers += [norm, keras.layers.Activation("tanh")]
    if kind == "conv":
        layers += [keras.layers.Flatten()]
    layers += [keras.layers.Dense(3, kernel_initializer=init)]
    return keras.Sequential(layers), norm


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_batch_norm_curvature_equals_a_loop_with_frozen_statistics(kind):
    rng = np.random.default_rng(1)
    model, norm = _batch_norm_model(kind)
    shape = (6, 7) if kind == "dense" else (6, 6, 6, 2)
    x = (rng.normal(size=shape) * 2 + 1).astype("float32")
    y = rng.integers(0, 3, size=6)
    moving = [_numpy(v) for v in norm.non_trainable_variables]
    _, _, squared = per_example_squared_gradients(model, x, y, LOSS)
    # The statistics were taken from the batch, not from (or into) the
    # layer's moving averages.
    weights_close([_numpy(v) for v in norm.non_trainable_variables], moving,
                  atol=0)

    # Independent reference: the batch statistics of BN's input in NumPy,
    # written into the moving averages, and each example alone through the
    # model in inference mode (which normalises with the moving averages).
    features = _numpy(keras.Model(model.inputs[0], norm.input)(x))
    axes = tuple(range(features.ndim - 1))
    norm.moving_mean.assign(features.mean(axis=axes))
    norm.moving_variance.assign(features.var(axis=axes))
    _, expected_squared = _loop_over_examples(model, x, y)
    weights_close([_numpy(s) for s in squared], expected_squared,
                  atol=1e-6, rtol=1e-4)


def test_batch_normalization_errors_and_options():
    model, _ = _batch_norm_model("dense")
    x = np.ones((3, 7), "float32")
    y = np.zeros(3, "int32")
    with pytest.raises(ValueError, match="BatchNormalization"):
        per_example_squared_gradients(model, x, y, LOSS, batch_norm="error")
    with pytest.raises(ValueError, match="`batch_norm` must be one of"):
        per_example_squared_gradients(model, x, y, LOSS, batch_norm="no")
    with pytest.raises(ValueError, match="renorm=True"):
        per_example_squared_gradients(keras.Sequential([
            keras.Input((7,)), keras.layers.BatchNormalization(renorm=True),
            keras.layers.Dense(2)]), x, y, LOSS)
    wrapped = VOGNModel(model, batch_norm="error")
    wrapped.compile(VOGN(1e-3, ess=10.0), LOSS)
    with pytest.raises(ValueError, match="BatchNormalization"):
        wrapped.fit(x, y, verbose=0)
    assert VOGNModel.from_config(wrapped.get_config()).batch_norm == "error"
    with pytest.raises(ValueError, match="`batch_norm` must be one of"):
        VOGNModel(model, batch_norm="frozen")


def test_vogn_with_batch_norm_steps_as_the_paper_and_trains(digits):
    """The first step: BN's γ, β stay at their mean (no noise, no prior)
    while the others are sampled, and the momentum is the minibatch
    gradient (statistics differentiated). Then a short fit."""
    x, y, x_test, y_test = digits
    x, y = x[:512], y[:512]
    init = keras.initializers.GlorotUniform(seed=7)
    # A short momentum: 16 steps must fill the moving statistics that
    # `evaluate` normalises with.
    norm = keras.layers.BatchNormalization(momentum=0.8)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32, kernel_initializer=init),
        norm, keras.layers.Activation("relu"),
        keras.layers.Dense(10, kernel_initializer=init)])
    wrapped = VOGNModel(model)
    hp = dict(ess=len(x), weight_decay=2e-3, temperature=0.5)
    opt = VOGN(0.1, beta2=0.99, seed=1, **hp)
    wrapped.compile(opt, LOSS, metrics=["accuracy"])
    # One test batch: one compiled test step on every backend.
    before, _ = wrapped.evaluate(x_test, y_test, batch_size=len(x_test),
                                 verbose=0)

    initial = [_numpy(v) for v in model.trainable_variables]
    expected = [_numpy(g) for g in _gradient_of_one_example(
        model, x[:64], y[:64], training=True)]
    wrapped.train_on_batch(x[:64], y[:64])
    is_bn = [any(v is w for w in norm.trainable_variables)
             for v in model.trainable_variables]
    assert sum(is_bn) == 2
    prior = hp["temperature"] * hp["weight_decay"]
    momentum = [_numpy(m) for m in opt._state["momentum"]]
    for m, g, mu, bn in zip(momentum, expected, initial, is_bn):
        # m = β1·0 + (ĝ + δ̃·μ), with δ̃ = 0 on the deterministic weights.
        np.testing.assert_allclose(m, g + (0.0 if bn else prior) * mu,
                                   rtol=1e-4, atol=1e-6)
    means, stds = opt.posterior_mean(), opt.posterior_std()
    for variable, mean, std, bn in zip(model.trainable_variables, means,
                                       stds, is_bn):
        value = _numpy(variable)
        if bn:
            np.testing.assert_array_equal(value, mean)   # no noise
            np.testing.assert_array_equal(std, 0.0)
        else:
            assert np.all(std > 0)
            assert np.max(np.abs(value - mean)) > 1e-3   # a sample
    posterior = opt.posterior()
    assert len(posterior) == len(is_bn) - 2
    assert not any("batch_normalization" in p for p in posterior.paths)

    # Two epochs through the same compiled step (on JAX, `fit` would
    # compile its own).
    order = np.random.default_rng(0).permutation(np.tile(np.arange(8), 2))
    for batch in order[1:]:
        wrapped.train_on_batch(x[batch * 64:(batch + 1) * 64],
                               y[batch * 64:(batch + 1) * 64])
    with opt.mean_weights():
        after, accuracy = wrapped.evaluate(
            x_test, y_test, batch_size=len(x_test), verbose=0)
    assert after < 0.3 * before, (before, after)
    assert accuracy > 0.7, accuracy      # chance is 0.1; measured ≈ 0.83
    np.testing.assert_array_equal(opt.posterior_std()[is_bn.index(True)],
                                  0.0)


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


@pytest.mark.parametrize("fused", [False, True])
def test_one_step_matches_equations(fused):
    """A Bayesian and a deterministic variable, per variable or fused."""
    rng = np.random.default_rng(4)
    shape = (5, 2)
    hp = dict(ess=50.0, beta1=0.8, beta2=0.9, temperature=0.5, damping=0.01,
              weight_decay=0.02)
    opt = VOGN(0.1, seed=0, fused_update=fused,
               deterministic_names=["^frozen"], **hp)
    states = []
    variables = []
    for name in ("weights", "frozen_scale"):
        mu, s, m, g, h = (rng.normal(size=shape).astype("float32")
                          for _ in range(5))
        states.append((mu, np.abs(s), m, g, np.abs(h)))
        variables.append(keras.Variable(mu, name=name))
    opt.build(variables)
    opt.iterations.assign(1)
    for index, (mu, s, m, _, _) in enumerate(states):
        for name, value in (("mean", mu), ("precision", s), ("momentum", m)):
            opt._state[name][index].assign(value)
    with opt.per_example_step():
        opt.set_squared_gradients([h for *_, h in states], variables)
        opt.apply_gradients([(g, v) for (_, _, _, g, _), v
                             in zip(states, variables)])
    for index, deterministic in ((0, False), (1, True)):
        mu, s, m, g, h = states[index]
        prior = 0.0 if deterministic else (hp["temperature"]
                                           * hp["weight_decay"])
        # No entropy term on a deterministic weight: τ plays no part in s.
        tau = 1.0 if deterministic else hp["temperature"]
        m_new = hp["beta1"] * m + g + prior * mu
        s_new = (1 - tau * (1 - hp["beta2"])) * s + (1 - hp["beta2"]) * h
        mu_new = mu - 0.1 * m_new / (s_new + prior + hp["damping"])
        np.testing.assert_allclose(opt.posterior_mean()[index], mu_new,
                                   rtol=1e-5)
        std = opt.posterior_std()[index]
        value = _numpy(variables[index])
        if deterministic:
            np.testing.assert_array_equal(std, 0.0)
            np.testing.assert_array_equal(value, opt.posterior_mean()[index])
        else:
            np.testing.assert_allclose(
                std, 1 / np.sqrt(hp["ess"] * (s_new + prior + hp["damping"])),
                rtol=1e-5)
            assert np.max(np.abs(value - mu_new)) > 1e-3


def test_mark_deterministic_after_build():
    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(
        np.ones(2, "float32"), name="other")
    opt = VOGN(0.1, ess=10.0)
    opt.build([a, b])
    assert np.all(opt.posterior_std()[0] > 0)
    opt.mark_deterministic(var_list=[a])
    np.testing.assert_array_equal(opt.posterior_std()[0], 0.0)
    assert np.all(opt.posterior_std()[1] > 0)
    opt.mark_deterministic(var_names=["^oth"])
    np.testing.assert_array_equal(opt.posterior_std()[1], 0.0)
    assert opt.get_config()["deterministic_names"] == ["^oth"]
    assert len(opt.posterior()) == 0


def test_short_fit_reduces_the_loss(digits):
    x, y, _, _ = digits
    x, y = x[:256], y[:256]
    model = VOGNModel(small_classifier())
    opt = VOGN(0.05, ess=len(x), beta2=0.99, seed=1)
    model.compile(opt, LOSS)
    before = float(_numpy(LOSS(y, model(x))))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    after = float(_numpy(LOSS(y, model(x))))
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
                weight_decay=3e-4, seed=5, name="v",
                deterministic_names=["batch_norm", "bias$"])
    opt = VOGN(**args)
    config = opt.get_config()
    for key, value in args.items():
        assert config[key] == (value if isinstance(value, list)
                               else pytest.approx(value)), key
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
        ({"deterministic_names": [3]}, r"`deterministic_names`"),
    ]:
        with pytest.raises(ValueError, match=message):
            VOGN(**{**dict(learning_rate=0.1, ess=10.0), **kwargs})
