"""Predictive, the uncertainty callback, OOD protocols and plots."""

import os

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes import datasets
from keras_bayes.metrics.report import evaluate_uncertainty
from keras_bayes.optimizers import SOBA
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# Most tests here read one generated dataset (a module fixture, ~0.7 s): a
# parallel run keeps this file on one worker, which makes it once.
pytestmark = pytest.mark.xdist_group("evaluation")


@pytest.fixture(scope="module")
def split_mnist1d():
    (x, y), (xt, yt) = datasets.load_mnist1d(num_samples=1500)
    (xi, yi), _ = datasets.class_split(x, y, range(6))
    (xti, yti), xto = datasets.class_split(xt, yt, range(6))
    return xi, yi, xti, yti, xto


def _mlp(dropout=0.0):
    layers = [keras.Input((40,)), keras.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(6))
    return keras.Sequential(layers)


def _trained(data, optimizer=None, dropout=0.0, epochs=2):
    xi, yi = data[:2]
    model = _mlp(dropout)
    model.compile(optimizer or SOBA(0.1, ess=len(xi), seed=0), LOSS)
    model.fit(xi, yi, epochs=epochs, batch_size=32, verbose=0)
    return model


def test_uncertainty_metrics_callback_writes_logs(split_mnist1d, tmp_path):
    xi, yi, xti, yti, xto = split_mnist1d
    model = _mlp()
    model.compile(SOBA(0.1, ess=len(xi), seed=0), LOSS)
    csv = str(tmp_path / "log.csv")
    callback = keras_bayes.callbacks.UncertaintyMetrics(
        (xti, yti), ood_data=xto, num_samples=3, from_logits=True,
        frequency=2)
    hist = model.fit(xi, yi, epochs=3, batch_size=64, verbose=0,
                     callbacks=[callback, keras.callbacks.CSVLogger(csv)])
    for kind in ("mean", "bma"):
        for name in ("accuracy", "nll", "ece", "mce", "brier",
                     "misclassification_auroc", "ood_auroc",
                     "ood_fpr_at_95_tpr"):
            values = hist.history[f"val_{kind}_{name}"]
            assert len(values) == 2 and all(np.isfinite(values))
    header = open(csv).readline()
    assert "val_bma_ece" in header and "val_mean_ood_auroc" in header
    # The callback's last numbers are those of the final model at the mean.
    report = evaluate_uncertainty(
        keras_bayes.Predictive(model, 3, from_logits=True, seed=0),
        xti, yti, x_ood=xto)
    np.testing.assert_allclose(hist.history["val_mean_ece"][-1],
                               report["mean"]["ece"], rtol=1e-5)
    np.testing.assert_allclose(hist.history["val_bma_nll"][-1],
                               report["bma"]["nll"], rtol=1e-5)


def test_callback_does_not_change_training(split_mnist1d):
    xi, yi, xti, yti, _ = split_mnist1d

    def run(callbacks):
        keras.utils.set_random_seed(3)
        model = _mlp()
        model.compile(SOBA(0.1, ess=len(xi), seed=0), LOSS)
        model.fit(xi, yi, epochs=2, batch_size=64, verbose=0,
                  shuffle=False, callbacks=callbacks)
        return model.get_weights()

    with_cb = run([keras_bayes.callbacks.UncertaintyMetrics(
        (xti, yti), num_samples=2, from_logits=True)])
    weights_close(with_cb, run([]), atol=1e-6)


def test_callback_with_a_plain_optimizer_and_mc_dropout(split_mnist1d):
    xi, yi, xti, yti, _ = split_mnist1d
    model = _mlp(dropout=0.3)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    hist = model.fit(xi, yi, epochs=1, verbose=0, callbacks=[
        keras_bayes.callbacks.UncertaintyMetrics(
            (xti, yti), num_samples=3, from_logits=True, method="dropout",
            prefix="v_")])
    assert "v_bma_ece" in hist.history and "v_mean_ece" in hist.history
    hist = model.fit(xi, yi, epochs=1, verbose=0, callbacks=[
        keras_bayes.callbacks.UncertaintyMetrics((xti, yti),
                                                 from_logits=True)])
    assert "val_mean_ece" in hist.history
    assert not any(k.startswith("val_bma") for k in hist.history)


def test_callback_bad_input():
    x = np.zeros((4, 40), "float32")
    with pytest.raises(ValueError, match="differ in length"):
        keras_bayes.callbacks.UncertaintyMetrics((x, np.zeros(3)))
    with pytest.raises(ValueError, match="num_samples"):
        keras_bayes.callbacks.UncertaintyMetrics((x, np.zeros(4)),
                                                 num_samples=0)
    with pytest.raises(ValueError, match="frequency"):
        keras_bayes.callbacks.UncertaintyMetrics((x, np.zeros(4)),
                                                 frequency=0)
    with pytest.raises(ValueError, match="ood_data"):
        keras_bayes.callbacks.UncertaintyMetrics((x, np.zeros(4)),
                                                 ood_data=x[:0])


def test_predictive_restores_weights_after_an_exception(split_mnist1d):
    model = _trained(split_mnist1d, epochs=1)
    before = model.get_weights()
    predictive = keras_bayes.Predictive(model, 3, from_logits=True)
    with pytest.raises(Exception):
        predictive.predict(np.zeros((5, 7), "float32"))  # wrong input size
    weights_close(model.get_weights(), before, atol=0)


