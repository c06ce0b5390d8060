"""Continual-learning baselines and the runner that trains any method.

The library (`keras_bayes.continual`) holds the task sequences and the
metrics; this module holds the experiment around them:

- the baselines: `FineTune` (Adam), `L2Anchor` (Adam plus an L2 pull to the
  previous task's weights) and `OnlineEWC` (Adam plus a pull weighted by the
  diagonal empirical Fisher, `empirical_fisher`), both pulls through
  `AnchoredAdam`; and `BayesianPrior`, any keras_bayes optimizer with or
  without the previous task's posterior as its prior;
- `run_sequence`, which trains one of them task after task and records the
  accuracy matrices in a `ContinualResult`.

`benchmarks/continual.py` runs them all and writes the table of
`docs/continual.md`; `tutorials/06_continual_learning.py` tells the story.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_bayes._keras_compat import optimizer_variables_built_for
from keras_bayes._keras_compat import variable_index
from keras_bayes.continual import SCENARIOS
from keras_bayes.continual import accuracy_from_logits
from keras_bayes.continual import average_accuracy
from keras_bayes.continual import backward_transfer
from keras_bayes.continual import forgetting
from keras_bayes.optimizers.base import check_choice
from keras_bayes.optimizers.base import check_number
from keras_bayes.optimizers.base import check_positive_integer
from keras_bayes.per_example import per_example_squared_gradients

# ----------------------------------------------------------------------
# A quadratic pull to the previous weights.

class AnchoredAdam(keras.optimizers.Adam):
    """Adam on the loss plus ½·Σ precision·(θ − anchor)², per weight.

    The penalty's gradient precision·(θ − anchor) is added to each gradient
    before the Adam step, which is the same as adding the penalty to the
    mean training loss. With a constant precision it is the L2 baseline,
    with strength × Fisher it is (online) EWC.

    Args:
        anchors: list of arrays, one per trainable variable, in the order of
            `model.trainable_variables`.
        precisions: list of arrays of the same shapes (or floats).
        learning_rate, **kwargs: as for `keras.optimizers.Adam`.
    """

    def __init__(self, anchors, precisions, learning_rate=1e-3, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if len(anchors) != len(precisions):
            raise ValueError(
                "`anchors` and `precisions` need one entry per variable. "
                f"Received {len(anchors)} and {len(precisions)}."
            )
        self._anchor_values = [np.asarray(a, "float32") for a in anchors]
        self._precision_values = [
            np.broadcast_to(np.asarray(p, "float32"), a.shape).copy()
            for p, a in zip(precisions, self._anchor_values)]

    def build(self, var_list):
        if self.built:
            return
        if len(var_list) != len(self._anchor_values):
            raise ValueError(
                f"AnchoredAdam has {len(self._anchor_values)} anchors but is "
                f"built for {len(var_list)} variables."
            )
        super().build(var_list)
        self._anchors, self._anchor_precisions = [], []
        for variable, anchor, precision in zip(
                var_list, self._anchor_values, self._precision_values):
            if tuple(variable.shape) != anchor.shape:
                raise ValueError(
                    f"Anchor of shape {anchor.shape} for variable "
                    f"'{variable.path}' of shape {tuple(variable.shape)}."
                )
            for store, name, value in (
                    (self._anchors, "anchor", anchor),
                    (self._anchor_precisions, "anchor_precision", precision)):
                store.append(self.add_variable_from_reference(
                    variable, name=name,
                    initializer=lambda shape, dtype, value=value:
                    ops.cast(ops.convert_to_tensor(value), dtype)))

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = optimizer_variables_built_for(self)
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        pulled = []
        for gradient, variable in zip(grads, trainable_variables):
            if gradient is None:
                pulled.append(None)
                continue
            index = variable_index(self, variable)
            gradient = ops.convert_to_tensor(gradient)
            pulled.append(gradient + ops.cast(
                self._anchor_precisions[index]
                * (ops.convert_to_tensor(variable) - self._anchors[index]),
                gradient.dtype))
        return super().apply(pulled, trainable_variables)


def empirical_fisher(model, x, y, loss, num_examples=200, seed=0,
                     batch_size=None):
    """The diagonal empirical Fisher at the model's weights,

        F = (1/n) Σ_i (∇ℓ_i)²,

    the mean of the per-example squared gradients of `loss` over `n =
    num_examples` examples of (x, y) drawn without replacement.

    The squares come from `keras_bayes.per_example.
    per_example_squared_gradients` (vectorized over the examples on every
    backend), in chunks of `batch_size` examples (all at once by default).
    Neither the weights nor the model's compiled state change.

    Returns:
        A list of NumPy arrays shaped like `model.trainable_variables`.
    """
    num_examples = min(check_positive_integer("num_examples", num_examples),
                       len(x))
    chosen = np.random.default_rng(seed).choice(len(x), num_examples,
                                                replace=False)
    x, y = np.asarray(x)[chosen], np.asarray(y)[chosen]
    chunk = num_examples if batch_size is None else check_positive_integer(
        "batch_size", batch_size)
    sums = None
    for start in range(0, num_examples, chunk):
        rows = slice(start, start + chunk)
        _, _, squared = per_example_squared_gradients(model, x[rows],
                                                      y[rows], loss)
        count = len(x[rows])
        chunk_sums = [ops.convert_to_numpy(s) * count for s in squared]
        sums = chunk_sums if sums is None else [
            total + part for total, part in zip(sums, chunk_sums)]
    return [total / num_examples for total in sums]


# ----------------------------------------------------------------------
# Strategies: how each method trains task after task.

class Strategy:
    """How to train task after task. Subclasses choose the optimizer."""

    name = "strategy"

    def optimizer(self, task_index, task, model):
        raise NotImplementedError

    def after_task(self, task_index, task, model, optimizer, loss):
        """Called after training on a task (the model holds its weights)."""


class FineTune(Strategy):
    """Plain fine-tuning: a fresh Adam on each task, no memory."""

    name = "finetune"

    def __init__(self, learning_rate=1e-3):
        self.learning_rate = learning_rate

    def optimizer(self, task_index, task, model):
        return keras.optimizers.Adam(self.learning_rate)


class L2Anchor(Strategy):
    """Adam with ½·strength·‖θ − θ_prev‖² to the previous task's weights."""

    name = "l2"

    def __init__(self, strength=1.0, learning_rate=1e-3):
        self.strength = check_number("strength", strength, low=0.0)
        self.learning_rate = learning_rate
        self._anchors = None

    def optimizer(self, task_index, task, model):
        if self._anchors is None:
            return keras.optimizers.Adam(self.learning_rate)
        return AnchoredAdam(self._anchors,
                            [self.strength] * len(self._anchors),
                            learning_rate=self.learning_rate)

    def after_task(self, task_index, task, model, optimizer, loss):
        self._anchors = [ops.convert_to_numpy(v)
                         for v in model.trainable_variables]


