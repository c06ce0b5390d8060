"""A training step with two gradients on the same minibatch (SAM, bSAM).

A Keras optimizer receives gradients only, never the data, so it cannot take
a second gradient on the same minibatch. `TwoPassModel` wraps any Keras model
and overrides `train_step`, once per backend:

1. pass 1: the ordinary training pass at the model's variables, g1. Loss
   and metrics are logged from this pass, as Keras does;
2. `point = optimizer.second_pass_point(g1, trainable_variables)`, one
   tensor per trainable variable (on JAX inside a `StatelessScope` over the
   optimizer's and the model's variables; the optimizer's new slot values
   are carried on);
3. pass 2: g2 = ∇ℓ̄(point) on the same minibatch through `stateless_call`
   and `stateless_compute_loss`: no variable is written, so nothing has to
   be restored. Metric updates of pass 2 are discarded;
4. `optimizer.apply(g2)` (`stateless_apply` on JAX).

With an optimizer that is not a two-pass optimizer (`Adam`, `SOBA`, ...)
the wrapper runs Keras' own `train_step`.

Keras private API used here (present in Keras 3.15, the minimum version):
`Trainer._compute_loss`, `Trainer._loss_tracker`,
`Layer._call_has_training_arg`, `Layer._losses_override`,
`JAXTrainer._update_metrics_variables` and
`keras.src.losses.loss.unscale_loss_for_distribution`.
"""

import keras
from keras import ops
from keras import tree

from keras_bayes.optimizers.base import check_choice

BN_UPDATE_CHOICES = ("first", "both")


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def _is_two_pass(optimizer):
    return bool(getattr(_unwrap(optimizer), "is_two_pass_optimizer", False))


def _batch_size(x):
    return ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]


def _unscale_gradients(optimizer, grads):
    """g1 is taken from the scaled loss; the perturbation needs it unscaled."""
    scale = None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # As `LossScaleOptimizer.scale_loss`: before it is built (TF builds
        # it in its first `apply`), the loss was scaled by `initial_scale`.
        scale = (
            ops.convert_to_tensor(optimizer.dynamic_scale)
            if optimizer.built else optimizer.initial_scale
        )
    inner = _unwrap(optimizer)
    if inner.loss_scale_factor is not None:
        factor = inner.loss_scale_factor
        scale = factor if scale is None else scale * factor
    if scale is None:
        return list(grads)
    return [None if g is None else g / ops.cast(scale, g.dtype)
            for g in grads]


