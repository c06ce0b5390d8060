"""The backend-neutral pieces of the training steps.

Each backend module (`jax.py`, `tensorflow.py`, `torch.py`) builds its
steps from these: what to compute is decided here, how to differentiate
and where the state lives there.
"""

import contextlib

import keras
from keras import ops
from keras import tree

from keras_bayes import _keras_compat
from keras_bayes.training import batch_norm
from keras_bayes.training.contract import MultiPassOptimizer
from keras_bayes.training.contract import PassRecord
from keras_bayes.training.contract import PerExampleOptimizer
from keras_bayes.training.contract import StepContext
from keras_bayes.training.contract import inner_optimizer


def batch_size(x):
    return ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]


# ----------------------------------------------------------------------
# Multi-pass steps.

def multi_pass_plan(optimizer):
    """The optimizer's `StepPlan` if it needs more than Keras' one-gradient
    step, else None."""
    inner = inner_optimizer(optimizer)
    if not isinstance(inner, MultiPassOptimizer):
        return None
    plan = inner.step_plan()
    return plan if plan.is_multi_pass else None


def prepare_training(model):
    """Let a multi-pass optimizer prepare the variables before `fit`
    (`MultiPassOptimizer.prepare_training`); nothing for other optimizers or
    a model without variables yet."""
    inner = inner_optimizer(model.optimizer)
    if isinstance(inner, MultiPassOptimizer) and model.trainable_variables:
        inner.prepare_training(model.trainable_variables)


def split_batch(x, y, sample_weight, parts):
    """The minibatch cut into `parts` equal sub-batches (m-sharpness)."""
    if parts == 1:
        return [(x, y, sample_weight)]
    size = batch_size(x)
    if isinstance(size, int) and size < parts:
        raise ValueError(
            f"A batch of {size} examples cannot be split into "
            f"batch_split={parts} sub-batches; use a batch size that is "
            "a multiple of `batch_split`."
        )

    def cut(j):
        lo, hi = j * size // parts, (j + 1) * size // parts
        return tree.map_structure(
            lambda t: None if t is None else t[lo:hi],
            (x, y, sample_weight))

    return [cut(j) for j in range(parts)]


def unscale_gradients(optimizer, grads):
    """Gradients of the scaled loss → gradients of the loss.

    The first-pass gradients come from the scaled loss; the second-pass
    point and the optimizers' statistics need them unscaled.
    """
    scale = None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # As `LossScaleOptimizer.scale_loss`: before it is built (TF builds
        # it in its first `apply`), the loss was scaled by `initial_scale`.
        scale = (
            ops.convert_to_tensor(optimizer.dynamic_scale)
            if optimizer.built else optimizer.initial_scale
        )
    inner = inner_optimizer(optimizer)
    if inner.loss_scale_factor is not None:
        factor = inner.loss_scale_factor
        scale = factor if scale is None else scale * factor
    if scale is None:
        return list(grads)
    return [None if g is None else g / ops.cast(scale, g.dtype)
            for g in grads]


def collect_gradients(optimizer, plan, first_grads, gradient_at,
                      sub_batches, variables):
    """Every pass after the first; returns the gradients to apply.

    The loop of the `contract` module docstring. `first_grads` are those
    of the ordinary pass on sub-batch 0 at the variables;
    `gradient_at(point, batch)` differentiates the scaled loss at `point`
    (None: the variables) on `batch`. Call it inside the optimizer's
    `two_pass_step()`.
    """
    inner = inner_optimizer(optimizer)

    def unscale(grads):
        return unscale_gradients(optimizer, grads)

    records = []
    for j, batch in enumerate(sub_batches):
        for k in range(plan.samples):
            if j == 0 and k == 0:
                point, grads = None, list(first_grads)
            else:
                point = inner.draw_training_point(variables)
                grads = list(gradient_at(point, batch))
            second_point = second_grads = None
            if plan.second_pass:
                second_point = inner.second_pass_point(unscale(grads),
                                                       variables)
                second_grads = list(gradient_at(second_point, batch))
            records.append(PassRecord(point, grads, second_point,
                                      second_grads))
    return inner.combine_passes(records, StepContext(list(variables),
                                                     unscale))


def loss_at_point(model, point, non_trainable, metrics, x, y,
                  sample_weight):
    """The scaled training loss at `point` and the new non-trainables,
    computed statelessly (no variable is written)."""
    y_pred, non_trainable, losses = model.stateless_call(
        point, non_trainable, x, return_losses=True,
        **_keras_compat.training_call_kwargs(model),
    )
    if losses:
        _keras_compat.set_losses_override(model, losses)
    loss, (_, non_trainable, _) = model.stateless_compute_loss(
        point, non_trainable, metrics, x=x, y=y, y_pred=y_pred,
        sample_weight=sample_weight, training=True,
    )
    if losses:
        _keras_compat.clear_losses_override(model)
    return model.optimizer.scale_loss(loss), non_trainable


# ----------------------------------------------------------------------
# Per-example steps.

def per_example_optimizer(optimizer):
    """The `PerExampleOptimizer` inside `optimizer`, or None."""
    inner = inner_optimizer(optimizer)
    return inner if isinstance(inner, PerExampleOptimizer) else None


