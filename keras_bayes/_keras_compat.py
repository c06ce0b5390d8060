"""Every private Keras name keras_bayes touches, in one place.

Keras' public API does not expose what a custom training step or an
optimizer that keeps a posterior needs (the compiled loss, the loss tracker,
an optimizer's slot index, ...). Each private touch goes through a function
of this module, so that:

- a Keras release that renames or removes one breaks here, in one module,
  and `tests/test_keras_compat.py` names the missing piece with a clear
  message (see `check_private_api`);
- the rest of the package reads as public API plus calls to named helpers.

The supported Keras range is declared in `pyproject.toml`; every name below
is present with the documented behaviour from `MINIMUM_KERAS_VERSION` on.
"""

import keras

# The floor of pyproject.toml's `keras>=X,<Y` (a test keeps the two equal):
# the oldest release on which scripts/test_keras_floor.sh passes. Before
# 3.15.0, `train_on_batch` logs a running mean of the loss instead of this
# batch's loss; the private pieces below pass their tests back to 3.10.0
# (tests/test_keras_compat.py, JAX).
MINIMUM_KERAS_VERSION = "3.15.0"

# -- Optimizers ----------------------------------------------------------
# Private methods a `keras.optimizers.Optimizer` subclass overrides or calls.
# `_backend_update_step(grads, trainable_variables, learning_rate)`: the
# hook that runs after gradient clipping and accumulation, before the
# per-variable `update_step`s (posterior optimizers check the gradients for
# NaN/Inf there and may update all variables in one fused pass).
# `_apply_weight_decay(variables)`: Keras' decoupled decay, which a posterior
# optimizer disables (its δ is a prior precision inside the update).
OPTIMIZER_HOOKS = ("_backend_update_step", "_apply_weight_decay")


def track_variable(optimizer, variable):
    """Make `variable` an optimizer variable (saved, threaded through JAX's
    stateless apply). `BaseOptimizer._track_variable`."""
    optimizer._track_variable(variable)


def variable_index(optimizer, variable):
    """The slot index of `variable`. `BaseOptimizer._get_variable_index`."""
    return optimizer._get_variable_index(variable)


def variable_key(optimizer, variable):
    """A hashable key of `variable`. `BaseOptimizer._var_key`."""
    return optimizer._var_key(variable)


def uses_weight_decay(optimizer, variable):
    """False for variables excluded by `exclude_from_weight_decay`.
    `BaseOptimizer._use_weight_decay`."""
    return optimizer._use_weight_decay(variable)


def optimizer_variables_built_for(optimizer):
    """The trainable variables the optimizer was built on, in build order.
    `BaseOptimizer._trainable_variables`."""
    return list(optimizer._trainable_variables)


# -- Trainers and layers -----------------------------------------------------


def call_has_training_arg(layer):
    """Whether `layer.call` takes `training`. `Layer._call_has_training_arg`."""
    return bool(layer._call_has_training_arg)


def training_call_kwargs(layer):
    """`{"training": True}` when `layer.call` takes `training`, else `{}`."""
    return {"training": True} if call_has_training_arg(layer) else {}


def compute_compiled_loss(model, x, y, y_pred, sample_weight, training=True):
    """The compiled loss plus layer losses. `Trainer._compute_loss`."""
    return model._compute_loss(x=x, y=y, y_pred=y_pred,
                               sample_weight=sample_weight, training=training)


def loss_tracker(model):
    """The `Mean` metric behind the logged `loss`. `Trainer._loss_tracker`."""
    return model._loss_tracker


def update_jax_metrics_variables(model, metrics_variables, unscaled_loss, x, y,
                                 y_pred, sample_weight):
    """(logs, metrics_variables) after a stateless JAX step.
    `JAXTrainer._update_metrics_variables`."""
    return model._update_metrics_variables(
        metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)


def set_losses_override(layer, losses):
    """Make `layer.losses` return `losses` (a stateless call's layer losses)
    until `clear_losses_override`. `Layer._losses_override`, as
    `JAXTrainer.compute_loss_and_updates` does."""
    layer._losses_override.clear()
    layer._losses_override = losses


def clear_losses_override(layer):
    layer._losses_override.clear()


def symbolic_build(model, data_batch):
    """Build model, metrics and optimizer as `fit` does before its loop.
    `Trainer._symbolic_build`."""
    model._symbolic_build(data_batch=data_batch)


def running_fit():
    """`(model, epoch_iterator)` of the innermost `Model.fit` running on
    this thread, or None outside `fit`.

    Keras never hands the model or the data to the optimizer; an optimizer
    built or stepped by `fit` (the step is traced or run inside the call)
    finds the call on the stack. Each backend's `Trainer.fit` holds its
    data in a local `epoch_iterator`.
    """
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit":
            model = frame.f_locals.get("self")
            iterator = frame.f_locals.get("epoch_iterator")
            if isinstance(model, keras.Model) and iterator is not None:
                return model, iterator
        frame = frame.f_back
    return None


def fit_examples_per_epoch():
    """Training examples per epoch of the running `Model.fit`, or None
    where that is not known.

    From `epoch_iterator.data_adapter`'s `num_batches`, `batch_size` and
    `partial_batch_size` (see `running_fit`): known for arrays, tensors, a
    sized `PyDataset`/`torch` loader and a `tf.data` dataset of known
    cardinality; None for a generator or a dataset of unknown size, and
    outside `fit` (`train_on_batch`, a custom loop).
    """
    fit = running_fit()
    return None if fit is None else _examples_per_epoch(fit[1])


