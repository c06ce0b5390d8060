"""The contract between a training step and the optimizers that need more.

A Keras optimizer receives one mean minibatch gradient per step, never the
data. Two kinds of keras_bayes optimizer need more, and declare it by
subclassing one of the protocol classes below:

* `MultiPassOptimizer` (SAM, bSAM, SOBA with `mc_samples` > 1): several
  gradients on the same minibatch, at posterior samples, on sub-batches
  and/or at a point built from the first gradient. Trained by
  `keras_bayes.training.TwoPassModel`.
* `PerExampleOptimizer` (VOGN): the mean of the per-example squared
  gradients. Trained by `keras_bayes.training.VOGNModel`.

A training step recognises them with `isinstance` (through a
`keras.optimizers.LossScaleOptimizer` too: `inner_optimizer`) and talks to
them only through the methods below, so a new method that implements them
trains with no change to any step.

The multi-pass step, for `plan = optimizer.step_plan()`:

```
records = []
for j in range(plan.sub_batches):                 # bSAM's m-sharpness
    for k in range(plan.samples):                 # SOBA's mc_samples
        point = None if (j, k) == (0, 0)          # None: the variables
                else optimizer.draw_training_point(variables)
        grads = ∇ℓ̄(point) on sub-batch j          # scaled as the loss
        if plan.second_pass:
            second_point = optimizer.second_pass_point(unscale(grads),
                                                       variables)
            second_grads = ∇ℓ̄(second_point) on sub-batch j
        records.append(PassRecord(point, grads, second_point, second_grads))
with optimizer.two_pass_step():
    optimizer.apply(optimizer.combine_passes(records, context), variables)
```

The (0, 0) pass is the ordinary training pass: the logged loss, the
metrics and the non-trainable updates come from it, as in Keras.
`second_pass_point`, `draw_training_point` and `combine_passes` run inside
`two_pass_step()` as well, and may write the optimizer's variables (on JAX
the step carries those writes into its stateless state).

The per-example step (VOGN): the ordinary pass for loss and metrics, the
per-example gradients g_i of the compiled loss, then

```
with optimizer.per_example_step():
    optimizer.mark_deterministic(var_list=bn_variables)   # if any
    optimizer.set_squared_gradients(mean_i g_i², variables)
    optimizer.apply(mean_i g_i, variables)
```

This module imports only Keras and the standard library: optimizers
implement it without importing any training step.
"""

import contextlib
import dataclasses
from typing import Callable
from typing import List
from typing import Optional

import keras


