"""Per-example gradients and the training step VOGN needs.

VOGN's curvature is the mean of the per-example squared gradients (a
Gauss-Newton / empirical-Fisher diagonal), which the mean minibatch gradient
Keras hands an optimizer cannot give. `per_example_squared_gradients`
computes them with each backend's vectorization over the batch:
`jax.vmap(jax.value_and_grad(...))`, `torch.func.vmap(torch.func.grad(...))`
and `tf.vectorized_map` (with the fallback to a `while_loop` disabled), each
around the model's `stateless_call` on one example.

`VOGNModel` wraps a Keras model and overrides `train_step` to feed VOGN:

```
model = keras_bayes.per_example.VOGNModel(model)
model.compile(optimizer=keras_bayes.optimizers.VOGN(1e-3, ess=len(x)),
              loss="sparse_categorical_crossentropy")
model.fit(x, y)
```

Supported: single-input, single-output models trained with one compiled loss
(a string or `keras.losses.Loss`), without sample weights; layers whose
per-example forward pass is vectorizable: Dense, Conv, pooling, activations,
normalisation over features (`LayerNormalization`, `GroupNormalization`,
FRN) on every backend, and `BatchNormalization` as below.

**BatchNormalization**, as the VOGN paper does it (Osawa et al., 2019; code
`team-approx-bayes/dl-with-bayes` on `cybertronai/pytorch-sso`, option
`non_reg_for_bn`). In training mode a BN layer normalises with the mean and
variance of its batch, so one example's loss depends on the others and a
per-example gradient needs a convention. Here (`batch_norm="frozen"`, the
default of `per_example_squared_gradients`; `VOGNModel(batch_norm=
"deterministic")`):

* the statistics μ_B, σ²_B of every trainable BN layer are computed once, by
  the forward pass on the whole batch, and held constant in the per-example
  pass: example i is normalised as (a_i − μ_B)/sqrt(σ²_B + ε), exactly its
  activations of the batch pass, and

      g_i = ∂ℓ_i/∂θ  with μ_B, σ²_B fixed.

  The approximation: the batch gradient also differentiates μ_B and σ²_B
  (for weights before a BN layer, BN's backward subtracts the batch mean of
  the output-gradient and its projection on the normalised input), so
  mean_i g_i is *not* the minibatch gradient there. pytorch-sso, which reads
  per-layer activations and output-gradients from the batch backward pass,
  keeps those cross-example terms inside each example's output-gradient;
  for weights after the last BN layer (and for that layer's own γ, β) the
  two definitions agree. `VOGNModel` therefore takes ĝ from the ordinary
  batch backward pass (the same minibatch gradient as Keras and
  pytorch-sso) and only ĥ = mean_i g_i² from the per-example pass.
  (pytorch-sso also approximates the squares for conv biases and BN2d:
  (Σ_hw x̂·g)² is replaced by Σ_hw x̂² · Σ_hw g²; ours are exact.)
* BN's γ and β are kept deterministic: `VOGNModel` marks them with
  `VOGN.mark_deterministic`, so they get no noise and no prior and are
  updated by VOGN's mean step with their own curvature (see `VOGN`).

Not supported, with a clear error: BatchNormalization with `renorm=True`
(its corrections depend on the moving statistics in a way this pass does not
reproduce), `batch_norm="error"` with BN layers, and operations the backend
cannot vectorize (the error names the backend's reason).

**Convolutions on torch.** Keras 3.15's torch convolutions (`ops.conv`, used by
the Conv1D/2D/3D layers) copy their operands into the channels-last format
(`Tensor.contiguous(memory_format=torch.channels_last)`), which
`torch.func.vmap` does not implement. The per-example pass runs under a
`TorchFunctionMode`, active only around its own `vmap` call, that turns that
request into an ordinary (channels-first) `contiguous()`: the same values in
another memory layout, so the convolution and its gradients are unchanged.
Nothing in Keras or torch is patched; outside the pass nothing changes.

Random layers (Dropout) see one random mask per step shared by all
examples of the per-example pass. Layer regularisation losses
(`kernel_regularizer`, `add_loss`) are not part of the per-example gradient
(nor, with BN, of the batch gradient VOGNModel hands VOGN); use VOGN's
`weight_decay` (the prior) instead.

Keras private API used here (Keras 3.15): `Trainer._loss_tracker`,
`Trainer._compute_loss`, `JAXTrainer._update_metrics_variables`,
`Layer._call_has_training_arg`, `Layer._flatten_layers` and
`BatchNormalization._moments` (shadowed on the layer instance, never on the
class, while statistics are recorded or held fixed).
"""