class OnlineEWC(Strategy):
    """Online EWC (Schwarz et al., 2018) with the diagonal empirical Fisher.

    After task t: F ← decay·F + F_t (F_t the mean per-example squared
    gradient on task t's training data); the next task is trained with Adam
    on ℓ̄ + ½·strength·Σ F·(θ − θ_t)².
    """

    name = "ewc"

    def __init__(self, strength=100.0, decay=1.0, learning_rate=1e-3,
                 fisher_examples=200):
        self.strength = check_number("strength", strength, low=0.0)
        self.decay = check_number("decay", decay, low=0.0, high=1.0)
        self.learning_rate = learning_rate
        self.fisher_examples = fisher_examples
        self._anchors = None
        self._fisher = None

    def optimizer(self, task_index, task, model):
        if self._anchors is None:
            return keras.optimizers.Adam(self.learning_rate)
        return AnchoredAdam(self._anchors,
                            [self.strength * f for f in self._fisher],
                            learning_rate=self.learning_rate)

    def after_task(self, task_index, task, model, optimizer, loss):
        self._anchors = [ops.convert_to_numpy(v)
                         for v in model.trainable_variables]
        fisher = empirical_fisher(model, task.x_train, task.y_train, loss,
                                  num_examples=self.fisher_examples,
                                  seed=task_index)
        if self._fisher is None:
            self._fisher = fisher
        else:
            self._fisher = [self.decay * old + new
                            for old, new in zip(self._fisher, fisher)]


