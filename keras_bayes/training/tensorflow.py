"""The training steps on the TensorFlow backend.

Gradients come from `tf.GradientTape`; the passes after the first are
stateless (`stateless_call`), so no variable has to be restored. Under a
`tf.distribute` strategy every gradient of a multi-pass step is summed over
the replicas before the optimizer sees it (see `multi_pass_step`).
"""

import contextlib

import keras
import tensorflow as tf

from keras_bayes import _keras_compat
from keras_bayes.training import batch_norm
from keras_bayes.training import shared
from keras_bayes.training.contract import inner_optimizer


def no_gradient_tracking():
    """Nothing to switch off: only a `GradientTape` records."""
    return contextlib.nullcontext()


def _replicas_in_sync():
    """Replicas of the tf.distribute strategy whose replica context we are
    in; 1 outside a strategy or in cross-replica context."""
    if (not tf.distribute.has_strategy()
            or tf.distribute.in_cross_replica_context()):
        return 1
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _all_reduce_sum(grads):
    """Sum a gradient list across replicas (None entries stay None)."""
    grads = list(grads)
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present:
        return grads
    reduced = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    for i, value in zip(present, reduced):
        grads[i] = value
    return grads


def process_group():
    """`keras_bayes.distributed` drives torch.distributed only."""
    raise ValueError(
        "keras_bayes.distributed drives torch.distributed and needs the "
        "torch backend. On TensorFlow use "
        "`tf.distribute.MirroredStrategy` with `fit` (docs/distributed.md). "
        "Backend: 'tensorflow'")


# ----------------------------------------------------------------------
# Multi-pass step (`TwoPassModel`).

def multi_pass_step(model, plan, data, gradient_reducer=None):
    """`TwoPassModel.train_step` for an optimizer with a multi-pass `plan`.
    """
    if gradient_reducer is not None:
        raise ValueError(
            "`gradient_reducer` is for torch.distributed steps "
            "(`keras_bayes.distributed`); on TensorFlow use a "
            "`tf.distribute` strategy, under which the step sums every "
            "gradient over the replicas itself.")
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    sub_batches = shared.split_batch(x, y, sample_weight, plan.sub_batches)
    x0, y0, w0 = sub_batches[0]
    non_trainable_before = [
        tf.identity(v.value) for v in model.non_trainable_variables
    ]
    with tf.GradientTape() as tape:
        y_pred = model(x0, **_keras_compat.training_call_kwargs(model))
        loss = _keras_compat.compute_compiled_loss(
            model, x0, y0, y_pred, w0, training=True)
        _keras_compat.loss_tracker(model).update_state(
            _keras_compat.unscale_loss_for_distribution(loss),
            sample_weight=shared.batch_size(x0),
        )
        loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    metrics = [tf.identity(v.value) for v in model.metrics_variables]

    def gradient_at(point, batch):
        if point is None:
            point = [tf.identity(v.value) for v in variables]
        point = [tf.convert_to_tensor(p) for p in point]
        if model.bn_update == "both":
            start = [tf.identity(v.value)
                     for v in model.non_trainable_variables]
        else:
            start = non_trainable_before
        with tf.GradientTape() as tape2:
            tape2.watch(point)
            loss2, non_trainable = shared.loss_at_point(
                model, point, start, metrics, *batch)
        if model.bn_update == "both":
            for variable, value in zip(model.non_trainable_variables,
                                       non_trainable):
                variable.assign(value)
        return tape2.gradient(loss2, point)

    replicas = _replicas_in_sync()
    if replicas > 1:
        # Under a tf.distribute strategy every gradient of this step is
        # the replica's share of the global-batch gradient (the loss is
        # divided by the number of replicas). Sum them across replicas
        # before they reach the optimizer, so that the perturbation,
        # the fresh samples and the slot statistics are those of the
        # global batch, identical on every replica (the optimizer
        # writes its slots in replica context, one copy per replica).
        grads = _all_reduce_sum(grads)
        local_gradient_at = gradient_at

        def gradient_at(point, batch):
            return _all_reduce_sum(local_gradient_at(point, batch))

    with inner_optimizer(model.optimizer).two_pass_step():
        grads = shared.collect_gradients(model.optimizer, plan, grads,
                                         gradient_at, sub_batches, variables)
        if replicas > 1:
            # `apply_gradients` sums the replicas' gradients again.
            grads = [None if g is None else g / float(replicas)
                     for g in grads]
        model.optimizer.apply_gradients(zip(grads, variables))
    return model.compute_metrics(x0, y0, y_pred, sample_weight=w0)


# ----------------------------------------------------------------------
# Per-example gradients and the per-example step (`VOGNModel`).

def per_example_gradients(model, loss, trainable, non_trainable, x, y):
    """(losses, gradients) of each example, stacked on a leading axis:
    `tf.vectorized_map` (no fallback to a `while_loop`) over a
    `GradientTape` around `stateless_call` on one example."""
    kwargs = _keras_compat.training_call_kwargs(model)
    trainable = [tf.convert_to_tensor(v) for v in trainable]

    def single(args):
        xi, yi = args
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            y_pred, _ = model.stateless_call(trainable, non_trainable,
                                             xi[None], **kwargs)
            value = loss(yi[None], y_pred)
        grads = tape.gradient(value, trainable,
                              unconnected_gradients="zero")
        return value, grads

    try:
        losses, grads = tf.vectorized_map(single, (x, y),
                                          fallback_to_while_loop=False)
    except Exception as error:  # noqa: BLE001 - re-raised with the cause
        raise shared.vectorization_error("tensorflow", error) from error
    return losses, grads


def _batch_gradient(model, x, y, loss, layers):
    """(y_pred, ∇ mean_i ℓ_i with BN's statistics differentiated, the BN
    statistics) from one forward/backward pass on the batch."""
    with tf.GradientTape() as tape:
        with batch_norm.recorded_batch_statistics(layers) as statistics:
            y_pred = model(x, training=True)
        value = loss(y, y_pred)
    grads = tape.gradient(value, model.trainable_variables,
                          unconnected_gradients="zero")
    return y_pred, grads, statistics


def per_example_step(model, layers, data):
    """`VOGNModel.train_step` for a `PerExampleOptimizer`."""
    return shared.eager_per_example_step(
        model, layers, data, _batch_gradient, per_example_gradients,
        no_gradient_tracking)