import contextlib

import keras
from keras import ops
from keras import tree

from keras_bayes.training import WrapperModel

BATCH_NORM_CHOICES = ("frozen", "error")


# ----------------------------------------------------------------------
# BatchNormalization: record the batch statistics, then hold them fixed.

def batch_coupled_layers(model):
    """The BatchNormalization layers whose training output mixes examples.

    A trainable BatchNormalization layer normalises with its batch's
    statistics in training mode. One with `trainable=False` uses its moving
    statistics even in training mode, so it acts on each example alone.
    """
    # Private API (Keras 3.15): `_flatten_layers`.
    layers = [model] + list(getattr(model, "_flatten_layers",
                                    lambda **k: [])(include_self=False))
    return [layer for layer in layers
            if isinstance(layer, keras.layers.BatchNormalization)
            and layer.trainable]


def check_batch_norm(layers, batch_norm):
    """Raise a clear error for BN layers this module cannot handle."""
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
    renorm = [layer.name for layer in layers if getattr(layer, "renorm",
                                                        False)]
    if renorm:
        raise ValueError(
            "Per-example gradients with batch statistics held fixed are not "
            f"supported for BatchNormalization with renorm=True {renorm}: "
            "its corrections r, d depend on the moving statistics, which "
            "the per-example pass does not reproduce. Use renorm=False.")


@contextlib.contextmanager
def _moments_replaced(layers, make_moments):
    """`layer._moments = make_moments(index, layer, original)` inside.

    An attribute of each layer *instance* shadows the class's method for the
    duration of the context; the previous state is restored on exit.
    """
    missing = object()
    saved = []
    try:
        for index, layer in enumerate(layers):
            saved.append((layer, vars(layer).get("_moments", missing)))
            # Private API (Keras 3.15): `BatchNormalization._moments(inputs,
            # mask) -> (mean, variance)`, called by `call` in training mode.
            vars(layer)["_moments"] = make_moments(index, layer,
                                                   layer._moments)
        yield
    finally:
        for layer, previous in saved:
            if previous is missing:
                vars(layer).pop("_moments", None)
            else:
                vars(layer)["_moments"] = previous


