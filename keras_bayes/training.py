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

from keras_bayes._validation import check_choice

BN_UPDATE_CHOICES = ("first", "both")


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def _is_two_pass(optimizer):
    return bool(getattr(_unwrap(optimizer), "is_two_pass_optimizer", False))


def _needs_passes(optimizer):
    """A two-pass optimizer, or one asking for several samples per step."""
    return _is_two_pass(optimizer) or (
        int(getattr(_unwrap(optimizer), "mc_samples", 1)) > 1)


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


def _tf_replicas_in_sync():
    """Replicas of the tf.distribute strategy whose replica context we are
    in; 1 outside a strategy or in cross-replica context."""
    import tensorflow as tf

    if (not tf.distribute.has_strategy()
            or tf.distribute.in_cross_replica_context()):
        return 1
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _tf_all_reduce_sum(grads):
    """Sum a gradient list across replicas (None entries stay None)."""
    import tensorflow as tf

    grads = list(grads)
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present:
        return grads
    reduced = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    for i, value in zip(present, reduced):
        grads[i] = value
    return grads


def torch_loss_backward(model, x, y, sample_weight):
    """The first half of Keras' torch `train_step`: forward, compiled loss
    (tracked), scaled backward. Returns (y_pred, gradients).

    Private API (Keras 3.15): `_call_has_training_arg`, `_compute_loss`,
    `_loss_tracker`.
    """
    call_kwargs = {"training": True} if model._call_has_training_arg else {}
    y_pred = model(x, **call_kwargs)
    model.zero_grad()
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred,
                               sample_weight=sample_weight, training=True)
    model._loss_tracker.update_state(loss, sample_weight=_batch_size(x))
    model.optimizer.scale_loss(loss).backward()
    return y_pred, [v.value.grad for v in model.trainable_variables]


class WrapperModel(keras.Model):
    """A model that trains `inner` with its own `train_step`.

    The plumbing shared by keras_bayes' training wrappers (`TwoPassModel`,
    `keras_bayes.per_example.VOGNModel`): `call` delegates to the wrapped
    model, and the config holds it, so saving the wrapper saves the wrapped
    model, the optimizer and its state. A subclass lists its own
    constructor arguments in `wrapper_arguments` (stored as attributes of
    the same names) and overrides `train_step`.
    """

    wrapper_arguments = ()

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
        for name in self.wrapper_arguments:
            config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects)
        return cls(inner, **config)


