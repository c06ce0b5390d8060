"""Evaluate at the posterior mean during `fit`."""

import keras

from keras_bayes.optimizers.base import require_posterior_optimizer


@keras.saving.register_keras_serializable(package="keras_bayes")
class SwapMeanWeights(keras.callbacks.Callback):
    """Puts the posterior mean into the model for evaluation and prediction.

    During `fit` with a keras_bayes optimizer the model's variables hold a
    posterior sample. This callback writes the posterior mean into them when
    evaluation or prediction begins (so `val_loss` and the validation metrics
    are those of the mean) and puts the sample back when it ends, so
    training continues exactly as without the callback.

    With `swap_on_epoch=True` the mean is also in the model from the end of
    each epoch to the start of the next, so callbacks placed *after* this one
    (e.g. a `ModelCheckpoint` meant for deployment) see the mean. A
    checkpoint written then holds the mean, not the sample: resuming from it
    is not bit-exact. For exact resumption use `BackupAndRestore` or a
    `ModelCheckpoint` placed *before* this callback.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]),
                        epochs=2, verbose=0,
                        callbacks=[keras_bayes.callbacks.SwapMeanWeights()])
    history.history["val_loss"]   # at the posterior mean
    ```

    Args:
        swap_on_epoch: bool, also hold the mean between epochs.
            Defaults to False.
    """

    def __init__(self, swap_on_epoch=False):
        super().__init__()
        self.swap_on_epoch = bool(swap_on_epoch)
        self._saved_sample = None

    def _optimizer(self):
        # `self.model` (not a stored reference) syncs the JAX state.
        return require_posterior_optimizer(self.model.optimizer,
                                           "SwapMeanWeights")

    def _put_mean(self):
        optimizer = self._optimizer()
        if self._saved_sample is None and optimizer.built:
            self._saved_sample = optimizer.model_weights()
            optimizer.set_model_weights(optimizer.posterior_mean())

    def _put_sample_back(self):
        if self._saved_sample is not None:
            self._optimizer().set_model_weights(self._saved_sample)
            self._saved_sample = None

    def on_test_begin(self, logs=None):
        self._put_mean()

    def on_test_end(self, logs=None):
        if not self.swap_on_epoch:
            self._put_sample_back()

    def on_predict_begin(self, logs=None):
        self._put_mean()

    def on_predict_end(self, logs=None):
        if not self.swap_on_epoch:
            self._put_sample_back()

    def on_epoch_begin(self, epoch, logs=None):
        self._put_sample_back()

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch:
            self._put_mean()

    def on_train_end(self, logs=None):
        # `finalize_variable_values` has already written the mean; what we
        # saved is a stale sample that must not come back.
        self._saved_sample = None

    def get_config(self):
        return {"swap_on_epoch": self.swap_on_epoch}
