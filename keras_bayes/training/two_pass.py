"""`TwoPassModel`: a training step with several gradients per minibatch.

A Keras optimizer receives gradients only, never the data, so it cannot
take a second gradient on the same minibatch, a gradient at a second
posterior sample, or one per sub-batch. `TwoPassModel` wraps any Keras
model and overrides `train_step` for the optimizers that need this: every
`keras_bayes.training.contract.MultiPassOptimizer` (SAM and bSAM with their
second pass at a perturbed point, bSAM's `batch_split` sub-batches, SOBA's
`mc_samples` > 1). The step follows the optimizer's `step_plan()` as the
`contract` module docstring describes:

1. pass 1: the ordinary training pass at the model's variables. Loss and
   metrics are logged from this pass, as Keras does;
2. further first passes at `optimizer.draw_training_point(variables)`,
   and, for a two-pass optimizer, second passes at
   `optimizer.second_pass_point(g1, variables)`, all on the same minibatch
   (or sub-batch) through `stateless_call` and `stateless_compute_loss`:
   no variable is written, so nothing has to be restored. Metric updates
   of these passes are discarded;
3. `optimizer.apply(optimizer.combine_passes(records, context))`.

The per-backend step (`keras_bayes/training/{jax,tensorflow,torch}.py`) is
chosen once at import. With an optimizer that needs one gradient per step
(`Adam`, `SOBA` with `mc_samples=1`, ...) the wrapper runs Keras' own
`train_step`.
"""

import keras

from keras_bayes._validation import check_choice
from keras_bayes.training import shared
from keras_bayes.training._backend import steps
from keras_bayes.training.wrapper import WrapperModel

BN_UPDATE_CHOICES = ("first", "both")


class _PrepareTraining(keras.callbacks.Callback):
    """Calls the optimizer's `prepare_training` as training begins."""

    def on_train_begin(self, logs=None):
        shared.prepare_training(self.model)


@keras.saving.register_keras_serializable(package="keras_bayes")
class TwoPassModel(WrapperModel):
    """A model whose training step takes several gradients on each batch.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model = keras_bayes.training.TwoPassModel(inner)
    model.compile(optimizer=keras_bayes.optimizers.BSAM(0.1, ess=len(x)),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    model.inner.save("deploy.keras")   # or save the wrapper itself
    ```

    `call` delegates to the wrapped model; saving the wrapper saves the
    wrapped model, the optimizer and its state.

    Args:
        inner: the `keras.Model` (or layer) to train.
        bn_update: `"first"` (default) or `"both"`: which pass may update
            non-trainable state such as BatchNorm moving statistics.
            `"first"`: pass 2 starts from the non-trainable state of before
            pass 1 and its updates are discarded, so the moving statistics
            are updated once per step and random layers (Dropout) draw the
            same masks in both passes. `"both"`: pass 2 starts from the state
            pass 1 left and its updates are kept (the moving statistics are
            updated at both points, as in the official bSAM code; Dropout
            draws fresh masks in pass 2).
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    wrapper_arguments = ("bn_update",)

    def __init__(self, inner, bn_update="first", **kwargs):
        check_choice("bn_update", bn_update, BN_UPDATE_CHOICES)
        super().__init__(inner, **kwargs)
        self.bn_update = bn_update

    def fit(self, *args, **kwargs):
        # A bSAM run starts from a sample, not the mean. At `on_train_begin`
        # of the first callback: after Keras built the optimizer (in the
        # distribution scope) and before a `BackupAndRestore` restores a
        # backup over it.
        position = 5  # `callbacks` among fit's positional arguments
        if len(args) > position:
            args = list(args)
            args[position] = [_PrepareTraining()] + list(args[position] or [])
        else:
            kwargs["callbacks"] = [_PrepareTraining()] + list(
                kwargs.get("callbacks") or [])
        return super().fit(*args, **kwargs)

    def train_step(self, *args):
        plan = shared.multi_pass_plan(self.optimizer)
        if plan is None:
            return super().train_step(*args)
        return steps.multi_pass_step(self, plan, *args)

    def multi_pass_step(self, *args, gradient_reducer=None):
        """The multi-pass training step, with an optional gradient reducer.

        `train_step` without the fallback to Keras' step, for a training
        loop of your own: `(data)` on TensorFlow and torch, `(state, data)`
        on JAX, returning what `train_step` returns.

        Args:
            *args: the arguments of `train_step`.
            gradient_reducer: None, or (torch only) a function that averages
                a list of gradients over the processes of a data-parallel
                run; every gradient of the step goes through it before the
                optimizer sees it (`keras_bayes.distributed.train_step`
                passes one).

        Raises:
            ValueError: the optimizer is not a multi-pass optimizer whose
                plan needs more than one pass.
        """
        plan = shared.multi_pass_plan(self.optimizer)
        if plan is None:
            raise ValueError(
                "`multi_pass_step` needs a compiled multi-pass optimizer "
                "(SAM, BSAM, SOBA with mc_samples > 1). Received: "
                f"{type(self.optimizer).__name__}")
        return steps.multi_pass_step(self, plan, *args,
                                     gradient_reducer=gradient_reducer)


__all__ = ["BN_UPDATE_CHOICES", "TwoPassModel"]