@keras.saving.register_keras_serializable(package="keras_bayes")
class TwoPassModel(WrapperModel):
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

    wrapper_arguments = ("bn_update",)

    def __init__(self, inner, bn_update="first", **kwargs):
        check_choice("bn_update", bn_update, BN_UPDATE_CHOICES)
        super().__init__(inner, **kwargs)
        self.bn_update = bn_update

    # ------------------------------------------------------------------
    # The training step.

    def train_step(self, *args, **kwargs):
        if not _needs_passes(self.optimizer):
            return super().train_step(*args, **kwargs)
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_multi_pass_step(*args, **kwargs)
        if backend == "tensorflow":
            return self._tf_multi_pass_step(*args, **kwargs)
        if backend == "torch":
            return self._torch_multi_pass_step(*args, **kwargs)
        raise NotImplementedError(
            f"TwoPassModel does not support the {backend!r} backend."
        )

    def _call_kwargs(self):
        # Private API (Keras 3.15): `_call_has_training_arg`.
        return {"training": True} if self._call_has_training_arg else {}

    def _sub_batches(self, x, y, sample_weight):
        """The minibatch cut into `batch_split` equal parts (m-sharpness)."""
        parts = int(getattr(_unwrap(self.optimizer), "batch_split", 1))
        if parts == 1:
            return [(x, y, sample_weight)]
        size = _batch_size(x)
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

    def _collect_gradients(self, first_grads, gradient_at, sub_batches):
        """Every pass after the first; returns the gradients to apply.

        For each sub-batch j and each of the optimizer's samples k: the
        first-pass point is the model's variables for (0, 0) and a fresh
        posterior sample otherwise (`draw_training_point`; None, i.e. the
        variables, for a deterministic optimizer such as SAM); a two-pass
        optimizer adds its second point. `combine_passes` turns the records
        into the gradient handed to `apply`.
        """
        inner = _unwrap(self.optimizer)
        two_pass = _is_two_pass(self.optimizer)
        samples = int(getattr(inner, "mc_samples", 1))
        draw = getattr(inner, "draw_training_point", lambda variables: None)
        variables = self.trainable_variables

        def unscale(grads):
            return _unscale_gradients(self.optimizer, grads)

        records = []
        for j, batch in enumerate(sub_batches):
            for k in range(samples):
                if j == 0 and k == 0:
                    point, grads = None, list(first_grads)
                else:
                    point = draw(variables)
                    grads = list(gradient_at(point, batch))
                record = {"point": point, "grads": grads}
                if two_pass:
                    second = inner.second_pass_point(unscale(grads),
                                                     variables)
                    record["second_point"] = second
                    record["second_grads"] = list(gradient_at(second, batch))
                records.append(record)
        return inner.combine_passes(records, unscale, variables)

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

    def _apply(self, grads):
        with _unwrap(self.optimizer).two_pass_step():
            self.optimizer.apply(grads, self.trainable_variables)

    # -- JAX -------------------------------------------------------------

    def _jax_multi_pass_step(self, state, data):
        import jax

        (trainable, non_trainable, optimizer_values, metrics) = state
        non_trainable_before = non_trainable
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batches = self._sub_batches(x, y, sample_weight)
        x0, y0, w0 = sub_batches[0]
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates,
                                     has_aux=True)
        (_, aux), grads = grad_fn(
            trainable, non_trainable, metrics, x0, y0, w0,
            training=True, optimizer_variables=optimizer_values,
        )
        unscaled_loss, y_pred, non_trainable, metrics = aux
        carried = {"non_trainable": non_trainable}

        def gradient_at(point, batch):
            start = (carried["non_trainable"] if self.bn_update == "both"
                     else non_trainable_before)
            (_, aux2), point_grads = grad_fn(
                trainable if point is None else point, start, metrics,
                *batch, training=True, optimizer_variables=optimizer_values,
            )
            if self.bn_update == "both":
                carried["non_trainable"] = aux2[2]
            return point_grads

        optimizer = self.optimizer
        inner = _unwrap(optimizer)
        mapping = list(zip(optimizer.variables, optimizer_values))
        mapping += list(zip(self.trainable_variables, trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            with inner.two_pass_step():
                grads = self._collect_gradients(grads, gradient_at,
                                                sub_batches)
        new_values = []
        for variable, old in zip(optimizer.variables, optimizer_values):
            value = scope.get_current_value(variable)
            new_values.append(old if value is None else value)
        optimizer_values = new_values
        if self.bn_update == "both":
            non_trainable = carried["non_trainable"]

        with inner.two_pass_step():
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, trainable)

        # Private API (Keras 3.15): `_update_metrics_variables`.
        logs, metrics = self._update_metrics_variables(
            metrics, unscaled_loss, x0, y0, y_pred, w0)
        return logs, (trainable, non_trainable, optimizer_values, metrics)

    # -- TensorFlow ------------------------------------------------------

    def _tf_multi_pass_step(self, data):
        import tensorflow as tf
        from keras.src.losses import loss as loss_module

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batches = self._sub_batches(x, y, sample_weight)
        x0, y0, w0 = sub_batches[0]
        non_trainable_before = [
            tf.identity(v.value) for v in self.non_trainable_variables
        ]
        with tf.GradientTape() as tape:
            y_pred = self(x0, **self._call_kwargs())
            loss = self._compute_loss(x=x0, y=y0, y_pred=y_pred,
                                      sample_weight=w0, training=True)
            # Private API (Keras 3.15): `_loss_tracker`,
            # `unscale_loss_for_distribution`.
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss),
                sample_weight=_batch_size(x0),
            )
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        metrics = [tf.identity(v.value) for v in self.metrics_variables]

        def gradient_at(point, batch):
            if point is None:
                point = [tf.identity(v.value) for v in variables]
            point = [tf.convert_to_tensor(p) for p in point]
            if self.bn_update == "both":
                start = [tf.identity(v.value)
                         for v in self.non_trainable_variables]
            else:
                start = non_trainable_before
            with tf.GradientTape() as tape2:
                tape2.watch(point)
                loss2, non_trainable = self._second_pass_loss(
                    point, start, metrics, *batch)
            if self.bn_update == "both":
                for variable, value in zip(self.non_trainable_variables,
                                           non_trainable):
                    variable.assign(value)
            return tape2.gradient(loss2, point)

        replicas = _tf_replicas_in_sync()
        if replicas > 1:
            # Under a tf.distribute strategy every gradient of this step is
            # the replica's share of the global-batch gradient (the loss is
            # divided by the number of replicas). Sum them across replicas
            # before they reach the optimizer, so that the perturbation,
            # the fresh samples and the slot statistics are those of the
            # global batch, identical on every replica (the optimizer
            # writes its slots in replica context, one copy per replica).
            grads = _tf_all_reduce_sum(grads)
            local_gradient_at = gradient_at

            def gradient_at(point, batch):
                return _tf_all_reduce_sum(local_gradient_at(point, batch))

        with _unwrap(self.optimizer).two_pass_step():
            grads = self._collect_gradients(grads, gradient_at, sub_batches)
            if replicas > 1:
                # `apply_gradients` sums the replicas' gradients again.
                grads = [None if g is None else g / float(replicas)
                         for g in grads]
            self.optimizer.apply_gradients(zip(grads, variables))
        return self.compute_metrics(x0, y0, y_pred, sample_weight=w0)

    # -- torch -----------------------------------------------------------

    # Set by `keras_bayes.distributed.train_step` around a data-parallel
    # step: a function that averages a gradient list over the processes.
    _gradient_reducer = None

    def _torch_gradient_reducer(self):
        """The all-reduce of a data-parallel step, None on one process.

        Under torch.distributed with several processes and no reducer, the
        multi-pass step would build each process's perturbation from its
        local gradient and the replicas would silently drift apart (the
        second pass uses `torch.autograd.grad`, which no DDP hook sees).
        """
        reducer = self._gradient_reducer
        if reducer is not None:
            return reducer
        import torch.distributed as dist

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
        return None

    def _torch_multi_pass_step(self, data):
        import torch

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        sub_batches = self._sub_batches(x, y, sample_weight)
        x0, y0, w0 = sub_batches[0]
        non_trainable_before = [
            v.value.detach().clone() for v in self.non_trainable_variables
        ]
        y_pred, grads = torch_loss_backward(self, x0, y0, w0)
        variables = self.trainable_variables
        metrics = [v.value.detach().clone() for v in self.metrics_variables]
        reduce = self._torch_gradient_reducer()
        if reduce is not None:
            # Data-parallel (`keras_bayes.distributed`): every gradient of
            # the step is averaged over the processes before the optimizer
            # sees it, so the perturbation and the curvature statistics are
            # those of the global batch and identical on every process.
            grads = reduce(grads)

        def gradient_at(point, batch):
            if point is None:
                point = [v.value for v in variables]
            point = [p.detach().clone().requires_grad_(True) for p in point]
            if self.bn_update == "both":
                start = [v.value.detach().clone()
                         for v in self.non_trainable_variables]
            else:
                start = non_trainable_before
            with torch.enable_grad():
                loss2, non_trainable = self._second_pass_loss(
                    point, start, metrics, *batch)
            point_grads = torch.autograd.grad(loss2, point,
                                              allow_unused=True)
            if self.bn_update == "both":
                for variable, value in zip(self.non_trainable_variables,
                                           non_trainable):
                    variable.assign(value)
            point_grads = list(point_grads)
            return point_grads if reduce is None else reduce(point_grads)

        with torch.no_grad():
            with _unwrap(self.optimizer).two_pass_step():
                grads = self._collect_gradients(grads, gradient_at,
                                                sub_batches)
            self._apply(grads)
        return self.compute_metrics(x0, y0, y_pred, sample_weight=w0)


__all__ = ["TwoPassModel"]