def inner_optimizer(optimizer):
    """The optimizer a `keras.optimizers.LossScaleOptimizer` wraps, or
    `optimizer` itself."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def mean_gradients(gradient_lists):
    """The elementwise mean of several gradient lists (None stays None)."""
    out = []
    for grads in zip(*gradient_lists):
        present = [g for g in grads if g is not None]
        if not present:
            out.append(None)
            continue
        if len(grads) == 1:  # one pass: its gradients as they are
            out.append(present[0])
            continue
        total = present[0]
        for g in present[1:]:
            total = total + g
        out.append(total / float(len(grads)))
    return out


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """The passes a multi-pass optimizer asks of each training step.

    Attributes:
        sub_batches: the minibatch is cut into this many equal parts, each
            with its own passes (bSAM's `batch_split`, m-sharpness).
        samples: first passes per sub-batch, each at its own posterior
            sample (SOBA's `mc_samples`).
        second_pass: each first pass is followed by a second one at
            `second_pass_point` (SAM, bSAM).

    Example:

    >>> from keras_bayes.training import StepPlan
    >>> StepPlan(sub_batches=8, second_pass=True)   # bSAM, batch_split=8
    StepPlan(sub_batches=8, samples=1, second_pass=True)
    >>> StepPlan(samples=1).is_multi_pass   # Keras' own step does
    False
    >>> StepPlan(samples=2).is_multi_pass   # SOBA(mc_samples=2)
    True
    """

    sub_batches: int = 1
    samples: int = 1
    second_pass: bool = False

    @property
    def is_multi_pass(self):
        """False when Keras' own one-gradient step is all the plan needs."""
        return self.second_pass or self.sub_batches * self.samples > 1


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """The gradients a step took for one (sub-batch, sample).

    Attributes:
        point: the first-pass point, one tensor per trainable variable;
            None for the model's variables (the (0, 0) pass).
        grads: the first-pass gradients, of the scaled loss.
        second_point: the `second_pass_point`, or None without a second
            pass.
        second_grads: the gradients at `second_point` (scaled loss), or
            None.

    Example: a `combine_passes` that applies the mean of the gradients at
    w and at the look-ahead point, instead of the default (the second one
    alone):

    ```python
    import keras
    import numpy as np
    from keras import ops
    from keras_bayes.training import MultiPassOptimizer, StepPlan
    from keras_bayes.training import TwoPassModel

    class Extragradient(MultiPassOptimizer, keras.optimizers.SGD):
        # SGD on the gradient at the look-ahead point w − a·∇ℓ(w).

        def __init__(self, learning_rate, lookahead=0.1, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.lookahead = lookahead

        def step_plan(self):
            return StepPlan(second_pass=True)   # pass 2 at the point below

        def second_pass_point(self, gradients, trainable_variables):
            return [ops.convert_to_tensor(v) - self.lookahead * g
                    for g, v in zip(gradients, trainable_variables)]

        def combine_passes(self, records, context):
            # One PassRecord per (sub-batch, sample): here one.
            (record,) = records
            assert record.point is None       # pass 1 ran at the variables
            return [(g1 + g2) / 2 for g1, g2 in
                    zip(record.grads, record.second_grads)]

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    model = TwoPassModel(keras.Sequential([keras.Input((3,)),
                                           keras.layers.Dense(1)]))
    model.compile(optimizer=Extragradient(0.1), loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    ```
    """

    point: Optional[list]
    grads: list
    second_point: Optional[list] = None
    second_grads: Optional[list] = None


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What `combine_passes` may use besides the records.

    Attributes:
        variables: the model's trainable variables, in the order of every
            gradient list.
        unscale: a function mapping a gradient list of the scaled loss to
            one of the loss itself (`loss_scale_factor`, a
            `LossScaleOptimizer`'s scale); the identity without scaling.

    Example: a `combine_passes` that clips the gradient to norm 1. The
    norm is that of the loss itself (`unscale`), so the rule does not
    change under loss scaling (`mixed_float16`):

    ```python
    import keras
    import numpy as np
    from keras import ops
    from keras_bayes.training import MultiPassOptimizer, StepPlan
    from keras_bayes.training import TwoPassModel

    class Extragradient(MultiPassOptimizer, keras.optimizers.SGD):
        # SGD on the gradient at the look-ahead point w − a·∇ℓ(w).

        def __init__(self, learning_rate, lookahead=0.1, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.lookahead = lookahead

        def step_plan(self):
            return StepPlan(second_pass=True)   # pass 2 at the point below

        def second_pass_point(self, gradients, trainable_variables):
            return [ops.convert_to_tensor(v) - self.lookahead * g
                    for g, v in zip(gradients, trainable_variables)]

        def combine_passes(self, records, context):
            scaled = records[0].second_grads   # one per context.variables
            assert len(scaled) == len(context.variables)
            norm = ops.sqrt(sum(ops.sum(ops.square(g))
                                for g in context.unscale(scaled)))
            factor = ops.minimum(1.0, 1.0 / (norm + 1e-12))
            return [g * factor for g in scaled]

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    model = TwoPassModel(keras.Sequential([keras.Input((3,)),
                                           keras.layers.Dense(1)]))
    model.compile(optimizer=Extragradient(0.1), loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    ```
    """

    variables: List
    unscale: Callable[[list], list]


class _StepFlag:
    """A Python flag set while a training step of the right kind runs.

    It is set while the step is traced or run, so `apply` can refuse to run
    outside such a step instead of silently training something else.
    """

    _step_active = False

    @contextlib.contextmanager
    def _step_flag(self):
        previous = self._step_active
        self._step_active = True
        try:
            yield
        finally:
            self._step_active = previous


class MultiPassOptimizer(_StepFlag):
    """Mixin: an optimizer that needs several gradients per minibatch.

    Put it before the Keras optimizer class in the bases. A subclass
    implements `step_plan` and, as its plan requires,
    `draw_training_point`, `second_pass_point` and `combine_passes` (see
    the module docstring for the order in which the step calls them).
    `apply` raises a `ValueError` outside `two_pass_step()` whenever the
    plan needs more than one pass.

    Example: a new two-pass method, trained by `TwoPassModel` on every
    backend without a new training step:

    ```python
    import keras
    import numpy as np
    from keras import ops
    from keras_bayes.training import MultiPassOptimizer, StepPlan
    from keras_bayes.training import TwoPassModel

    class Extragradient(MultiPassOptimizer, keras.optimizers.SGD):
        # SGD on the gradient at the look-ahead point w − a·∇ℓ(w).

        def __init__(self, learning_rate, lookahead=0.1, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.lookahead = lookahead

        def step_plan(self):
            return StepPlan(second_pass=True)   # pass 2 at the point below

        def second_pass_point(self, gradients, trainable_variables):
            return [ops.convert_to_tensor(v) - self.lookahead * g
                    for g, v in zip(gradients, trainable_variables)]

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    model = TwoPassModel(keras.Sequential([keras.Input((3,)),
                                           keras.layers.Dense(1)]))
    model.compile(optimizer=Extragradient(0.1), loss="mse")
    history = model.fit(x, y, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    ```
    """

    def step_plan(self):
        """The `StepPlan` of the next step (a Python value, read while the
        step is traced)."""
        raise NotImplementedError

    def draw_training_point(self, trainable_variables):
        """The point of a further first pass (a fresh sample), one tensor
        per variable, or None for the variables themselves (the default,
        for deterministic methods)."""
        return None

    def second_pass_point(self, gradients, trainable_variables):
        """The point of the second pass, from the unscaled first-pass
        `gradients` (one per variable, None where there is none)."""
        raise NotImplementedError(
            f"{type(self).__name__}.step_plan() asks for a second pass but "
            "the optimizer does not implement `second_pass_point`.")

    def combine_passes(self, records, context):
        """The gradient list to `apply`, from the step's `PassRecord`s.

        The default is the mean of the second-pass gradients, or of the
        first-pass ones without a second pass. An optimizer may also store
        statistics of the passes in its variables here.
        """
        if records[0].second_grads is not None:
            return mean_gradients([r.second_grads for r in records])
        return mean_gradients([r.grads for r in records])

    def prepare_training(self, trainable_variables):
        """Called by `TwoPassModel.fit` as training begins, outside any
        traced function; the default does nothing.

        A posterior method whose first pass should run at a sample (bSAM)
        writes one into the variables here: at the start of a `fit` they
        hold the mean (the initial weights, or the mean written back by the
        previous `fit`).
        """
        return None

    def two_pass_step(self):
        """Context in which `apply` is allowed (entered by `TwoPassModel`).

        Enter it yourself only if you write your own multi-pass step.
        """
        return self._step_flag()

    def outside_step_message(self):
        """The error `apply` raises outside a multi-pass step."""
        return (
            f"{type(self).__name__} needs several gradients on the same "
            "minibatch, which a plain Keras model cannot provide. Wrap the "
            "model: `model = keras_bayes.training.TwoPassModel(model)`, "
            "then `model.compile(optimizer=...)` and `model.fit(...)`. "
            "(Inside a custom multi-pass training step, call `apply` "
            "within `optimizer.two_pass_step()`.)"
        )

    def apply(self, grads, trainable_variables=None):
        if self.step_plan().is_multi_pass and not self._step_active:
            raise ValueError(self.outside_step_message())
        return super().apply(grads, trainable_variables)


class PerExampleOptimizer(_StepFlag):
    """Mixin: an optimizer that needs per-example squared gradients.

    Put it before the Keras optimizer class in the bases. A subclass
    implements `set_squared_gradients` and `mark_deterministic`; `apply`
    raises a `ValueError` outside `per_example_step()`.

    Example: VOGN is one; `VOGNModel` computes what it needs, a plain
    model refuses it.

    ```python
    import keras
    import numpy as np
    import keras_bayes
    from keras_bayes.training import PerExampleOptimizer, VOGNModel

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def dense():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    optimizer = keras_bayes.optimizers.VOGN(0.05, ess=len(x))
    assert isinstance(optimizer, PerExampleOptimizer)
    plain = dense()
    plain.compile(optimizer, loss)
    try:
        plain.fit(x, y, verbose=0)
    except ValueError as error:
        print(error)   # "... Wrap the model: ... VOGNModel(model) ..."
    model = VOGNModel(dense())
    model.compile(keras_bayes.optimizers.VOGN(0.05, ess=len(x)), loss)
    model.fit(x, y, epochs=1, verbose=0)
    ```
    """

    def set_squared_gradients(self, squared_gradients, trainable_variables):
        """Store ĥ = mean_i g_i² (one tensor per variable) for the next
        `apply`."""
        raise NotImplementedError

    def mark_deterministic(self, var_list=None, var_names=None):
        """Keep these variables point estimates (the step calls it for the
        γ, β of BatchNormalization layers, whose per-example gradients
        depend on the batch)."""
        raise NotImplementedError

    def per_example_step(self):
        """Context in which `apply` is allowed (entered by `VOGNModel`)."""
        return self._step_flag()

    def outside_step_message(self):
        """The error `apply` raises outside a per-example step."""
        return (
            f"{type(self).__name__} needs per-example squared gradients, "
            "which a plain Keras model does not compute. Wrap the model: "
            "`model = keras_bayes.per_example.VOGNModel(model)`, then "
            "`model.compile(optimizer=..., loss=...)` and `model.fit(...)`."
            " (In a custom training step, call `set_squared_gradients` and "
            "then `apply` within `optimizer.per_example_step()`.)"
        )

    def apply(self, grads, trainable_variables=None):
        if not self._step_active:
            raise ValueError(self.outside_step_message())
        return super().apply(grads, trainable_variables)


__all__ = [
    "MultiPassOptimizer",
    "PassRecord",
    "PerExampleOptimizer",
    "StepContext",
    "StepPlan",
    "inner_optimizer",
    "mean_gradients",
]