def vectorization_error(backend, error):
    return ValueError(
        "Could not vectorize the per-example gradients of this model over "
        f"the batch with the {backend} backend ({type(error).__name__}: "
        f"{error}). Per-example gradients need a model whose forward pass "
        "on one example can be vectorized (no in-place updates, no "
        "data-dependent Python control flow, no layer that mixes the "
        "examples of a batch)."
    )


def squared_gradients_at(per_example_gradients, model, loss, trainable,
                         non_trainable, x, y, layers=(), statistics=None):
    """Mean loss, mean gradient and mean squared gradient over examples.

    `per_example_gradients` is the backend's vectorized pass
    (`(losses, grads)` with a leading example axis); the BN `layers`
    normalise with `statistics` (from `recorded_batch_statistics` on the
    batch pass at the same weights).
    """
    frozen = (batch_norm.frozen_batch_statistics(layers, statistics)
              if layers else contextlib.nullcontext())
    with frozen:
        losses, grads = per_example_gradients(model, loss, trainable,
                                              non_trainable, x, y)
    gradients = [ops.mean(g, axis=0) for g in grads]
    squared = [ops.mean(ops.square(g), axis=0) for g in grads]
    return ops.mean(losses), gradients, squared


def scalar_loss(loss):
    """`loss` as a callable `(y_true, y_pred) -> scalar`.

    A name resolves (`keras.losses.get`) to Keras' loss *function*, which
    returns one value per example: averaged here, as `compile` would, so
    that its gradient is defined (JAX's `grad` needs a scalar). `Loss`
    objects and other callables already reduce and pass through.
    """
    if not isinstance(loss, str):
        return loss
    per_example = keras.losses.get(loss)

    def mean_loss(y_true, y_pred):
        return keras.ops.mean(per_example(y_true, y_pred))

    return mean_loss


def compiled_per_example_loss(model):
    """The model's one compiled loss as a `keras.losses.Loss` (or
    callable)."""
    loss = model.loss
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            "VOGNModel supports one compiled loss for a single output. "
            f"Received: loss={loss!r}")
    loss = scalar_loss(loss)
    if loss is None:
        raise ValueError("VOGNModel needs `compile(loss=...)`.")
    return loss


def check_no_sample_weight(sample_weight):
    if sample_weight is not None:
        raise ValueError(
            "VOGNModel does not support sample weights: the curvature "
            "is the plain mean of per-example squared gradients.")


def loss_scaled(optimizer, gradients):
    """The gradients of the scaled loss, as Keras' own training step hands
    `apply` (which divides by the scale again); ĥ stays unscaled."""
    scale = optimizer.scale_loss(1.0)
    if isinstance(scale, float) and scale == 1.0:
        return gradients
    return [g * ops.cast(scale, g.dtype) for g in gradients]


def hand_over_curvature(optimizer, squared, variables, layers):
    """Mark BN's γ, β deterministic and store ĥ on the optimizer."""
    inner = inner_optimizer(optimizer)
    deterministic = [v for layer in layers for v in layer.trainable_variables]
    if deterministic:
        inner.mark_deterministic(var_list=deterministic)
    inner.set_squared_gradients(squared, variables)


def eager_per_example_step(model, layers, data, batch_gradient,
                           per_example_gradients, no_gradient_tracking):
    """`VOGNModel.train_step` for a `PerExampleOptimizer` on a backend whose
    step runs on the variables (TensorFlow, torch); JAX's is stateless.

    `batch_gradient(model, x, y, loss_fn, layers)` returns (y_pred, the
    minibatch gradient, the BN batch statistics); `per_example_gradients`
    is the backend's vectorised per-example map; `no_gradient_tracking()`
    is the context the backend updates state in (`torch.no_grad`).
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    check_no_sample_weight(sample_weight)
    loss_fn = compiled_per_example_loss(model)
    statistics = None
    if layers:
        y_pred, gradients, statistics = batch_gradient(model, x, y, loss_fn,
                                                       layers)
    else:
        with no_gradient_tracking():
            y_pred = model(x, training=True)
    with no_gradient_tracking():
        loss = _keras_compat.compute_compiled_loss(model, x, y, y_pred, None,
                                                   training=True)
        _keras_compat.loss_tracker(model).update_state(
            loss, sample_weight=ops.shape(y_pred)[0])
    trainable = [ops.convert_to_tensor(v) for v in model.trainable_variables]
    non_trainable = [ops.convert_to_tensor(v)
                     for v in model.non_trainable_variables]
    _, example_mean, squared = squared_gradients_at(
        per_example_gradients, model, loss_fn, trainable, non_trainable,
        ops.convert_to_tensor(x), ops.convert_to_tensor(y), layers,
        statistics)
    if not layers:
        gradients = example_mean
    optimizer = model.optimizer
    with no_gradient_tracking():
        with inner_optimizer(optimizer).per_example_step():
            hand_over_curvature(optimizer, squared,
                                model.trainable_variables, layers)
            optimizer.apply(loss_scaled(optimizer, gradients),
                            model.trainable_variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=None)
