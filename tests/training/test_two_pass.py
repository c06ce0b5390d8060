"""The two-pass training step (`TwoPassModel`) and plain SAM."""

import keras
import numpy as np
import pytest

from keras_bayes.optimizers.bsam import BSAM
from keras_bayes.optimizers.sam import SAM
from keras_bayes.training import TwoPassModel

EAGER = pytest.mark.parametrize("eager", [False, True],
                                ids=["compiled", "eager"])


def data(n=8, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, k)).astype("float32")
    return x, y


def dense_model(d=3, k=2, seed=3):
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    return keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(k, kernel_initializer=init,
                           bias_initializer=keras.initializers.Constant(0.1)),
    ])


def mse_grads(kernel, bias, x, y):
    """Gradients of mean((x·W + b − y)²) over batch and outputs."""
    residual = x @ kernel + bias - y
    scale = 2.0 / residual.size
    return scale * x.T @ residual, scale * residual.sum(0)


def numpy_sam_step(weights, momenta, x, y, lr, rho, mu, wd):
    g1 = mse_grads(*weights, x, y)
    norm = np.sqrt(sum(np.sum(g**2) for g in g1))
    point = [w + rho * g / (norm + 1e-12) for w, g in zip(weights, g1)]
    g2 = mse_grads(*point, x, y)
    momenta = [mu * m + g + wd * w for m, g, w in zip(momenta, g2, weights)]
    weights = [w - lr * m for w, m in zip(weights, momenta)]
    return weights, momenta


def compiled(model, optimizer, eager, **kwargs):
    wrapper = TwoPassModel(model, **kwargs)
    wrapper.compile(optimizer=optimizer, loss="mse", run_eagerly=eager)
    return wrapper


