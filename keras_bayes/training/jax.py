"""The training steps on the JAX backend.

JAX steps are stateless: the step receives the values of the trainable,
non-trainable, optimizer and metric variables and returns new ones. Code
that reads or writes variables (the optimizer's `second_pass_point`,
`combine_passes`, `set_squared_gradients`, ...) runs inside a
`keras.StatelessScope` over those values (`run_with_optimizer_state`), and
its writes to the optimizer's variables are carried on into the step's
result.
"""

import contextlib

import jax
import keras
from keras import ops
from keras import tree

from keras_bayes import _keras_compat
from keras_bayes.training import batch_norm
from keras_bayes.training import shared
from keras_bayes.training.contract import inner_optimizer


def no_gradient_tracking():
    """Nothing to switch off: JAX differentiates only where asked."""
    return contextlib.nullcontext()


def run_with_optimizer_state(function, optimizer, optimizer_values,
                             trainable_variables, trainable_values):
    """Call `function()` with the optimizer's and the model's trainable
    variables reading the given values.

    Returns `(result, new_optimizer_values)`: the values the optimizer's
    variables hold afterwards (unwritten ones unchanged).
    """
    mapping = list(zip(optimizer.variables, optimizer_values))
    mapping += list(zip(trainable_variables, trainable_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        result = function()
    new_values = []
    for variable, old in zip(optimizer.variables, optimizer_values):
        value = scope.get_current_value(variable)
        new_values.append(old if value is None else value)
    return result, new_values


def _no_gradient_reducer(gradient_reducer):
    if gradient_reducer is not None:
        raise ValueError(
            "`gradient_reducer` is for torch.distributed steps "
            "(`keras_bayes.distributed`); on JAX use "
            "`keras.distribution.DataParallel`, whose compiled step "
            "reduces the gradients itself.")


def process_group():
    """`keras_bayes.distributed` drives torch.distributed only."""
    raise ValueError(
        "keras_bayes.distributed drives torch.distributed and needs the "
        "torch backend. On JAX use `keras.distribution.DataParallel` "
        "with `fit` (docs/distributed.md). Backend: 'jax'")


# ----------------------------------------------------------------------
# Multi-pass step (`TwoPassModel`).

def multi_pass_step(model, plan, state, data, gradient_reducer=None):
    """`TwoPassModel.train_step` for an optimizer with a multi-pass `plan`.
    """
    _no_gradient_reducer(gradient_reducer)
    (trainable, non_trainable, optimizer_values, metrics) = state
    non_trainable_before = non_trainable
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    sub_batches = shared.split_batch(x, y, sample_weight, plan.sub_batches)
    x0, y0, w0 = sub_batches[0]
    grad_fn = jax.value_and_grad(model.compute_loss_and_updates,
                                 has_aux=True)
    (_, aux), grads = grad_fn(
        trainable, non_trainable, metrics, x0, y0, w0,
        training=True, optimizer_variables=optimizer_values,
    )
    unscaled_loss, y_pred, non_trainable, metrics = aux
    carried = {"non_trainable": non_trainable}

    def gradient_at(point, batch):
        start = (carried["non_trainable"] if model.bn_update == "both"
                 else non_trainable_before)
        (_, aux2), point_grads = grad_fn(
            trainable if point is None else point, start, metrics,
            *batch, training=True, optimizer_variables=optimizer_values,
        )
        if model.bn_update == "both":
            carried["non_trainable"] = aux2[2]
        return point_grads

    optimizer = model.optimizer
    inner = inner_optimizer(optimizer)
    variables = model.trainable_variables

    def collect():
        with inner.two_pass_step():
            return shared.collect_gradients(optimizer, plan, grads,
                                            gradient_at, sub_batches,
                                            variables)

    grads, optimizer_values = run_with_optimizer_state(
        collect, optimizer, optimizer_values, variables, trainable)
    if model.bn_update == "both":
        non_trainable = carried["non_trainable"]

    with inner.two_pass_step():
        trainable, optimizer_values = optimizer.stateless_apply(
            optimizer_values, grads, trainable)

    logs, metrics = _keras_compat.update_jax_metrics_variables(
        model, metrics, unscaled_loss, x0, y0, y_pred, w0)
    return logs, (trainable, non_trainable, optimizer_values, metrics)


# ----------------------------------------------------------------------
# Per-example gradients and the per-example step (`VOGNModel`).

def per_example_gradients(model, loss, trainable, non_trainable, x, y):
    """(losses, gradients) of each example, stacked on a leading axis:
    `jax.vmap(jax.value_and_grad(...))` over `stateless_call` on one
    example."""
    kwargs = _keras_compat.training_call_kwargs(model)

    def single(values, xi, yi):
        y_pred, _ = model.stateless_call(
            values, non_trainable, tree.map_structure(lambda t: t[None], xi),
            **kwargs)
        return loss(yi[None], y_pred)

    # One compiled program instead of op-by-op dispatch when called eagerly
    # (inside a jitted training step it is simply inlined).
    per_example = jax.jit(jax.vmap(jax.value_and_grad(single),
                                   in_axes=(None, 0, 0)))
    try:
        losses, grads = per_example(trainable, x, y)
    except Exception as error:  # noqa: BLE001 - re-raised with the cause
        raise shared.vectorization_error("jax", error) from error
    return losses, grads


def per_example_step(model, layers, state, data):
    """`VOGNModel.train_step` for a `PerExampleOptimizer`."""
    trainable, non_trainable, optimizer_values, metrics = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    shared.check_no_sample_weight(sample_weight)
    loss_fn = shared.compiled_per_example_loss(model)

    def batch_pass(trainable_values):
        with batch_norm.recorded_batch_statistics(layers) as statistics:
            loss, aux = model.compute_loss_and_updates(
                trainable_values, non_trainable, metrics, x, y, None,
                training=True, optimizer_variables=optimizer_values)
        # Differentiated: the compiled loss alone, as in the per-example
        # pass (layer losses are not part of VOGN's ĝ).
        return loss_fn(y, aux[1]), (aux, statistics)

    statistics = None
    if layers:
        (_, (aux, statistics)), gradients = jax.value_and_grad(
            batch_pass, has_aux=True)(trainable)
    else:
        _, (aux, _) = batch_pass(trainable)
    unscaled_loss, y_pred, new_non_trainable, metrics = aux
    _, example_mean, squared = shared.squared_gradients_at(
        per_example_gradients, model, loss_fn, trainable, non_trainable,
        ops.convert_to_tensor(x), ops.convert_to_tensor(y), layers,
        statistics)
    if not layers:
        gradients = example_mean

    optimizer = model.optimizer
    variables = model.trainable_variables

    def hand_over():
        shared.hand_over_curvature(optimizer, squared, variables, layers)
        return shared.loss_scaled(optimizer, gradients)

    gradients, optimizer_values = run_with_optimizer_state(
        hand_over, optimizer, optimizer_values, variables, trainable)
    with inner_optimizer(optimizer).per_example_step():
        trainable, optimizer_values = optimizer.stateless_apply(
            optimizer_values, gradients, trainable)
    logs, metrics = _keras_compat.update_jax_metrics_variables(
        model, metrics, unscaled_loss, x, y, y_pred, None)
    return logs, (trainable, new_non_trainable, optimizer_values, metrics)