@keras.saving.register_keras_serializable(package="keras_bayes")
class TwoPassModel(keras.Model):
    """A model whose training step takes two gradients on the same batch.

    ```
    model = keras_bayes.training.TwoPassModel(model)
    model.compile(optimizer=keras_bayes.optimizers.BSAM(0.1, ess=len(x)),
                  loss=..., metrics=...)
    model.fit(x, y)
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

    def __init__(self, inner, bn_update="first", **kwargs):
        check_choice("bn_update", bn_update, BN_UPDATE_CHOICES)
        super().__init__(**kwargs)
        self.inner = inner
        self.bn_update = bn_update
        if getattr(inner, "built", False):
            self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "inner": keras.saving.serialize_keras_object(self.inner),
            "bn_update": self.bn_update,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects)
        return cls(inner, **config)

    # ------------------------------------------------------------------
    # The training step.

    def train_step(self, *args, **kwargs):
        if not _is_two_pass(self.optimizer):
            return super().train_step(*args, **kwargs)
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_two_pass_step(*args, **kwargs)
        if backend == "tensorflow":
            return self._tf_two_pass_step(*args, **kwargs)
        if backend == "torch":
            return self._torch_two_pass_step(*args, **kwargs)
        raise NotImplementedError(
            f"TwoPassModel does not support the {backend!r} backend."
        )

    def _call_kwargs(self):
        # Private API (Keras 3.15): `_call_has_training_arg`.
        return {"training": True} if self._call_has_training_arg else {}

    def _second_pass_loss(self, point, non_trainable, metrics, x, y,
                          sample_weight):
        """Loss at `point` (scaled as pass 1) and the new non-trainables."""
        y_pred, non_trainable, losses = self.stateless_call(
            point, non_trainable, x, return_losses=True,
            **self._call_kwargs(),
        )
        if losses:
            # Private API (Keras 3.15): `_losses_override`, as in
            # `JAXTrainer.compute_loss_and_updates`.
            self._losses_override.clear()
            self._losses_override = losses
        loss, (_, non_trainable, _) = self.stateless_compute_loss(
            point, non_trainable, metrics, x=x, y=y, y_pred=y_pred,
            sample_weight=sample_weight, training=True,
        )
        if losses:
            self._losses_override.clear()
        return self.optimizer.scale_loss(loss), non_trainable

    def _point(self, grads):
        inner = _unwrap(self.optimizer)
        grads = _unscale_gradients(self.optimizer, grads)
        with inner.two_pass_step():
            return inner.second_pass_point(grads, self.trainable_variables)

    def _apply(self, grads):
        with _unwrap(self.optimizer).two_pass_step():
            self.optimizer.apply(grads, self.trainable_variables)

    # -- JAX -------------------------------------------------------------

    def _jax_two_pass_step(self, state, data):
        import jax

        (trainable, non_trainable, optimizer_values, metrics) = state
        non_trainable_before = non_trainable
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates,
                                     has_aux=True)
        (_, aux), grads = grad_fn(
            trainable, non_trainable, metrics, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_values,
        )
        unscaled_loss, y_pred, non_trainable, metrics = aux

        optimizer = self.optimizer
        inner = _unwrap(optimizer)
        mapping = list(zip(optimizer.variables, optimizer_values))
        mapping += list(zip(self.trainable_variables, trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            grads = _unscale_gradients(optimizer, grads)
            with inner.two_pass_step():
                point = inner.second_pass_point(grads,
                                                self.trainable_variables)
        new_values = []
        for variable, old in zip(optimizer.variables, optimizer_values):
            value = scope.get_current_value(variable)
            new_values.append(old if value is None else value)
        optimizer_values = new_values

        start = non_trainable if self.bn_update == "both" else (
            non_trainable_before)
        (_, aux2), grads2 = grad_fn(
            point, start, metrics, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_values,
        )
        if self.bn_update == "both":
            non_trainable = aux2[2]

        with inner.two_pass_step():
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads2, trainable)

        # Private API (Keras 3.15): `_update_metrics_variables`.
        logs, metrics = self._update_metrics_variables(
            metrics, unscaled_loss, x, y, y_pred, sample_weight)
        return logs, (trainable, non_trainable, optimizer_values, metrics)

    # -- TensorFlow ------------------------------------------------------

    def _tf_two_pass_step(self, data):
        import tensorflow as tf
        from keras.src.losses import loss as loss_module

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        non_trainable_before = [
            tf.identity(v.value) for v in self.non_trainable_variables
        ]
        with tf.GradientTape() as tape:
            y_pred = self(x, **self._call_kwargs())
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                      sample_weight=sample_weight,
                                      training=True)
            # Private API (Keras 3.15): `_loss_tracker`,
            # `unscale_loss_for_distribution`.
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss),
                sample_weight=_batch_size(x),
            )
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        point = [tf.convert_to_tensor(p) for p in self._point(grads)]

        if self.bn_update == "both":
            start = [tf.identity(v.value)
                     for v in self.non_trainable_variables]
        else:
            start = non_trainable_before
        metrics = [tf.identity(v.value) for v in self.metrics_variables]
        with tf.GradientTape() as tape2:
            tape2.watch(point)
            loss2, non_trainable = self._second_pass_loss(
                point, start, metrics, x, y, sample_weight)
        grads2 = tape2.gradient(loss2, point)
        if self.bn_update == "both":
            for variable, value in zip(self.non_trainable_variables,
                                       non_trainable):
                variable.assign(value)
        self._apply_tf(grads2, variables)
        return self.compute_metrics(x, y, y_pred,
                                    sample_weight=sample_weight)

    def _apply_tf(self, grads, variables):
        with _unwrap(self.optimizer).two_pass_step():
            self.optimizer.apply_gradients(zip(grads, variables))

    # -- torch -----------------------------------------------------------

    def _torch_two_pass_step(self, data):
        import torch

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        non_trainable_before = [
            v.value.detach().clone() for v in self.non_trainable_variables
        ]
        y_pred = self(x, **self._call_kwargs())
        self.zero_grad()
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred,
                                  sample_weight=sample_weight, training=True)
        self._loss_tracker.update_state(loss, sample_weight=_batch_size(x))
        loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        loss.backward()
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            point = self._point(grads)
        point = [p.detach().clone().requires_grad_(True) for p in point]

        if self.bn_update == "both":
            start = [v.value.detach().clone()
                     for v in self.non_trainable_variables]
        else:
            start = non_trainable_before
        metrics = [v.value.detach().clone() for v in self.metrics_variables]
        with torch.enable_grad():
            loss2, non_trainable = self._second_pass_loss(
                point, start, metrics, x, y, sample_weight)
        grads2 = list(torch.autograd.grad(loss2, point, allow_unused=True))
        with torch.no_grad():
            if self.bn_update == "both":
                for variable, value in zip(self.non_trainable_variables,
                                           non_trainable):
                    variable.assign(value)
            self._apply(grads2)
        return self.compute_metrics(x, y, y_pred,
                                    sample_weight=sample_weight)


__all__ = ["TwoPassModel"]