class BayesianPrior(Strategy):
    """A keras_bayes optimizer whose prior is the previous task's posterior.

    Args:
        make_optimizer: callable `(task, prior) -> optimizer`, e.g.
            `lambda task, prior: SOBA(0.1, ess=len(task.x_train),
            prior=prior)`. `prior` is None on the first task.
        use_prior: bool. False trains every task from the previous weights
            with the default prior: the same optimizer without memory, the
            fair fine-tuning control. Defaults to True.
        prior_strength: float > 0, τ, passed on as `prior_strength`.
    """

    name = "bayes-prior"

    def __init__(self, make_optimizer, use_prior=True, prior_strength=1.0):
        self.make_optimizer = make_optimizer
        self.use_prior = bool(use_prior)
        self.prior_strength = check_number("prior_strength", prior_strength,
                                           low=0.0, low_open=True)
        self._prior = None
        if not use_prior:
            self.name = "bayes-no-prior"

    def optimizer(self, task_index, task, model):
        prior = self._prior.tempered(self.prior_strength) if (
            self._prior is not None) else None
        return self.make_optimizer(task, prior)

    def after_task(self, task_index, task, model, optimizer, loss):
        if self.use_prior:
            self._prior = optimizer.posterior()


# ----------------------------------------------------------------------
# The runner.

@dataclasses.dataclass
class ContinualResult:
    """Accuracy matrices and the summary metrics of one run."""

    strategy: str
    tasks: list
    matrices: dict  # scenario -> (T, T) array

    def summary(self, scenario="task"):
        matrix = self.matrices[scenario]
        return {
            "average_accuracy": float(average_accuracy(matrix)[-1]),
            "forgetting": forgetting(matrix),
            "backward_transfer": backward_transfer(matrix),
            "first_task_final": float(matrix[-1, 0]),
        }


def run_sequence(strategy, tasks, build_model, epochs=5, batch_size=32,
                 scenarios=SCENARIOS, seed=0, loss=None, verbose=0):
    """Train `build_model()` on `tasks` in order with `strategy`.

    After each task the model is evaluated on every task (at the posterior
    mean for keras_bayes optimizers, which write it into the model at the
    end of `fit`).

    Args:
        strategy: a `Strategy` (`FineTune`, `L2Anchor`, `OnlineEWC`,
            `BayesianPrior`).
        tasks: list of `Task`.
        build_model: callable returning a fresh Keras model with one output
            unit per class (logits).
        epochs: int, epochs per task.
        batch_size: int.
        scenarios: evaluation scenarios, from `("task", "class")`.
        seed: int, seeds Keras (weights, shuffling) for the run.
        loss: the loss; defaults to sparse categorical cross-entropy on
            logits.
        verbose: passed to `fit`.

    Returns:
        A `ContinualResult`.
    """
    epochs = check_positive_integer("epochs", epochs)
    batch_size = check_positive_integer("batch_size", batch_size)
    for scenario in scenarios:
        check_choice("scenario", scenario, SCENARIOS)
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(seed)
    model = build_model()
    matrices = {s: np.full((len(tasks), len(tasks)), np.nan)
                for s in scenarios}
    for i, task in enumerate(tasks):
        optimizer = strategy.optimizer(i, task, model)
        model.compile(optimizer=optimizer, loss=loss)
        model.fit(task.x_train, task.y_train, epochs=epochs,
                  batch_size=batch_size, verbose=verbose)
        for j, other in enumerate(tasks):
            logits = model.predict(other.x_test, batch_size=256, verbose=0)
            for scenario in scenarios:
                matrices[scenario][i, j] = accuracy_from_logits(
                    logits, other, scenario)
        strategy.after_task(i, task, model, optimizer, loss)
    return ContinualResult(strategy.name, [t.name for t in tasks], matrices)


__all__ = [
    "AnchoredAdam", "BayesianPrior", "ContinualResult", "FineTune",
    "L2Anchor", "OnlineEWC", "Strategy", "empirical_fisher", "run_sequence",
]