@EAGER
def test_sam_matches_numpy_step_by_step(eager):
    x, y = data()
    lr, rho, mu, wd = 0.1, 0.3, 0.9, 0.05
    wrapper = compiled(dense_model(), SAM(lr, rho=rho, momentum=mu,
                                          weight_decay=wd), eager)
    weights = [np.array(w, dtype="float64") for w in wrapper.get_weights()]
    momenta = [np.zeros_like(w) for w in weights]
    for _ in range(3):
        loss = wrapper.train_on_batch(x, y)
        expected_loss = np.mean((x @ weights[0] + weights[1] - y) ** 2)
        # The logged loss is the first-pass loss, as in Keras.
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        weights, momenta = numpy_sam_step(weights, momenta, x, y, lr, rho,
                                          mu, wd)
        for got, want in zip(wrapper.get_weights(), weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@EAGER
def test_both_passes_see_the_same_minibatch(eager):
    # Two minibatches per epoch, not shuffled: a second pass on any other
    # batch than the first pass's would not match the reference.
    x, y = data(n=8)
    lr, rho, mu = 0.2, 0.5, 0.5
    wrapper = compiled(dense_model(), SAM(lr, rho=rho, momentum=mu), eager)
    weights = [np.array(w, dtype="float64") for w in wrapper.get_weights()]
    momenta = [np.zeros_like(w) for w in weights]
    wrapper.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for batch in (slice(0, 4), slice(4, 8)):
        weights, momenta = numpy_sam_step(weights, momenta, x[batch],
                                          y[batch], lr, rho, mu, 0.0)
    for got, want in zip(wrapper.get_weights(), weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sam", "bsam"])
def test_without_wrapper_raises(optimizer):
    x, y = data()
    opt = SAM(0.1) if optimizer == "sam" else BSAM(0.1, ess=8.0)
    model = dense_model()
    model.compile(optimizer=opt, loss="mse")
    with pytest.raises(ValueError, match="TwoPassModel"):
        model.fit(x, y, verbose=0)


def test_one_pass_optimizer_falls_back_to_keras_step():
    x, y = data()
    plain = dense_model()
    wrapped = TwoPassModel(dense_model())
    for model in (plain, wrapped):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.train_on_batch(x, y)
    for a, b in zip(plain.get_weights(), wrapped.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("bn_update,updates", [("first", 1), ("both", 2)])
@EAGER
def test_batchnorm_policy(bn_update, updates, eager):
    # BatchNorm on the inputs: its batch statistics do not depend on the
    # weights, so after one step the moving mean shows how often it was
    # updated: (1 − 0.9^updates)·batch mean.
    x, y = data()
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.Dense(2),
    ])
    wrapper = compiled(model, SAM(0.1, rho=0.5), eager, bn_update=bn_update)
    wrapper.train_on_batch(x, y)
    moving_mean = keras.ops.convert_to_numpy(
        model.layers[0].moving_mean)
    np.testing.assert_allclose(
        moving_mean, (1.0 - 0.9**updates) * x.mean(0), rtol=1e-5, atol=1e-6)


def test_bad_bn_update():
    with pytest.raises(ValueError, match="bn_update"):
        TwoPassModel(dense_model(), bn_update="second")


@EAGER
def test_logs_and_metrics_come_from_the_first_pass(eager):
    x, y = data()
    wrapper = TwoPassModel(dense_model())
    wrapper.compile(optimizer=SAM(0.1, rho=1.0), loss="mse",
                    metrics=["mae"], run_eagerly=eager)
    kernel, bias = wrapper.get_weights()
    logs = wrapper.train_on_batch(x, y, return_dict=True)
    prediction = x @ kernel + bias
    np.testing.assert_allclose(logs["loss"], np.mean((prediction - y)**2),
                               rtol=1e-5)
    np.testing.assert_allclose(logs["mae"], np.mean(np.abs(prediction - y)),
                               rtol=1e-5)


def test_sam_config_round_trip():
    opt = SAM(0.3, rho=0.2, momentum=0.5, weight_decay=1e-3, epsilon=1e-8,
              clipnorm=1.0, name="my_sam")
    config = opt.get_config()
    for key, value in dict(learning_rate=0.3, rho=0.2, momentum=0.5,
                           weight_decay=1e-3, epsilon=1e-8,
                           clipnorm=1.0, name="my_sam").items():
        assert config[key] == pytest.approx(value), key
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is SAM and again.get_config() == config


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs,name", [
    (dict(rho=-0.1), "rho"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
])
def test_sam_bad_hyperparameters(kwargs, name):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        SAM(**kwargs)


def test_wrapper_saves_and_loads_with_sam(tmp_path):
    x, y = data()
    wrapper = compiled(dense_model(), SAM(0.1, rho=0.2), False)
    wrapper.train_on_batch(x, y)
    path = str(tmp_path / "sam.keras")
    wrapper.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TwoPassModel)
    assert isinstance(loaded.optimizer, SAM)
    for model in (wrapper, loaded):
        model.train_on_batch(x, y)
    for a, b in zip(wrapper.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bn_update", ["first", "both"])
@EAGER
def test_dropout_masks_of_the_two_passes(bn_update, eager):
    # With rho = 0 the second pass runs at the weights themselves: with the
    # same Dropout mask ("first") g2 equals g1 and SAM makes exactly an SGD
    # step; with "both" pass 2 draws a fresh mask.
    x, y = data(n=16, d=6)

    def model():
        init = keras.initializers.RandomNormal(stddev=0.5, seed=3)
        return keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(32, activation="tanh", kernel_initializer=init),
            keras.layers.Dropout(0.5, seed=11),
            keras.layers.Dense(2, kernel_initializer=init),
        ])

    sam = compiled(model(), SAM(0.1, rho=0.0, momentum=0.0), eager,
                   bn_update=bn_update)
    sgd = compiled(model(), keras.optimizers.SGD(0.1), eager)
    sam.train_on_batch(x, y)
    sgd.train_on_batch(x, y)
    same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(sam.get_weights(), sgd.get_weights()))
    assert same == (bn_update == "first")
