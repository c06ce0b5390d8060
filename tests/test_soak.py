"""Soak test: many steps, recurring NaN batches and a killed run resumed
from a `ModelCheckpoint` `.keras` file end with the posterior of an
uninterrupted run that skipped the same faults."""

import keras
import numpy as np
import pytest

from keras_bayes import optimizers as kbo
from keras_bayes.training import TwoPassModel
from tests.helpers import small_classifier
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 50
EPOCHS = 4
POISONED_BATCHES = (3, 17)          # of each epoch: 8 faults in 96 steps
SAVE_EVERY = 10
KILLED_AFTER = 55                   # steps; the last checkpoint is step 50


def _data(digits):
    x, y, _, _ = digits
    x = x.copy()
    for batch in POISONED_BATCHES:
        x[batch * BATCH + 7, 11] = np.nan
    return x, y


def _model(name):
    model = small_classifier()
    if name == "bsam":
        model = TwoPassModel(model)
        optimizer = kbo.BSAM(0.2, ess=1200, seed=4)
    else:
        optimizer = kbo.SOBA(0.2, ess=1200, seed=4)
    model.compile(optimizer, LOSS)
    return model


class _Kill(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == KILLED_AFTER:
            raise RuntimeError("killed")


def _fit(model, x, y, epochs, callbacks=()):
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
              verbose=0, callbacks=list(callbacks))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["soba", "bsam"])
def test_faults_and_a_kill_leave_the_posterior_of_a_clean_run(name, digits,
                                                              tmp_path):
    x, y = _data(digits)
    steps_per_epoch = len(x) // BATCH
    reference = _fit(_model(name), x, y, EPOCHS)
    optimizer = reference.optimizer
    assert optimizer.nonfinite_steps == EPOCHS * len(POISONED_BATCHES)
    assert all(np.all(np.isfinite(s)) for s in optimizer.posterior_std())

    path = str(tmp_path / "checkpoint.keras")
    keras.utils.set_random_seed(1234)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(_model(name), x, y, EPOCHS, callbacks=[
            keras.callbacks.ModelCheckpoint(path, save_freq=SAVE_EVERY),
            _Kill()])
    resumed = keras.models.load_model(path)
    saved_steps = int(keras.ops.convert_to_numpy(
        resumed.optimizer.iterations))
    assert saved_steps == (KILLED_AFTER // SAVE_EVERY) * SAVE_EVERY
    # The rest of the interrupted epoch and the remaining epochs, in one
    # `fit`: a finished `fit` leaves the mean in the model, so a second one
    # would take its first gradient there instead of at the sample.
    epoch, batch = divmod(saved_steps, steps_per_epoch)
    repeats = EPOCHS - epoch - 1
    _fit(resumed, np.concatenate([x[batch * BATCH:]] + [x] * repeats),
         np.concatenate([y[batch * BATCH:]] + [y] * repeats), 1)

    assert resumed.optimizer.nonfinite_steps == optimizer.nonfinite_steps
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) \
        == EPOCHS * steps_per_epoch
    weights_close(resumed.get_weights(), reference.get_weights(),
                  atol=2e-5, rtol=1e-4)
    weights_close(resumed.optimizer.posterior_std(),
                  optimizer.posterior_std(), atol=1e-6, rtol=1e-4)
