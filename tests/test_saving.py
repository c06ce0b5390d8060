"""Configs, `.keras` files and resuming an interrupted run."""

import math
import os

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes.optimizers import SOBA
from tests.helpers import small_classifier
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ALL_ARGS = dict(
    learning_rate=0.3, ess=123.0, hess_init=0.2, beta1=0.8, beta2=0.999,
    weight_decay=3e-4, mc_samples=1, hess_approx="gradsq", clip_radius=0.01,
    rescale_lr=False, debias=False, seed=99, fused_update=False,
    clipnorm=2.0, gradient_accumulation_steps=3, name="my_soba",
)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_config_round_trips_every_argument():
    opt = SOBA(**ALL_ARGS)
    config = opt.get_config()
    for key, value in ALL_ARGS.items():
        assert config[key] == pytest.approx(value), key
    revived = SOBA.from_config(config)
    assert revived.get_config() == config
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is SOBA and again.get_config() == config


def test_config_with_schedule_and_infinite_clip():
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 100)
    opt = SOBA(schedule, ess=10.0)
    assert math.isinf(opt.get_config()["clip_radius"])
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(revived.learning_rate if False else
                      revived._learning_rate,
                      keras.optimizers.schedules.CosineDecay)
    assert revived.get_config() == opt.get_config()


def _model_and_fit(x, y, epochs, callbacks=(), initial_epoch=0, model=None):
    if model is None:
        keras.utils.set_random_seed(0)
        model = small_classifier()
        model.compile(SOBA(0.2, ess=len(x), hess_init=0.5, beta2=0.99,
                           seed=42), LOSS)
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0,
              callbacks=list(callbacks), initial_epoch=initial_epoch)
    return model


_UNINTERRUPTED = {}


def _uninterrupted(x, y, epochs):
    """The uninterrupted reference run, trained once per epoch count:
    `_model_and_fit` seeds the model and the optimizer, so every test would
    train this same run. Callers only read it (weights, optimizer state)
    or save it."""
    if epochs not in _UNINTERRUPTED:
        _UNINTERRUPTED[epochs] = _model_and_fit(x, y, epochs=epochs)
    return _UNINTERRUPTED[epochs]


def _optimizer_values(model):
    return [_numpy(v) for v in model.optimizer.variables]


def test_save_and_load_restores_weights_posterior_seed_and_step(digits,
                                                                 tmp_path):
    x, y, xv, _ = digits
    model = _model_and_fit(x, y, epochs=2)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is SOBA
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    weights_close(loaded.get_weights(), model.get_weights(), atol=0)
    weights_close(_optimizer_values(loaded), _optimizer_values(model),
                  atol=0)
    weights_close(loaded.optimizer.posterior_std(),
                  model.optimizer.posterior_std(), atol=0)
    np.testing.assert_allclose(loaded.predict(xv, verbose=0),
                               model.predict(xv, verbose=0), rtol=1e-6)
    # Both continue identically: same posterior, same noise stream.
    _model_and_fit(x, y, epochs=1, model=model)
    _model_and_fit(x, y, epochs=1, model=loaded)
    weights_close(loaded.get_weights(), model.get_weights(), atol=1e-6)
    weights_close(_optimizer_values(loaded), _optimizer_values(model),
                  atol=1e-5)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch=None, batch=None):
        super().__init__()
        self.epoch, self.batch = epoch, batch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_exactly(digits, tmp_path):
    """Keras' BackupAndRestore resumes at epoch granularity (an epoch cut in
    the middle is replayed from its start, whatever the optimizer), so the
    interruption is at an epoch boundary."""
    x, y, _, _ = digits
    reference = _uninterrupted(x, y, epochs=3)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        _model_and_fit(x, y, epochs=3, callbacks=[
            keras.callbacks.BackupAndRestore(backup_dir),
            _Interrupt(epoch=1)])
    resumed = _model_and_fit(
        x, y, epochs=3,
        callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])
    assert int(_numpy(resumed.optimizer.iterations)) == int(
        _numpy(reference.optimizer.iterations))
    weights_close(resumed.get_weights(), reference.get_weights(), atol=1e-6)
    weights_close(resumed.optimizer.posterior_std(),
                  reference.optimizer.posterior_std(), atol=1e-6)


def test_mid_epoch_checkpoint_holds_the_exact_training_state(digits,
                                                             tmp_path):
    """A `.keras` file written mid-epoch holds the sample, the posterior, the
    seed and the step: continuing from it on the remaining batches gives
    the uninterrupted run's result."""
    x, y, _, _ = digits
    reference = _uninterrupted(x, y, epochs=1)
    path = str(tmp_path / "mid.keras")

    class SaveAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                self.model.save(path)
                raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _model_and_fit(x, y, epochs=1, callbacks=[SaveAt()])
    loaded = keras.models.load_model(path)
    assert int(_numpy(loaded.optimizer.iterations)) == 5
    resumed = _model_and_fit(x[5 * 64:], y[5 * 64:], epochs=1, model=loaded)
    weights_close(resumed.get_weights(), reference.get_weights(), atol=1e-6)


def test_model_checkpoint_file_resumes_exactly(digits, tmp_path):
    x, y, _, _ = digits
    reference = _uninterrupted(x, y, epochs=3)
    path = str(tmp_path / "ckpt.keras")
    with pytest.raises(RuntimeError, match="interrupted"):
        _model_and_fit(x, y, epochs=3, callbacks=[
            keras.callbacks.ModelCheckpoint(path), _Interrupt(epoch=1)])
    loaded = keras.models.load_model(path)
    resumed = _model_and_fit(x, y, epochs=3, initial_epoch=2, model=loaded)
    weights_close(resumed.get_weights(), reference.get_weights(), atol=1e-6)


def test_loaded_model_evaluates_at_the_mean(digits, tmp_path):
    x, y, xv, yv = digits
    model = _uninterrupted(x, y, epochs=1)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    weights_close(loaded.get_weights(), loaded.optimizer.posterior_mean(),
                  atol=0)
    pred = keras_bayes.Predictive(loaded, num_samples=2, from_logits=True)
    assert pred.predict(xv).shape == (len(xv), 10)
