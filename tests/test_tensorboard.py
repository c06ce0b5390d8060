"""PosteriorTensorBoard: the event files read back against posterior_std()."""

import glob
import os
import sys

import keras
import numpy as np
import pytest

from keras_bayes.callbacks import PosteriorTensorBoard
from keras_bayes.callbacks.posterior_tensorboard import histogram_buckets
from keras_bayes.optimizers import BSAM
from keras_bayes.optimizers import SOBA
from keras_bayes.optimizers import VOGN
from keras_bayes.optimizers import LieAffine
from keras_bayes.optimizers.base import unwrap_optimizer
from keras_bayes.training import TwoPassModel
from keras_bayes.training import VOGNModel

EPOCHS = 3
N = 32


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _mlp():
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(4, activation="tanh", name="hidden"),
        keras.layers.Dense(2, name="logits"),
    ])


def _soba():
    model = _mlp()
    return model, SOBA(0.05, ess=N, beta2=0.5, seed=1)


def _bsam_loss_scaled():
    # Both wrappers at once: the TwoPassModel step and a LossScaleOptimizer.
    return TwoPassModel(_mlp()), keras.optimizers.LossScaleOptimizer(
        BSAM(0.05, ess=N, seed=1), initial_scale=16.0)


def _vogn():
    return VOGNModel(_mlp()), VOGN(0.05, ess=N, beta2=0.5, seed=1)


def _lie_affine():
    return _mlp(), LieAffine(0.05, ess=N, seed=1)


class _RecordStd(keras.callbacks.Callback):
    """posterior_std() and the variable paths at every epoch end."""

    def __init__(self):
        super().__init__()
        self.stds = {}

    def on_epoch_end(self, epoch, logs=None):
        optimizer = unwrap_optimizer(self.model.optimizer)
        self.paths = [v.path for v in optimizer.posterior_variables()]
        self.stds[epoch] = optimizer.posterior_std()


def _read_events(run_dir):
    """{(step, tag): (plugin name, array)} of every event file in run_dir."""
    import tensorflow as tf

    events = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                events[(event.step, value.tag)] = (
                    value.metadata.plugin_data.plugin_name,
                    tf.make_ndarray(value.tensor))
    return events


def _fit(tmp_path, setup, every_n_epochs, histograms):
    model, optimizer = setup()
    model.compile(optimizer=optimizer, loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    record = _RecordStd()
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=EPOCHS, verbose=0, callbacks=[
        record, PosteriorTensorBoard(tmp_path, every_n_epochs=every_n_epochs,
                                     histograms=histograms)])
    return record, _read_events(os.path.join(tmp_path, "posterior"))


@pytest.mark.parametrize("setup, every_n_epochs, histograms", [
    (_soba, 2, True),
    (_bsam_loss_scaled, 2, True),
    (_vogn, 1, True),
    (_lie_affine, 1, False),
], ids=["soba", "bsam_two_pass_loss_scaled", "vogn", "lie_affine"])
def test_events_match_posterior_std(tmp_path, setup, every_n_epochs,
                                    histograms):
    record, events = _fit(str(tmp_path), setup, every_n_epochs, histograms)
    written = list(range(0, EPOCHS, every_n_epochs))
    assert sorted({step for step, _ in events}) == written
    layers = ["hidden", "logits"]
    for epoch in written:
        stds = record.stds[epoch]
        by_layer = {layer: [s for p, s in zip(record.paths, stds)
                            if p.split("/")[-2] == layer] for layer in layers}
        scalars = {tag: array for (step, tag), (plugin, array)
                   in events.items()
                   if step == epoch and plugin == "scalars"}
        assert len(scalars) == len(layers)
        for layer in layers:
            (tag,) = [t for t in scalars if t.endswith(f"/{layer}")]
            assert tag.startswith("posterior_std_median/")
            expected = np.median(np.concatenate(
                [s.ravel() for s in by_layer[layer]]))
            np.testing.assert_allclose(scalars[tag], expected, rtol=1e-6)
        histogram_tags = sorted(
            tag for (step, tag), (plugin, _) in events.items()
            if step == epoch and plugin == "histograms")
        if not histograms:
            assert histogram_tags == []
            continue
        assert histogram_tags == sorted(
            f"posterior_std/{p}" for p in record.paths)
        for path, std in zip(record.paths, stds):
            buckets = events[(epoch, f"posterior_std/{path}")][1]
            assert buckets.shape[1] == 3
            assert buckets[:, 2].sum() == std.size
            assert buckets[0, 0] == pytest.approx(float(std.min()), rel=1e-12)
            assert buckets[-1, 1] == pytest.approx(float(std.max()),
                                                   rel=1e-12)
    # The std moves during training: the test compares changing values.
    first, last = record.stds[0], record.stds[written[-1]]
    if len(written) > 1:
        assert any(not np.array_equal(a, b) for a, b in zip(first, last))