def _examples_per_epoch(epoch_iterator):
    adapter = getattr(epoch_iterator, "data_adapter", None)
    if adapter is None:
        return None
    try:
        batches, batch_size = adapter.num_batches, adapter.batch_size
        partial = adapter.partial_batch_size if batches else None
    except (NotImplementedError, AttributeError, TypeError):
        return None
    if not batches or not batch_size or batches < 0:
        return None
    if partial:
        return int((batches - 1) * batch_size + partial)
    return int(batches * batch_size)


def flatten_layers(model, include_self=False):
    """Every sublayer, recursively. `Layer._flatten_layers`."""
    return list(model._flatten_layers(include_self=include_self))


def batch_norm_moments(layer):
    """The bound `BatchNormalization._moments(inputs, mask) -> (mean, var)`
    that `call` uses in training mode."""
    return layer._moments


def shadow_batch_norm_moments(layer, moments):
    """Shadow `_moments` on this layer *instance* (never on the class).
    Returns a token for `restore_batch_norm_moments`."""
    missing = object()
    previous = vars(layer).get("_moments", missing)
    vars(layer)["_moments"] = moments
    return previous, missing


def restore_batch_norm_moments(layer, token):
    previous, missing = token
    if previous is missing:
        vars(layer).pop("_moments", None)
    else:
        vars(layer)["_moments"] = previous


def unscale_loss_for_distribution(loss):
    """Undo the 1/replicas scaling of a loss under tf.distribute, for the
    logged value. `keras.src.losses.loss.unscale_loss_for_distribution`."""
    from keras.src.losses import loss as loss_module

    return loss_module.unscale_loss_for_distribution(loss)


def jax_state_detached(variable):
    """True while the JAX trainer holds a variable's value outside it (its
    `_value` is None), e.g. when a traced step failed. `Variable._value`."""
    return getattr(variable, "_value", 0) is None


def torch_variable_tensor(variable):
    """The tensor a torch variable stores (not what `value` resolves to
    inside a `StatelessScope`). `Variable._value` (torch: the
    `torch.nn.Parameter` holding the value, from Keras 3.0 on)."""
    return variable._value


def set_torch_variable_tensor(variable, parameter):
    """Make a torch variable store `parameter` (a `torch.nn.Parameter` of
    its shape and dtype), e.g. a view of a larger buffer: `assign` then
    writes into that buffer (torch's `Variable._direct_assign` copies in
    place). `Variable._value`, as `Variable._initialize` sets it for a
    `Parameter` (Keras 3.0 on)."""
    variable._value = parameter


# -- The check the test suite runs --------------------------------------------


def _has_method(owner, name):
    return callable(getattr(owner, name, None))


def _private_api_presence():
    """`(piece, present)` for every private Keras piece above.

    Cheap: it looks at classes and at a bare layer, model and optimizer;
    `tests/test_keras_compat.py` checks what each piece does.
    """
    optimizer_class = keras.optimizers.Optimizer
    pieces = [
        (f"keras.optimizers.Optimizer.{name}",
         _has_method(optimizer_class, name))
        for name in OPTIMIZER_HOOKS + ("_track_variable",
                                       "_get_variable_index", "_var_key",
                                       "_use_weight_decay")
    ]
    optimizer = keras.optimizers.SGD()
    pieces.append(("keras.optimizers.Optimizer._trainable_variables",
                   hasattr(optimizer, "_trainable_variables")))
    pieces += [(f"keras.Model.{name}", _has_method(keras.Model, name))
               for name in ("_compute_loss", "_symbolic_build",
                            "_flatten_layers")]
    pieces.append(("keras.Model._loss_tracker",
                   hasattr(keras.Sequential(), "_loss_tracker")))
    layer = keras.layers.Layer()
    pieces += [(f"keras.layers.Layer.{name}", hasattr(layer, name))
               for name in ("_call_has_training_arg", "_losses_override")]
    pieces.append(("keras.layers.BatchNormalization._moments",
                   _has_method(keras.layers.BatchNormalization, "_moments")))
    try:
        from keras.src.losses import loss as loss_module
    except ImportError:
        loss_module = None
    pieces.append(("keras.src.losses.loss.unscale_loss_for_distribution",
                   _has_method(loss_module, "unscale_loss_for_distribution")))
    if keras.backend.backend() == "jax":
        try:
            from keras.src.backend.jax.trainer import JAXTrainer
        except ImportError:
            JAXTrainer = None
        pieces.append(("keras.src.backend.jax.trainer.JAXTrainer."
                       "_update_metrics_variables",
                       _has_method(JAXTrainer, "_update_metrics_variables")))
    if keras.backend.backend() == "torch":
        import torch

        pieces.append(("keras.Variable._value (a torch.nn.Parameter)",
                       isinstance(getattr(keras.Variable(0.0), "_value",
                                          None), torch.nn.Parameter)))
    return pieces


def check_private_api():
    """Raise `RuntimeError` naming each private Keras piece that is missing.

    Run by `tests/test_keras_compat.py`; a Keras upgrade that breaks one of
    them fails there with this message before anything else does.
    """
    missing = [piece for piece, present in _private_api_presence()
               if not present]
    if missing:
        raise RuntimeError(
            f"Keras {keras.version()} lacks private API that keras_bayes "
            f"needs (supported from Keras {MINIMUM_KERAS_VERSION}): "
            + ", ".join(missing)
            + ". Install a Keras version in the range of pyproject.toml.")
