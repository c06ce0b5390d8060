"""BatchNormalization in a per-example pass: record the batch statistics,
then hold them fixed.

In training mode a BatchNormalization layer normalises with the mean and
variance of its batch, so one example's loss depends on the others. The
per-example pass (`keras_bayes.training.per_example`) follows the VOGN
paper: the statistics μ_B, σ²_B are computed once, by the forward pass on
the whole batch, and held constant while example i is normalised as
(a_i − μ_B)/sqrt(σ²_B + ε).

Both contexts below shadow `BatchNormalization._moments` on the layer
*instance* for their duration (`keras_bayes._keras_compat`), never on the
class; nothing is patched outside them.
"""

import contextlib

import keras
from keras import ops

from keras_bayes import _keras_compat

BATCH_NORM_CHOICES = ("frozen", "error")


def batch_coupled_layers(model):
    """The BatchNormalization layers whose training output mixes examples.

    A trainable BatchNormalization layer normalises with its batch's
    statistics in training mode. One with `trainable=False` uses its moving
    statistics even in training mode, so it acts on each example alone.
    """
    layers = [model] + _keras_compat.flatten_layers(model, include_self=False)
    return [layer for layer in layers
            if isinstance(layer, keras.layers.BatchNormalization)
            and layer.trainable]


def check_batch_norm(layers, batch_norm):
    """Raise a clear error for BN layers the per-example pass cannot
    handle."""
    if not layers:
        return
    names = [layer.name for layer in layers]
    if batch_norm == "error":
        raise ValueError(
            "Per-example gradients are not defined through "
            f"BatchNormalization layers {names}: in training mode they "
            "normalise over the whole batch, so one example's gradient "
            "depends on the others. Use the VOGN paper's treatment "
            "(`batch_norm='frozen'` here, `VOGNModel(batch_norm="
            "'deterministic')`, the defaults), or keras_bayes.layers.FRN, "
            "GroupNormalization or LayerNormalization.")
    renorm = [layer.name for layer in layers if layer.renorm]
    if renorm:
        raise ValueError(
            "Per-example gradients with batch statistics held fixed are not "
            f"supported for BatchNormalization with renorm=True {renorm}: "
            "its corrections r, d depend on the moving statistics, which "
            "the per-example pass does not reproduce. Use renorm=False.")


@contextlib.contextmanager
def _moments_replaced(layers, make_moments):
    """Each layer's `_moments` is `make_moments(index, original)` inside;
    the previous state is restored on exit."""
    tokens = []
    try:
        for index, layer in enumerate(layers):
            original = _keras_compat.batch_norm_moments(layer)
            tokens.append((layer, _keras_compat.shadow_batch_norm_moments(
                layer, make_moments(index, original))))
        yield
    finally:
        for layer, token in reversed(tokens):
            _keras_compat.restore_batch_norm_moments(layer, token)


@contextlib.contextmanager
def recorded_batch_statistics(layers):
    """Record the (mean, variance) each BN layer computes from its batch.

    Yields a list with, per layer, the list of (mean, variance) pairs of its
    calls in order (one pair unless the layer is shared).
    """
    statistics = [[] for _ in layers]

    def make_moments(index, original):
        def moments(inputs, mask):
            mean, variance = original(inputs, mask)
            statistics[index].append((mean, variance))
            return mean, variance
        return moments

    with _moments_replaced(layers, make_moments):
        yield statistics


@contextlib.contextmanager
def frozen_batch_statistics(layers, statistics):
    """Inside, each BN layer normalises with the recorded batch statistics.

    The statistics are constants (`stop_gradient`): the per-example pass
    treats them as fixed.
    """
    def make_moments(index, original):
        calls = statistics[index]
        count = [0]

        def moments(inputs, mask):
            if not calls:
                return original(inputs, mask)
            mean, variance = calls[count[0] % len(calls)]
            count[0] += 1
            return ops.stop_gradient(mean), ops.stop_gradient(variance)
        return moments

    with _moments_replaced(layers, make_moments):
        yield


def batch_statistics(model, x, trainable, non_trainable, layers):
    """The statistics of `layers` in a training-mode forward pass on `x`
    (call it where no gradient is recorded)."""
    with recorded_batch_statistics(layers) as statistics:
        model.stateless_call(trainable, non_trainable, x,
                             **_keras_compat.training_call_kwargs(model))
    return statistics
