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
per-example forward pass is vectorizable (Dense and activations everywhere;
Conv, pooling and normalisation over features such as `LayerNormalization`
on JAX and TensorFlow). Not supported, with a clear error:

* `BatchNormalization`: its training-mode output couples the examples of a
  batch, so per-example gradients through it are not defined by one example
  (use FRN, GroupNormalization or LayerNormalization);
* operations the backend cannot vectorize (the error names the backend's
  reason). On torch this includes Keras' convolutions in 3.15: they clone
  tensors in the channels-last memory format, which `torch.func.vmap` does
  not implement, so convolutional models need the JAX or TensorFlow backend.

Random layers (Dropout) see one random mask per step shared by all
examples of the per-example pass. Layer regularisation losses
(`kernel_regularizer`, `add_loss`) are not part of the per-example gradient;
use VOGN's `weight_decay` (the prior) instead.

Keras private API used by `VOGNModel` (Keras 3.15): `Trainer._loss_tracker`,
`Trainer._compute_loss`, `JAXTrainer._update_metrics_variables`,
`Layer._call_has_training_arg`.
"""

import contextlib

import keras
from keras import ops
from keras import tree

_BATCH_COUPLED = ("BatchNormalization", "SyncBatchNormalization")


def _check_vectorizable(model):
    layers = [model] + list(getattr(model, "_flatten_layers",
                                    lambda **k: [])(include_self=False))
    coupled = [layer.name for layer in layers
               if type(layer).__name__ in _BATCH_COUPLED]
    if coupled:
        raise ValueError(
            "Per-example gradients are not defined through "
            f"BatchNormalization layers {coupled}: in training mode they "
            "normalise over the whole batch, so one example's gradient "
            "depends on the others. Use keras_bayes.layers.FRN, "
            "keras.layers.GroupNormalization or LayerNormalization instead."
        )


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

    try:
        losses, grads = jax.vmap(jax.value_and_grad(single),
                                 in_axes=(None, 0, 0))(trainable, x, y)
    except Exception as error:  # noqa: BLE001 - re-raised with the cause
        raise _vectorization_error("jax", error) from error
    return losses, grads


def _torch_per_example(model, loss, trainable, non_trainable, x, y):
    import torch

    kwargs = _call_kwargs(model)

    def single(values, xi, yi):
        y_pred, _ = model.stateless_call(values, non_trainable,
                                         xi.unsqueeze(0), **kwargs)
        value = loss(yi.unsqueeze(0), y_pred)
        return value, value

    try:
        with torch.enable_grad():
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


def per_example_squared_gradients(model, x, y, loss, trainable_values=None,
                                  non_trainable_values=None):
    """Mean loss, mean gradient and mean squared gradient over examples.

    For the batch (x, y) with n examples and ℓ_i the loss of example i:

        loss      = (1/n) Σ ℓ_i
        gradients = (1/n) Σ ∇ℓ_i              (Keras' minibatch gradient)
        squared   = (1/n) Σ (∇ℓ_i)²            (elementwise; VOGN's ĥ)

    Each ∇ℓ_i is the gradient of `loss(y[i:i+1], model(x[i:i+1]))` with
    respect to the trainable variables, computed for all i at once by the
    backend's vectorizing map (jax.vmap, torch.func.vmap, tf.vectorized_map).

    Args:
        model: a built Keras model with one input and one output.
        x, y: the batch (tensors or arrays with a leading batch axis).
        loss: `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred) -> scalar` (the mean over its batch).
        trainable_values, non_trainable_values: values to evaluate at
            instead of the model's variables (same order as
            `model.trainable_variables` / `model.non_trainable_variables`).

    Returns:
        `(loss, gradients, squared_gradients)`: a scalar tensor and two
        lists of tensors shaped like the trainable variables.

    Raises:
        ValueError: the model contains BatchNormalization, or the backend
            cannot vectorize its forward pass over single examples.
    """
    _check_vectorizable(model)
    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    trainable = (
        [ops.convert_to_tensor(v) for v in model.trainable_variables]
        if trainable_values is None else list(trainable_values))
    non_trainable = (
        [ops.convert_to_tensor(v) for v in model.non_trainable_variables]
        if non_trainable_values is None else list(non_trainable_values))
    x = ops.convert_to_tensor(x)
    y = ops.convert_to_tensor(y)
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
    losses, grads = compute(model, loss, trainable, non_trainable, x, y)
    gradients = [ops.mean(g, axis=0) for g in grads]
    squared = [ops.mean(ops.square(g), axis=0) for g in grads]
    return ops.mean(losses), gradients, squared


# ----------------------------------------------------------------------
# The training step.

def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


@keras.saving.register_keras_serializable(package="keras_bayes")
class VOGNModel(keras.Model):
    """A model whose training step hands VOGN per-example curvature.

    Each step: (1) the ordinary forward pass on the batch for the loss,
    metrics and non-trainable updates; (2) the per-example gradients of the
    compiled loss at the same weights (the current posterior sample),
    `per_example_squared_gradients`; (3) `optimizer.set_squared_gradients`
    with their mean square; (4) `optimizer.apply` with their mean.

    With an optimizer other than VOGN it runs Keras' own `train_step`.
    See the module docstring for what is supported.

    Args:
        inner: the `keras.Model` to train (one input, one output).
        **kwargs: passed to `keras.Model` (e.g. `name`).
    """

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        if getattr(inner, "built", False):
            self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["inner"] = keras.saving.serialize_keras_object(self.inner)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects)
        return cls(inner, **config)

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
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_step(*args, **kwargs)
        return self._stateful_step(*args, **kwargs)

    def _stateful_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_data(sample_weight)
        inner = _unwrap(self.optimizer)
        grads_context = contextlib.nullcontext()
        if keras.backend.backend() == "torch":
            import torch

            grads_context = torch.no_grad()
        with grads_context:
            y_pred = self(x, training=True)
            # Private API (Keras 3.15): `_compute_loss`, `_loss_tracker`.
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                      sample_weight=None, training=True)
            self._loss_tracker.update_state(
                loss, sample_weight=ops.shape(y_pred)[0])
        _, gradients, squared = per_example_squared_gradients(
            self, x, y, self._per_example_loss())
        with grads_context:
            with inner.per_example_step():
                inner.set_squared_gradients(squared,
                                            self.trainable_variables)
                self.optimizer.apply(gradients, self.trainable_variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=None)

    def _jax_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_data(sample_weight)
        (loss, aux) = self.compute_loss_and_updates(
            trainable, non_trainable, metrics, x, y, None, training=True,
            optimizer_variables=optimizer_values)
        unscaled_loss, y_pred, new_non_trainable, metrics = aux
        _, gradients, squared = per_example_squared_gradients(
            self, x, y, self._per_example_loss(), trainable_values=trainable,
            non_trainable_values=non_trainable)

        optimizer = self.optimizer
        inner = _unwrap(optimizer)
        mapping = list(zip(optimizer.variables, optimizer_values))
        mapping += list(zip(self.trainable_variables, trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            inner.set_squared_gradients(squared, self.trainable_variables)
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