@contextlib.contextmanager
def recorded_batch_statistics(layers):
    """Record the (mean, variance) each BN layer computes from its batch.

    Yields a list with, per layer, the list of (mean, variance) pairs of its
    calls in order (one pair unless the layer is shared).
    """
    statistics = [[] for _ in layers]

    def make_moments(index, layer, original):
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
    treats them as fixed, see the module docstring.
    """
    def make_moments(index, layer, original):
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
    """The statistics of `layers` in a training-mode forward pass on `x`."""
    no_grad = contextlib.nullcontext()
    if keras.backend.backend() == "torch":
        import torch

        no_grad = torch.no_grad()
    with no_grad, recorded_batch_statistics(layers) as statistics:
        model.stateless_call(trainable, non_trainable, x,
                             **_call_kwargs(model))
    return statistics


# ----------------------------------------------------------------------
# The per-example pass, one function per backend.

def _call_kwargs(model):
    # Private API (Keras 3.15): `_call_has_training_arg`.
    return ({"training": True}
            if getattr(model, "_call_has_training_arg", True) else {})


def _vectorization_error(backend, error):
    return ValueError(
        "Could not vectorize the per-example gradients of this model over "
        f"the batch with the {backend} backend ({type(error).__name__}: "
        f"{error}). Per-example gradients need a model whose forward pass "
        "on one example can be vectorized (no in-place updates, no "
        "data-dependent Python control flow, no layer that mixes the "
        "examples of a batch)."
    )


def _jax_per_example(model, loss, trainable, non_trainable, x, y):
    import jax

    kwargs = _call_kwargs(model)

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
        raise _vectorization_error("jax", error) from error
    return losses, grads


def _channels_first_contiguous_mode():
    """A torch function mode in which `contiguous(channels_last)` is
    `contiguous()`.

    `torch.func.vmap` cannot clone a tensor into the channels-last memory
    format, which Keras' torch convolutions request. The memory
    format changes how values are laid out, never which values a tensor
    holds, so the convolution computes the same result either way.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    channels_last = (torch.channels_last, torch.channels_last_3d)

    class ChannelsFirstContiguous(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.Tensor.contiguous:
                if kwargs.get("memory_format") in channels_last:
                    kwargs["memory_format"] = torch.contiguous_format
                elif len(args) > 1 and args[1] in channels_last:
                    args = (args[0], torch.contiguous_format) + args[2:]
            return func(*args, **kwargs)

    return ChannelsFirstContiguous()


def _torch_per_example(model, loss, trainable, non_trainable, x, y):
    import torch

    kwargs = _call_kwargs(model)

    def single(values, xi, yi):
        y_pred, _ = model.stateless_call(values, non_trainable,
                                         xi.unsqueeze(0), **kwargs)
        value = loss(yi.unsqueeze(0), y_pred)
        return value, value

    try:
        with torch.enable_grad(), _channels_first_contiguous_mode():
            grads, losses = torch.func.vmap(
                torch.func.grad(single, has_aux=True), in_dims=(None, 0, 0),
                randomness="same")(list(trainable), x, y)
    except Exception as error:  # noqa: BLE001 - re-raised with the cause
        raise _vectorization_error("torch", error) from error
    return losses, grads


def _tf_per_example(model, loss, trainable, non_trainable, x, y):
    import tensorflow as tf

    kwargs = _call_kwargs(model)
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
        raise _vectorization_error("tensorflow", error) from error
    return losses, grads


def squared_gradients_at(model, loss, trainable, non_trainable, x, y,
                         layers=(), statistics=None):
    """Mean loss, mean gradient and mean squared gradient over examples.

    The per-example pass of `per_example_squared_gradients` on given values
    (tensors), with the BN `layers` normalising with `statistics` (from
    `recorded_batch_statistics` on the batch pass at the same weights).
    """
    backend = keras.backend.backend()
    compute = {
        "jax": _jax_per_example,
        "torch": _torch_per_example,
        "tensorflow": _tf_per_example,
    }.get(backend)
    if compute is None:
        raise NotImplementedError(
            f"Per-example gradients are not available on the {backend!r} "
            "backend (jax, torch and tensorflow are supported).")
    frozen = (frozen_batch_statistics(layers, statistics) if layers
              else contextlib.nullcontext())
    with frozen:
        losses, grads = compute(model, loss, trainable, non_trainable, x, y)
    gradients = [ops.mean(g, axis=0) for g in grads]
    squared = [ops.mean(ops.square(g), axis=0) for g in grads]
    return ops.mean(losses), gradients, squared


def per_example_squared_gradients(model, x, y, loss, trainable_values=None,
                                  non_trainable_values=None,
                                  batch_norm="frozen"):
    """Mean loss, mean gradient and mean squared gradient over examples.

    For the batch (x, y) with n examples and ℓ_i the loss of example i:

        loss      = (1/n) Σ ℓ_i
        gradients = (1/n) Σ ∇ℓ_i              (Keras' minibatch gradient)
        squared   = (1/n) Σ (∇ℓ_i)²            (elementwise; VOGN's ĥ)

    Each ∇ℓ_i is the gradient of `loss(y[i:i+1], model(x[i:i+1]))` with
    respect to the trainable variables, computed for all i at once by the
    backend's vectorizing map (jax.vmap, torch.func.vmap, tf.vectorized_map).

    With trainable BatchNormalization layers and `batch_norm="frozen"`, the
    layers normalise example i with the mean and variance of the whole batch
    (from one forward pass on it, in training mode) held constant, as in the
    module docstring; `gradients` is then the mean of those per-example
    gradients, which differs from the minibatch gradient for weights before
    a BN layer (that one also differentiates the statistics).

    Args:
        model: a built Keras model with one input and one output.
        x, y: the batch (tensors or arrays with a leading batch axis).
        loss: `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred) -> scalar` (the mean over its batch).
        trainable_values, non_trainable_values: values to evaluate at
            instead of the model's variables (same order as
            `model.trainable_variables` / `model.non_trainable_variables`).
        batch_norm: `"frozen"` (the default): BN layers use the batch's
            statistics held fixed; `"error"`: raise if the model has a
            trainable BatchNormalization layer.

    Returns:
        `(loss, gradients, squared_gradients)`: a scalar tensor and two
        lists of tensors shaped like the trainable variables.

    Raises:
        ValueError: the model contains BatchNormalization that
            `batch_norm` rejects (or with `renorm=True`), or the backend
            cannot vectorize its forward pass over single examples.
    """
    if batch_norm not in BATCH_NORM_CHOICES:
        raise ValueError(
            f"`batch_norm` must be one of {list(BATCH_NORM_CHOICES)}. "
            f"Received: batch_norm={batch_norm!r}")
    layers = batch_coupled_layers(model)
    check_batch_norm(layers, batch_norm)
    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    trainable = (
        [ops.convert_to_tensor(v) for v in model.trainable_variables]
        if trainable_values is None else list(trainable_values))
    non_trainable = (
        [ops.convert_to_tensor(v) for v in model.non_trainable_variables]
        if non_trainable_values is None else list(non_trainable_values))
    x = ops.convert_to_tensor(x)
    y = ops.convert_to_tensor(y)
    statistics = (batch_statistics(model, x, trainable, non_trainable,
                                   layers) if layers else None)
    return squared_gradients_at(model, loss, trainable, non_trainable, x, y,
                                layers, statistics)


# ----------------------------------------------------------------------
# The training step.

def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


VOGN_MODEL_BATCH_NORM_CHOICES = ("deterministic", "error")


@keras.saving.register_keras_serializable(package="keras_bayes")
class VOGNModel(WrapperModel):
    """A model whose training step hands VOGN per-example curvature.

    Each step: (1) the ordinary forward pass on the batch for the loss,
    metrics and non-trainable updates; (2) the per-example gradients of the
    compiled loss at the same weights (the current posterior sample),
    `squared_gradients_at`; (3) `optimizer.set_squared_gradients` with their
    mean square; (4) `optimizer.apply` with their mean.

    With trainable BatchNormalization layers (`batch_norm="deterministic"`,
    the VOGN paper's treatment): step (1) also records each BN layer's batch
    statistics and takes the minibatch gradient ĝ by the ordinary backward
    pass; step (2) holds the statistics fixed (see the module docstring) and
    gives ĥ only; and BN's γ and β are marked deterministic on the optimizer
    (`VOGN.mark_deterministic`: no noise, no prior).

    With an optimizer other than VOGN it runs Keras' own `train_step`.
    See the module docstring for what is supported.

    Args:
        inner: the `keras.Model` to train (one input, one output).
        batch_norm: `"deterministic"` (the default) or `"error"` (raise on
            a trainable BatchNormalization layer, as before this option).
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    wrapper_arguments = ("batch_norm",)

    def __init__(self, inner, batch_norm="deterministic", **kwargs):
        if batch_norm not in VOGN_MODEL_BATCH_NORM_CHOICES:
            raise ValueError(
                "`batch_norm` must be one of "
                f"{list(VOGN_MODEL_BATCH_NORM_CHOICES)}. Received: "
                f"batch_norm={batch_norm!r}")
        super().__init__(inner, **kwargs)
        self.batch_norm = batch_norm

    def _coupled_layers(self):
        layers = batch_coupled_layers(self)
        check_batch_norm(layers, "error" if self.batch_norm == "error"
                         else "frozen")
        return layers

    def _mark_deterministic(self, layers):
        inner = _unwrap(self.optimizer)
        variables = [v for layer in layers for v in layer.trainable_variables]
        mark = getattr(inner, "mark_deterministic", None)
        if variables and mark is not None:
            mark(var_list=variables)

    def _per_example_loss(self):
        loss = self.loss
        if isinstance(loss, (list, tuple, dict)):
            raise ValueError(
                "VOGNModel supports one compiled loss for a single output. "
                f"Received: loss={loss!r}")
        loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        if loss is None:
            raise ValueError("VOGNModel needs `compile(loss=...)`.")
        return loss

    def _check_data(self, sample_weight):
        if sample_weight is not None:
            raise ValueError(
                "VOGNModel does not support sample weights: the curvature "
                "is the plain mean of per-example squared gradients.")

    def train_step(self, *args, **kwargs):
        inner = _unwrap(self.optimizer)
        if not getattr(inner, "needs_per_example_gradients", False):
            return super().train_step(*args, **kwargs)
        layers = self._coupled_layers()
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_step(*args, layers=layers, **kwargs)
        return self._stateful_step(*args, layers=layers, **kwargs)

    def _loss_scaled(self, gradients):
        """The gradients of the scaled loss, as Keras' own training step
        hands `apply` (which divides by the scale again); ĥ stays unscaled.
        """
        scale = self.optimizer.scale_loss(1.0)
        if isinstance(scale, float) and scale == 1.0:
            return gradients
        return [g * ops.cast(scale, g.dtype) for g in gradients]

    def _batch_gradient(self, x, y, loss, layers):
        """(y_pred, ∇ mean_i ℓ_i with BN's statistics differentiated,
        the BN statistics) from one forward/backward pass on the batch."""
        variables = self.trainable_variables
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                with recorded_batch_statistics(layers) as statistics:
                    y_pred = self(x, training=True)
                value = loss(y, y_pred)
            grads = tape.gradient(value, variables,
                                  unconnected_gradients="zero")
            return y_pred, grads, statistics
        import torch

        with torch.enable_grad():
            with recorded_batch_statistics(layers) as statistics:
                y_pred = self(x, training=True)
            value = loss(y, y_pred)
        values = [v.value for v in variables]
        grads = torch.autograd.grad(value, values, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g
                 for g, v in zip(grads, values)]
        statistics = [[(mean.detach(), variance.detach())
                       for mean, variance in calls] for calls in statistics]
        return y_pred.detach(), grads, statistics

    def _stateful_step(self, data, layers=()):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_data(sample_weight)
        inner = _unwrap(self.optimizer)
        loss_fn = self._per_example_loss()
        no_grad = contextlib.nullcontext()
        if keras.backend.backend() == "torch":
            import torch

            no_grad = torch.no_grad()
        statistics = None
        if layers:
            y_pred, gradients, statistics = self._batch_gradient(
                x, y, loss_fn, layers)
        else:
            with no_grad:
                y_pred = self(x, training=True)
        with no_grad:
            # Private API (Keras 3.15): `_compute_loss`, `_loss_tracker`.
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                      sample_weight=None, training=True)
            self._loss_tracker.update_state(
                loss, sample_weight=ops.shape(y_pred)[0])
        trainable = [ops.convert_to_tensor(v)
                     for v in self.trainable_variables]
        non_trainable = [ops.convert_to_tensor(v)
                         for v in self.non_trainable_variables]
        _, mean_gradients, squared = squared_gradients_at(
            self, loss_fn, trainable, non_trainable, ops.convert_to_tensor(x),
            ops.convert_to_tensor(y), layers, statistics)
        if not layers:
            gradients = mean_gradients
        with no_grad:
            with inner.per_example_step():
                self._mark_deterministic(layers)
                inner.set_squared_gradients(squared,
                                            self.trainable_variables)
                self.optimizer.apply(self._loss_scaled(gradients),
                                     self.trainable_variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=None)

    def _jax_step(self, state, data, layers=()):
        import jax

        trainable, non_trainable, optimizer_values, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_data(sample_weight)
        loss_fn = self._per_example_loss()

        def batch_pass(trainable_values):
            with recorded_batch_statistics(layers) as statistics:
                loss, aux = self.compute_loss_and_updates(
                    trainable_values, non_trainable, metrics, x, y, None,
                    training=True, optimizer_variables=optimizer_values)
            # Differentiated: the compiled loss alone, as in the
            # per-example pass (layer losses are not part of VOGN's ĝ).
            return loss_fn(y, aux[1]), (aux, statistics)

        statistics = None
        if layers:
            (_, (aux, statistics)), gradients = jax.value_and_grad(
                batch_pass, has_aux=True)(trainable)
        else:
            _, (aux, _) = batch_pass(trainable)
        unscaled_loss, y_pred, new_non_trainable, metrics = aux
        _, mean_gradients, squared = squared_gradients_at(
            self, loss_fn, trainable, non_trainable, ops.convert_to_tensor(x),
            ops.convert_to_tensor(y), layers, statistics)
        if not layers:
            gradients = mean_gradients

        optimizer = self.optimizer
        inner = _unwrap(optimizer)
        mapping = list(zip(optimizer.variables, optimizer_values))
        mapping += list(zip(self.trainable_variables, trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._mark_deterministic(layers)
            inner.set_squared_gradients(squared, self.trainable_variables)
            gradients = self._loss_scaled(gradients)
        values = []
        for variable, old in zip(optimizer.variables, optimizer_values):
            value = scope.get_current_value(variable)
            values.append(old if value is None else value)
        with inner.per_example_step():
            trainable, optimizer_values = optimizer.stateless_apply(
                values, gradients, trainable)
        # Private API (Keras 3.15): `_update_metrics_variables`.
        logs, metrics = self._update_metrics_variables(
            metrics, unscaled_loss, x, y, y_pred, None)
        return logs, (trainable, new_non_trainable, optimizer_values,
                      metrics)


__all__ = ["VOGNModel", "per_example_squared_gradients"]
