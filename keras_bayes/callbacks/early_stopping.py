"""Early stopping that restores the posterior of the best epoch."""

import keras

from keras_bayes.optimizers.base import unwrap_optimizer


class EarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that restores the mean, not a sample.

    With a keras_bayes optimizer the model's variables hold a posterior
    *sample* during `fit`. Keras' own `EarlyStopping(restore_best_weights=
    True)` copies whatever the variables hold at the best epoch and writes it
    back after `fit` has put the posterior mean in, so the model ends with a
    random sample (even when training was not stopped early). This subclass
    takes the same arguments and stores, at the best epoch, the posterior
    mean (as the model weights) and the optimizer's posterior state; at the
    end of `fit` the model holds the best epoch's mean and the optimizer its
    posterior, so `posterior_std()`, `Predictive` and a later `fit` start
    from the best epoch. The step counter and the noise seed are not rewound.

    With another optimizer it behaves exactly as Keras' `EarlyStopping`.

    To monitor the validation loss *at the mean*, add
    `keras_bayes.callbacks.SwapMeanWeights()` as well; without it the
    validation metrics are those of the current sample.

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
    model.fit(x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=3,
              verbose=0, callbacks=[
                  keras_bayes.callbacks.SwapMeanWeights(),
                  keras_bayes.callbacks.EarlyStopping(
                      patience=1, restore_best_weights=True)])
    # The model holds the best epoch's posterior mean.
    ```

    Args: those of `keras.callbacks.EarlyStopping`.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._best_posterior = None

    def _optimizer(self):
        optimizer = unwrap_optimizer(getattr(self.model, "optimizer", None))
        return optimizer if optimizer is not None and optimizer.built else None

    def on_epoch_end(self, epoch, logs=None):
        previous = self.best_weights
        super().on_epoch_end(epoch, logs)
        optimizer = self._optimizer()
        if self.best_weights is previous or optimizer is None:
            return
        means = {id(variable): mean for variable, mean in zip(
            optimizer.posterior_variables(), optimizer.posterior_mean())}
        self.best_weights = [
            means.get(id(variable), value)
            for variable, value in zip(self.model.weights, self.best_weights)
        ]
        self._best_posterior = optimizer.posterior_state()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        optimizer = self._optimizer()
        if (not self.restore_best_weights or optimizer is None
                or self._best_posterior is None):
            return
        optimizer.set_posterior_state(self._best_posterior)