@pytest.mark.backend_independent
def test_histogram_buckets():
    values = np.array([0.5, 1.0, 1.0, 2.0, 3.5])
    buckets = histogram_buckets(values, bucket_count=3)
    np.testing.assert_allclose(buckets, [[0.5, 1.5, 3], [1.5, 2.5, 1],
                                         [2.5, 3.5, 1]])
    # All equal: one bucket holding them all.
    np.testing.assert_array_equal(histogram_buckets(np.full((2, 3), 0.1)),
                                  [[0.1, 0.1, 6]])


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs, message", [
    ({"every_n_epochs": 0}, "`every_n_epochs` must be an integer >= 1"),
    ({"every_n_epochs": 1.5}, "`every_n_epochs` must be an integer >= 1"),
    ({"every_n_epochs": True}, "`every_n_epochs` must be an integer >= 1"),
    ({"histograms": 1}, "`histograms` must be True or False"),
    ({"log_dir": None}, "`log_dir` must be a non-empty path"),
    ({"log_dir": ""}, "`log_dir` must be a non-empty path"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PosteriorTensorBoard(**kwargs)


@pytest.mark.backend_independent
def test_missing_tensorflow_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="pip install tensorflow"):
        PosteriorTensorBoard("logs")


@pytest.mark.backend_independent
def test_plain_optimizer_fails_before_training(tmp_path):
    model = _mlp()
    model.compile(optimizer="adam", loss="mse")
    callback = PosteriorTensorBoard(str(tmp_path))
    with pytest.raises(ValueError, match="posterior optimizer.*Adam"):
        model.fit(np.zeros((4, 5)), np.zeros((4, 2)), epochs=1, verbose=0,
                  callbacks=[callback])
    assert not os.path.exists(os.path.join(tmp_path, "posterior"))


@pytest.mark.backend_independent
def test_config_round_trip(tmp_path):
    callback = PosteriorTensorBoard(tmp_path, every_n_epochs=3,
                                    histograms=False)
    assert callback.log_dir == str(tmp_path)
    assert callback.run_dir == os.path.join(str(tmp_path), "posterior")
    again = PosteriorTensorBoard(**callback.get_config())
    assert again.get_config() == callback.get_config()


def test_example_writes_beside_keras_tensorboard(tmp_path):
    """examples/posterior_tensorboard.py, one epoch: Keras' `TensorBoard`
    (runs train/, validation/) and `PosteriorTensorBoard` (run posterior/)
    share one log_dir, which is what `tensorboard --logdir` shows."""
    pytest.importorskip("tensorboard")
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples",
                        "posterior_tensorboard.py")
    spec = importlib.util.spec_from_file_location("posterior_tb_example",
                                                  path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    log_dir = str(tmp_path / "logs")
    model = example.main(log_dir=log_dir, epochs=1)
    assert sorted(os.listdir(log_dir)) == ["posterior", "train", "validation"]
    train_tags = {tag for _, tag in _read_events(os.path.join(log_dir,
                                                             "train"))}
    assert "epoch_loss" in train_tags
    events = _read_events(os.path.join(log_dir, "posterior"))
    std = unwrap_optimizer(model.optimizer).posterior_std()
    # SwapMeanWeights and the writer both act at the end of epoch 0; the
    # posterior itself is what the optimizer holds after the last step.
    medians = {tag.split("/", 1)[1]: float(value)
               for (step, tag), (_, value) in events.items()
               if tag.startswith("posterior_std_median/") and step == 0}
    assert set(medians) == {"sequential/hidden_1", "sequential/hidden_2",
                            "sequential/logits"}
    expected = float(np.median(np.concatenate(
        [np.ravel(std[-2]), np.ravel(std[-1])])))
    assert medians["sequential/logits"] == pytest.approx(expected, rel=1e-6)