def test_predictive_mc_dropout_averages_stochastic_passes(split_mnist1d):
    xi, yi, xti, _, _ = split_mnist1d
    model = _trained(split_mnist1d, optimizer=keras.optimizers.Adam(),
                     dropout=0.5, epochs=1)
    before = [v.numpy() for v in model.variables]
    pred = keras_bayes.Predictive(model, 4, from_logits=True,
                                  method="dropout", batch_size=50)
    samples = pred.predict_log_samples(xti)
    assert samples.shape == (4, len(xti), 6)
    assert not np.allclose(samples[0], samples[1])
    weights_close([v.numpy() for v in model.variables], before, atol=0)
    with pytest.raises(ValueError, match="method='dropout'"):
        keras_bayes.Predictive(model, 4)
    with pytest.raises(ValueError, match="method"):
        keras_bayes.Predictive(model, 4, method="ensemble")


def test_averaging_over_samples_matches_a_manual_loop(split_mnist1d):
    xi, yi, xti, _, _ = split_mnist1d
    model = _trained(split_mnist1d)
    pred = keras_bayes.Predictive(model, 3, from_logits=True, seed=4)
    log_samples = pred.predict_log_samples(xti)
    # Rebuild the same samples by hand and run the model on each.
    rng = np.random.default_rng(4)
    opt = model.optimizer
    means, stds = opt.posterior_mean(), opt.posterior_std()
    mean_weights = model.get_weights()
    for s in range(3):
        model.set_weights([
            (m + sd * rng.standard_normal(m.shape)).astype(m.dtype)
            for m, sd in zip(means, stds)])
        logits = np.asarray(model.predict(xti, verbose=0), np.float64)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        np.testing.assert_allclose(log_samples[s], logp, atol=1e-4)
    model.set_weights(mean_weights)
    averaged = pred.predict(xti)
    np.testing.assert_allclose(averaged, np.exp(log_samples).mean(0),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.backend_independent
def test_class_split_and_shifts():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    (xi, yi), xo = datasets.class_split(x, y, [3, 1])
    assert yi.tolist() == [1, 0, 1, 0] and len(xo) == 6
    np.testing.assert_array_equal(xi[0], x[1])
    with pytest.raises(ValueError, match="nothing is left"):
        datasets.class_split(x, y, range(5))
    with pytest.raises(ValueError, match="do not occur"):
        datasets.class_split(x, y, [7])
    for kind in datasets.SHIFTS:
        shifted = datasets.synthetic_shift(x, kind, severity=1.0)
        assert shifted.shape == x.shape and not np.array_equal(shifted, x)
    with pytest.raises(ValueError, match="kind"):
        datasets.synthetic_shift(x, "rotate")


TFDS_SCRIPT = """
import tensorflow_datasets as tfds
from keras_bayes import datasets
with tfds.testing.mock_data(num_examples=12):
    (x, y), (xt, yt) = datasets.load_tfds("svhn_cropped")
assert x.shape == (12, 32, 32, 3) and len(xt) == 12, (x.shape, xt.shape)
assert y.dtype.name == "int64" and y.min() >= 0 and y.max() < 10
print("ok")
"""


@pytest.mark.slow
@pytest.mark.backend_independent
def test_tfds_loading_path_with_mock_data():
    """The users' SVHN path, on TFDS mock data (in a subprocess: it imports
    TensorFlow, which need not share a process with the other backends)."""
    import subprocess
    import sys

    pytest.importorskip("tensorflow_datasets")
    result = subprocess.run([sys.executable, "-c", TFDS_SCRIPT],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, (
        result.stderr[-3000:])


def test_plots_are_written(split_mnist1d, tmp_path):
    pytest.importorskip("matplotlib")
    from keras_bayes import plots

    xi, yi, xti, yti, _ = split_mnist1d
    model = _trained(split_mnist1d)
    pred = keras_bayes.Predictive(model, 2, from_logits=True)
    fig = plots.reliability_diagram(
        yti, {"mean": pred.predict_at_mean(xti), "average": pred.predict(xti)})
    path = str(tmp_path / "reliability.png")
    fig.savefig(path)
    assert os.path.getsize(path) > 1000
    rng = np.random.default_rng(0)
    x2 = rng.normal(size=(50, 2)).astype("float32")
    fig = plots.uncertainty_map(
        {"flat": lambda g: np.full((len(g), 3), 1 / 3)}, x2,
        (x2[:, 0] > 0).astype(int), resolution=20)
    fig.savefig(str(tmp_path / "map.png"))


def test_predictive_and_callback_with_bsam(split_mnist1d):
    """The evaluation tools work with any keras_bayes optimizer."""
    xi, yi, xti, yti, xto = split_mnist1d
    model = keras_bayes.TwoPassModel(_mlp())
    opt = keras_bayes.optimizers.BSAM(0.05, ess=len(xi), rho=0.01, seed=0)
    model.compile(opt, LOSS)
    hist = model.fit(xi, yi, epochs=1, batch_size=64, verbose=0, callbacks=[
        keras_bayes.callbacks.UncertaintyMetrics(
            (xti, yti), ood_data=xto, num_samples=2, from_logits=True)])
    assert np.isfinite(hist.history["val_bma_ood_auroc"][0])
    weights_close(model.get_weights(), opt.posterior_mean(), atol=0)
    samples = keras_bayes.Predictive(model, 3, from_logits=True,
                                     seed=0).predict_log_samples(xti)
    assert samples.shape == (3, len(xti), 6)
    assert not np.allclose(samples[0], samples[1])
    weights_close(model.get_weights(), opt.posterior_mean(), atol=0)
