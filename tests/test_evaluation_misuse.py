"""Misuse of Predictive, the metrics and UncertaintyMetrics fails loudly
(issue 16): wrong `from_logits`, empty inputs, MC dropout without dropout,
`ood_data` of the wrong shape, one-hot labels."""

import warnings

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes.metrics import evaluate_probabilities
from keras_bayes.metrics import evaluate_uncertainty
from keras_bayes.optimizers import SOBA
from keras_bayes.predictive import dropout_layers

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 5)).astype("float32")
Y = RNG.integers(0, 3, size=20)


def _model(units=3, activation=None, extra=()):
    """A one-layer model compiled with a built SOBA (no fit needed)."""
    model = keras.Sequential(
        [keras.Input((5,)), *extra,
         keras.layers.Dense(units, activation=activation)])
    optimizer = SOBA(0.1, ess=100, seed=0)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer, "mse")
    return model


@pytest.fixture
def no_from_logits_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*from_logits")
        yield


# -- 1. from_logits ---------------------------------------------------------

@pytest.mark.parametrize("activation, found", [
    (None, r"values in \["),             # logits: negative and > 1
    ("sigmoid", "sums differ from 1"),   # multi-label sigmoid, rows != 1
    ("relu", r"values in \["),           # non-negative, but > 1 / no sums
])
def test_outputs_that_are_not_probabilities_raise(activation, found):
    model = _model(activation=activation)
    if activation == "relu":  # make the outputs large and non-negative
        model.layers[-1].bias.assign(np.full(3, 3.0, "float32"))
    pred = keras_bayes.Predictive(model, 2, from_logits=False, seed=0)
    for predict in (pred.predict, pred.predict_at_mean, pred.predict_samples):
        with pytest.raises(ValueError, match=f"from_logits.*{found}"):
            predict(X)


def test_probabilities_with_from_logits_true_warn():
    model = _model(activation="softmax")
    pred = keras_bayes.Predictive(model, 2, from_logits=True, seed=0)
    with pytest.warns(UserWarning, match="pass `from_logits=False`"):
        pred.predict(X)
    binary = _model(units=1, activation="sigmoid")
    with pytest.warns(UserWarning, match="every value lies in"):
        keras_bayes.Predictive(binary, 2, from_logits=True).predict_at_mean(X)


def test_matching_from_logits_is_quiet_and_unchanged(no_from_logits_warning):
    logits = _model()
    pred = keras_bayes.Predictive(logits, 3, from_logits=True, seed=1)
    log_samples = pred.predict_log_samples(X)
    np.testing.assert_allclose(np.exp(log_samples).sum(-1), 1.0, rtol=1e-12)
    probs = _model(activation="softmax")
    pred = keras_bayes.Predictive(probs, 3, seed=1)
    at_mean = pred.predict_at_mean(X)
    np.testing.assert_allclose(at_mean, probs.predict(X, verbose=0),
                               rtol=1e-6)


def test_a_single_sigmoid_column_is_a_binary_classifier(
        no_from_logits_warning):
    model = _model(units=1, activation="sigmoid")
    p = model.predict(X, verbose=0).astype(np.float64)
    pred = keras_bayes.Predictive(model, 3, seed=0)
    np.testing.assert_allclose(pred.predict_at_mean(X),
                               np.concatenate([1 - p, p], axis=1), rtol=1e-6)
    averaged = pred.predict(X)
    assert averaged.shape == (len(X), 2)
    np.testing.assert_allclose(averaged.sum(1), 1.0, rtol=1e-12)

    logit_model = _model(units=1)
    logit_model.layers[-1].bias.assign(np.array([-2.0], "float32"))
    z = logit_model.predict(X, verbose=0).astype(np.float64)
    pred = keras_bayes.Predictive(logit_model, 3, from_logits=True)
    sigmoid = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(pred.predict_at_mean(X),
                               np.concatenate([1 - sigmoid, sigmoid], 1),
                               rtol=1e-6)
    # A logit outside [0, 1] read as a probability.
    with pytest.raises(ValueError, match="from_logits=False"):
        keras_bayes.Predictive(logit_model, 3).predict_at_mean(X)


# -- 2. empty inputs --------------------------------------------------------

def test_empty_inputs_raise_a_clear_error():
    model = _model(extra=[keras.layers.Dropout(0.5)])
    empty = np.zeros((0, 5), "float32")
    for method in ("posterior", "dropout"):
        pred = keras_bayes.Predictive(model, 2, from_logits=True,
                                      method=method)
        for predict in (pred.predict, pred.predict_at_mean,
                        pred.predict_samples, pred.predict_log_samples):
            with pytest.raises(ValueError, match=r"no examples.*\(0, 5\)"):
                predict(empty)


# -- 3. MC dropout without dropout ------------------------------------------

def test_mc_dropout_without_a_dropout_layer_raises():
    with pytest.raises(ValueError, match="needs a model with a Dropout"):
        keras_bayes.Predictive(_model(), 2, from_logits=True,
                               method="dropout").predict(X)
    rate_zero = _model(extra=[keras.layers.Dropout(0.0)])
    with pytest.raises(ValueError, match="rate 0"):
        keras_bayes.Predictive(rate_zero, 2, from_logits=True,
                               method="dropout").predict_samples(X)
    # With a dropout layer, the same call samples.
    with_dropout = _model(extra=[keras.layers.Dropout(0.5)])
    samples = keras_bayes.Predictive(with_dropout, 2, from_logits=True,
                                     method="dropout").predict_samples(X)
    assert not np.allclose(samples[0], samples[1])


