"""The count of steps skipped for a NaN/Inf gradient, in the logs."""

import keras

from keras_bayes.optimizers.base import unwrap_optimizer


class NonfiniteSteps(keras.callbacks.Callback):
    """Adds `nonfinite_steps` to the logs of every epoch.

    A keras_bayes optimizer with `nonfinite_gradients="skip"` (the default)
    leaves the posterior unchanged on a step whose gradient holds NaN or
    Inf, counts it in `optimizer.nonfinite_steps`, and warns once at the end
    of `fit` with the number. This callback writes that running count into
    the epoch's `logs` as `"nonfinite_steps"`, so the callbacks after it in
    the list record it: the `History` returned by `fit` (always last),
    `keras.callbacks.CSVLogger`, `keras.callbacks.TensorBoard`. Put it
    before those. With an optimizer that has no such counter it does
    nothing.

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
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[
        keras_bayes.callbacks.NonfiniteSteps(),
        keras.callbacks.CSVLogger("log.csv")])
    print(history.history["nonfinite_steps"])  # [0, 0]: a running count
    ```
    """

    def on_epoch_end(self, epoch, logs=None):
        optimizer = unwrap_optimizer(getattr(self.model, "optimizer", None))
        if logs is None or optimizer is None or not optimizer.built:
            return
        logs["nonfinite_steps"] = optimizer.nonfinite_steps
