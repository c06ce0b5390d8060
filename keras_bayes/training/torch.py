"""The training steps on the torch backend.

The first pass is Keras' own forward and `backward`; the passes after it
differentiate a stateless loss with `torch.autograd.grad`, so no variable
has to be restored. Per-example gradients use `torch.func.vmap` over
`torch.func.grad`.
"""

import keras
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from keras_bayes import _keras_compat
from keras_bayes.training import batch_norm
from keras_bayes.training import shared
from keras_bayes.training.contract import inner_optimizer


def no_gradient_tracking():
    """`torch.no_grad()`: Keras' torch step updates state without autograd.
    """
    return torch.no_grad()


def loss_and_gradients(model, x, y, sample_weight):
    """The first half of Keras' torch `train_step`: forward, compiled loss
    (tracked), scaled backward. Returns (y_pred, gradients)."""
    y_pred = model(x, **_keras_compat.training_call_kwargs(model))
    model.zero_grad()
    loss = _keras_compat.compute_compiled_loss(model, x, y, y_pred,
                                               sample_weight, training=True)
    _keras_compat.loss_tracker(model).update_state(
        loss, sample_weight=shared.batch_size(x))
    model.optimizer.scale_loss(loss).backward()
    return y_pred, [v.value.grad for v in model.trainable_variables]


def process_group():
    """`torch.distributed`, once a process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "torch.distributed is not initialised: call "
            "`torch.distributed.init_process_group(...)` on every process "
            "first (e.g. under `torchrun`)."
        )
    return dist


def _check_single_process():
    """Refuse a multi-pass step under a process group without a reducer.

    There, every process would build its perturbation from its local
    gradient and the replicas would silently drift apart (the later passes
    use `torch.autograd.grad`, which no DDP hook sees).
    """
    if (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1):
        raise NotImplementedError(
            "TwoPassModel's multi-pass step (bSAM, SAM, SOBA with "
            "mc_samples > 1) under torch.distributed needs every "
            "gradient of the step averaged over the processes; train "
            "with `keras_bayes.distributed.fit_data_parallel` (or call "
            "`keras_bayes.distributed.train_step` in your loop). See "
            "docs/distributed.md."
        )


# ----------------------------------------------------------------------
# Multi-pass step (`TwoPassModel`).

def multi_pass_step(model, plan, data, gradient_reducer=None):
    """`TwoPassModel.train_step` for an optimizer with a multi-pass `plan`.

    `gradient_reducer` (data parallelism, `keras_bayes.distributed`)
    averages a gradient list over the processes; every gradient of the
    step goes through it before the optimizer sees it.
    """
    if gradient_reducer is None:
        _check_single_process()
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    sub_batches = shared.split_batch(x, y, sample_weight, plan.sub_batches)
    x0, y0, w0 = sub_batches[0]
    non_trainable_before = [
        v.value.detach().clone() for v in model.non_trainable_variables
    ]
    y_pred, grads = loss_and_gradients(model, x0, y0, w0)
    variables = model.trainable_variables
    metrics = [v.value.detach().clone() for v in model.metrics_variables]
    if gradient_reducer is not None:
        # The perturbation and the curvature statistics are then those of
        # the global batch and identical on every process.
        grads = gradient_reducer(grads)

    def gradient_at(point, batch):
        if point is None:
            point = [v.value for v in variables]
        point = [p.detach().clone().requires_grad_(True) for p in point]
        if model.bn_update == "both":
            start = [v.value.detach().clone()
                     for v in model.non_trainable_variables]
        else:
            start = non_trainable_before
        with torch.enable_grad():
            loss2, non_trainable = shared.loss_at_point(
                model, point, start, metrics, *batch)
        point_grads = torch.autograd.grad(loss2, point, allow_unused=True)
        if model.bn_update == "both":
            for variable, value in zip(model.non_trainable_variables,
                                       non_trainable):
                variable.assign(value)
        point_grads = list(point_grads)
        if gradient_reducer is None:
            return point_grads
        return gradient_reducer(point_grads)

    optimizer = model.optimizer
    with torch.no_grad():
        with inner_optimizer(optimizer).two_pass_step():
            grads = shared.collect_gradients(optimizer, plan, grads,
                                             gradient_at, sub_batches,
                                             variables)
            optimizer.apply(grads, variables)
    return model.compute_metrics(x0, y0, y_pred, sample_weight=w0)


# ----------------------------------------------------------------------
# Per-example gradients and the per-example step (`VOGNModel`).

class _ChannelsFirstContiguous(TorchFunctionMode):
    """A torch function mode in which `contiguous(channels_last)` is
    `contiguous()`.

    `torch.func.vmap` cannot clone a tensor into the channels-last memory
    format, which Keras' torch convolutions request. The memory format
    changes how values are laid out, never which values a tensor holds, so
    the convolution computes the same result either way.
    """

    _CHANNELS_LAST = (torch.channels_last, torch.channels_last_3d)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.contiguous:
            if kwargs.get("memory_format") in self._CHANNELS_LAST:
                kwargs["memory_format"] = torch.contiguous_format
            elif len(args) > 1 and args[1] in self._CHANNELS_LAST:
                args = (args[0], torch.contiguous_format) + args[2:]
        return func(*args, **kwargs)


def per_example_gradients(model, loss, trainable, non_trainable, x, y):
    """(losses, gradients) of each example, stacked on a leading axis:
    `torch.func.vmap(torch.func.grad(...))` over `stateless_call` on one
    example (one Dropout mask shared by all examples)."""
    kwargs = _keras_compat.training_call_kwargs(model)

    def single(values, xi, yi):
        y_pred, _ = model.stateless_call(values, non_trainable,
                                         xi.unsqueeze(0), **kwargs)
        value = loss(yi.unsqueeze(0), y_pred)
        return value, value

    try:
        with torch.enable_grad(), _ChannelsFirstContiguous():
            grads, losses = torch.func.vmap(
                torch.func.grad(single, has_aux=True), in_dims=(None, 0, 0),
                randomness="same")(list(trainable), x, y)
    except Exception as error:  # noqa: BLE001 - re-raised with the cause
        raise shared.vectorization_error("torch", error) from error
    return losses, grads


def _batch_gradient(model, x, y, loss, layers):
    """(y_pred, ∇ mean_i ℓ_i with BN's statistics differentiated, the BN
    statistics) from one forward/backward pass on the batch."""
    with torch.enable_grad():
        with batch_norm.recorded_batch_statistics(layers) as statistics:
            y_pred = model(x, training=True)
        value = loss(y, y_pred)
    values = [v.value for v in model.trainable_variables]
    grads = torch.autograd.grad(value, values, allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g
             for g, v in zip(grads, values)]
    statistics = [[(mean.detach(), variance.detach())
                   for mean, variance in calls] for calls in statistics]
    return y_pred.detach(), grads, statistics


def per_example_step(model, layers, data):
    """`VOGNModel.train_step` for a `PerExampleOptimizer`."""
    return shared.eager_per_example_step(
        model, layers, data, _batch_gradient, per_example_gradients,
        no_gradient_tracking)