def test_dropout_layers_are_found_recursively():
    inner = keras.Sequential([keras.Input((4, 3)),
                              keras.layers.SpatialDropout1D(0.2)])
    model = keras.Sequential([
        keras.Input((4, 3)), inner, keras.layers.GaussianNoise(0.1),
        keras.layers.AlphaDropout(0.1), keras.layers.GaussianDropout(0.1),
        keras.layers.LSTM(2, recurrent_dropout=0.1),
        keras.layers.Dropout(0.0), keras.layers.Dense(2)])
    random, inactive = dropout_layers(model)
    assert {type(layer).__name__ for layer in random} >= {
        "SpatialDropout1D", "GaussianNoise", "AlphaDropout",
        "GaussianDropout", "LSTM"}
    assert [type(layer).__name__ for layer in inactive] == ["Dropout"]
    plain = keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(2),
                              keras.layers.Dense(2)])
    assert dropout_layers(plain) == ([], [])


def test_identical_dropout_passes_warn():
    class UnusedDropout(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)
            self.dropout = keras.layers.Dropout(0.5)  # never called

        def call(self, x, training=False):
            return self.dense(x)

    model = UnusedDropout()
    model(X[:1])
    with pytest.warns(UserWarning, match="identical outputs"):
        keras_bayes.Predictive(model, 2, from_logits=True,
                               method="dropout").predict_samples(X)


def test_callback_with_dropout_method_fails_before_training():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    callback = keras_bayes.callbacks.UncertaintyMetrics(
        (X, Y), num_samples=2, from_logits=True, method="dropout")
    with pytest.raises(ValueError, match="Dropout"):
        model.fit(X, Y, epochs=1, batch_size=10, verbose=0,
                  callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0


# -- 4. ood_data of the wrong shape -----------------------------------------

@pytest.mark.backend_independent
def test_ood_data_of_the_wrong_shape_fails_at_construction():
    with pytest.raises(ValueError, match=(
            r"`ood_data`.*\(5,\).*\(20, 5\).*ood_data of shape \(8, 7\)")):
        keras_bayes.callbacks.UncertaintyMetrics(
            (X, Y), ood_data=np.zeros((8, 7), "float32"))
    with pytest.raises(ValueError, match=r"ood_data of shape \(8, 5, 1\)"):
        keras_bayes.callbacks.UncertaintyMetrics(
            (X, Y), ood_data=np.zeros((8, 5, 1), "float32"))
    with pytest.raises(ValueError, match="validation_data` has no examples"):
        keras_bayes.callbacks.UncertaintyMetrics((X[:0], Y[:0]))


# -- 5. one-hot labels ------------------------------------------------------

@pytest.mark.backend_independent
def test_evaluate_probabilities_accepts_one_hot_labels():
    probs = RNG.dirichlet(np.ones(3), size=20)
    probs_ood = RNG.dirichlet(np.ones(3), size=7)
    one_hot = keras.utils.to_categorical(Y, 3)
    assert one_hot.shape == (20, 3)
    expected = evaluate_probabilities(Y, probs, probs_ood)
    assert evaluate_probabilities(one_hot, probs, probs_ood) == expected
    assert evaluate_probabilities(one_hot.astype(bool), probs) == (
        evaluate_probabilities(Y[:, None], probs))
    assert keras_bayes.metrics.expected_calibration_error(one_hot, probs) == (
        keras_bayes.metrics.expected_calibration_error(Y, probs))


@pytest.mark.backend_independent
@pytest.mark.parametrize("labels, message", [
    (np.full((20, 3), 1 / 3), "not one-hot"),              # soft labels
    (np.ones((20, 3)), "not one-hot"),                     # several 1s
    (np.eye(4)[Y], "one-hot with 4 columns.*3 classes"),   # class count
])
def test_labels_that_are_not_one_hot_are_named(labels, message):
    probs = RNG.dirichlet(np.ones(3), size=20)
    with pytest.raises(ValueError, match=message):
        evaluate_probabilities(labels, probs)


@pytest.mark.backend_independent
def test_callback_checks_one_hot_labels_at_construction():
    with pytest.raises(ValueError, match="validation_data labels.*not one"):
        keras_bayes.callbacks.UncertaintyMetrics((X, np.full((20, 3), .3)))


def test_one_hot_labels_in_evaluate_uncertainty_and_the_callback():
    model = _model()
    one_hot = keras.utils.to_categorical(Y, 3)
    pred = keras_bayes.Predictive(model, 2, from_logits=True, seed=0)
    assert (evaluate_uncertainty(pred, X, one_hot, x_ood=X[:6] + 3)
            == evaluate_uncertainty(pred, X, Y, x_ood=X[:6] + 3))
    logs = []
    for labels in (Y, one_hot):
        callback = keras_bayes.callbacks.UncertaintyMetrics(
            (X, labels), num_samples=2, from_logits=True)
        callback.set_model(model)
        logs.append(callback.evaluate())
    assert logs[0] == logs[1] and "val_bma_ece" in logs[0]
