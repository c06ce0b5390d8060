"""Continual learning: tasks one after another, the posterior as next prior.

Sequential Bayesian inference in one line: after task t the posterior
q_t(θ) ≈ p(θ | D_1..D_t) is the prior of task t+1, so the network keeps what it
learnt where the old data pinned the weights down and stays free elsewhere.
With a keras_bayes optimizer:

```
opt = keras_bayes.optimizers.SOBA(0.1, ess=n_task1)
model.compile(optimizer=opt, ...); model.fit(task1_x, task1_y, ...)
opt2 = keras_bayes.optimizers.SOBA(0.1, ess=n_task2, prior=opt.posterior())
model.compile(optimizer=opt2, ...); model.fit(task2_x, task2_y, ...)
```

This module holds the offline benchmarks of the field (split and permuted
digits, split MNIST-1D, split CIFAR-10), the metrics (average accuracy after
each task, forgetting, backward transfer), the baselines (fine-tuning, an L2
pull to the previous weights, online EWC with a diagonal Fisher) and
`run_sequence`, one harness that trains any of them over a task sequence.

Scenarios (van de Ven & Tolias, 2019): one output layer over every class is
shared by all tasks; `"task"`-incremental evaluation knows the task and takes
the argmax over its classes only, `"class"`-incremental evaluation takes it
over all classes. Permuted tasks share the labels (`"domain"`-incremental, the
same as `"class"` here).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_bayes._validation import check_choice
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer

SCENARIOS = ("task", "class")


@dataclasses.dataclass
class Task:
    """One task of a sequence: its data and the labels it uses."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple

    def __repr__(self):
        return (f"Task({self.name!r}, train={len(self.x_train)}, "
                f"test={len(self.x_test)}, classes={self.classes})")


# ----------------------------------------------------------------------
# Task sequences.

def split_tasks(train, test, classes_per_task=2, task_classes=None):
    """Split a labelled set into tasks of disjoint classes.

    Args:
        train, test: `(x, y)` pairs with integer labels.
        classes_per_task: int, the classes of each task, taken in label
            order (0-1, 2-3, ...). Ignored when `task_classes` is given.
        task_classes: optional list of label tuples, one per task.

    Returns:
        A list of `Task`.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    y_train = np.asarray(y_train).astype("int64").ravel()
    y_test = np.asarray(y_test).astype("int64").ravel()
    labels = np.unique(y_train)
    if task_classes is None:
        classes_per_task = check_positive_integer("classes_per_task",
                                                  classes_per_task)
        if classes_per_task > len(labels):
            raise ValueError(
                f"`classes_per_task` must be at most the number of classes, "
                f"{len(labels)}. Received: classes_per_task={classes_per_task}"
            )
        task_classes = [tuple(int(c) for c in labels[i:i + classes_per_task])
                        for i in range(0, len(labels), classes_per_task)]
    tasks = []
    for classes in task_classes:
        classes = tuple(int(c) for c in classes)
        in_train = np.isin(y_train, classes)
        in_test = np.isin(y_test, classes)
        if not in_train.any():
            raise ValueError(
                f"`task_classes` names classes {classes} that have no "
                "training examples."
            )
        tasks.append(Task(
            name="classes " + "-".join(str(c) for c in classes),
            x_train=np.asarray(x_train)[in_train], y_train=y_train[in_train],
            x_test=np.asarray(x_test)[in_test], y_test=y_test[in_test],
            classes=classes,
        ))
    return tasks


def permuted_tasks(train, test, num_tasks=5, seed=0):
    """Tasks that share the labels but permute the input features.

    Task 0 keeps the original order; task k applies one fixed random
    permutation of the (flattened) features to train and test inputs.
    """
    num_tasks = check_positive_integer("num_tasks", num_tasks)
    (x_train, y_train), (x_test, y_test) = train, test
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    shape = x_train.shape[1:]
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    classes = tuple(int(c) for c in np.unique(y_train))
    tasks = []
    for k in range(num_tasks):
        order = np.arange(size) if k == 0 else rng.permutation(size)

        def permute(x, order=order):
            return x.reshape(len(x), size)[:, order].reshape((len(x),) + shape)

        tasks.append(Task(
            name=f"permutation {k}", x_train=permute(x_train),
            y_train=np.asarray(y_train).astype("int64"),
            x_test=permute(x_test), y_test=np.asarray(y_test).astype("int64"),
            classes=classes,
        ))
    return tasks


def split_digits(classes_per_task=2, seed=0):
    """scikit-learn's digits in tasks of `classes_per_task` classes."""
    from keras_bayes.datasets import load_digits

    return split_tasks(*load_digits(seed=seed),
                       classes_per_task=classes_per_task)


def permuted_digits(num_tasks=5, seed=0):
    """scikit-learn's digits with a new pixel permutation per task."""
    from keras_bayes.datasets import load_digits

    return permuted_tasks(*load_digits(seed=seed), num_tasks=num_tasks,
                          seed=seed)


def split_mnist1d(classes_per_task=2, num_samples=5000, seed=42):
    """MNIST-1D (generated locally) in tasks of `classes_per_task` classes."""
    from keras_bayes.datasets import load_mnist1d

    return split_tasks(*load_mnist1d(num_samples=num_samples, seed=seed),
                       classes_per_task=classes_per_task)


def split_cifar10(classes_per_task=2, train_size=None, test_size=None,
                  path=None, seed=0):
    """CIFAR-10 from the offline archive in tasks, images scaled to [0, 1].

    `train_size` / `test_size` take class-balanced subsets (see
    `keras_bayes.datasets.load_cifar10`).
    """
    from keras_bayes.datasets import load_cifar10

    (x_train, y_train), (x_test, y_test) = load_cifar10(
        path=path, train_size=train_size, test_size=test_size, seed=seed)
    return split_tasks(
        (x_train.astype("float32") / 255.0, y_train),
        (x_test.astype("float32") / 255.0, y_test),
        classes_per_task=classes_per_task,
    )


# ----------------------------------------------------------------------
# Metrics. `matrix[i, j]` is the test accuracy on task j after training on
# tasks 0..i (NaN above the diagonal when tasks are not evaluated early).

def average_accuracy(matrix):
    """Mean accuracy over the tasks seen so far, after each task."""
    matrix = np.asarray(matrix, dtype=float)
    return np.array([matrix[i, :i + 1].mean() for i in range(len(matrix))])


def forgetting(matrix):
    """Mean over old tasks of (best accuracy before the last task − final).

    Chaudhry et al. (2018); 0 for a single task.
    """
    matrix = np.asarray(matrix, dtype=float)
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    drops = [matrix[j:last, j].max() - matrix[last, j] for j in range(last)]
    return float(np.mean(drops))


def backward_transfer(matrix):
    """Mean over old tasks of (final accuracy − accuracy right after it).

    Lopez-Paz & Ranzato (2017); negative values mean forgetting.
    """
    matrix = np.asarray(matrix, dtype=float)
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return float(np.mean([matrix[last, j] - matrix[j, j]
                          for j in range(last)]))


def task_accuracy(model, task, scenario="task", batch_size=256):
    """Test accuracy of `model` on `task` under `scenario`.

    `"task"`: argmax over the task's classes (the task is known);
    `"class"`: argmax over every output.
    """
    check_choice("scenario", scenario, SCENARIOS)
    logits = np.asarray(model.predict(task.x_test, batch_size=batch_size,
                                      verbose=0))
    return _accuracy(logits, task, scenario)


def _accuracy(logits, task, scenario):
    if scenario == "task":
        classes = np.asarray(task.classes)
        predicted = classes[np.argmax(logits[:, classes], axis=-1)]
    else:
        predicted = np.argmax(logits, axis=-1)
    return float(np.mean(predicted == task.y_test))


# ----------------------------------------------------------------------
# Baselines: a quadratic pull to the previous weights.

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
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        pulled = []
        for gradient, variable in zip(grads, trainable_variables):
            if gradient is None:
                pulled.append(None)
                continue
            index = self._get_variable_index(variable)
            gradient = ops.convert_to_tensor(gradient)
            pulled.append(gradient + ops.cast(
                self._anchor_precisions[index]
                * (ops.convert_to_tensor(variable) - self._anchors[index]),
                gradient.dtype))
        return super().apply(pulled, trainable_variables)


class _SquaredGradientMean(keras.optimizers.Optimizer):
    """Accumulates the mean of g² over the steps; never moves a weight."""

    def __init__(self, num_steps):
        super().__init__(learning_rate=0.0, name="squared_gradient_mean")
        self.num_steps = num_steps

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.sums = [self.add_variable_from_reference(v, name="fisher")
                     for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        self.assign_add(self.sums[index],
                        ops.square(gradient) / float(self.num_steps))


def empirical_fisher(model, x, y, loss, num_examples=200, seed=0):
    """The diagonal empirical Fisher: the mean of per-example squared
    gradients of `loss` over `num_examples` random examples of (x, y).

    Each example is one compiled training step of batch size 1 with an
    optimizer that only accumulates g², so it runs on every backend. It
    recompiles `model`; compile it again before training it.
    """
    num_examples = min(check_positive_integer("num_examples", num_examples),
                       len(x))
    chosen = np.random.default_rng(seed).choice(len(x), num_examples,
                                                replace=False)
    accumulator = _SquaredGradientMean(num_examples)
    model.compile(optimizer=accumulator, loss=loss)
    model.fit(np.asarray(x)[chosen], np.asarray(y)[chosen], batch_size=1,
              epochs=1, shuffle=False, verbose=0)
    return [ops.convert_to_numpy(s) for s in accumulator.sums]


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
# The harness.

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
            logits = np.asarray(model.predict(other.x_test, batch_size=256,
                                              verbose=0))
            for scenario in scenarios:
                matrices[scenario][i, j] = _accuracy(logits, other, scenario)
        strategy.after_task(i, task, model, optimizer, loss)
    return ContinualResult(strategy.name, [t.name for t in tasks], matrices)


__all__ = [
    "AnchoredAdam", "BayesianPrior", "ContinualResult", "FineTune",
    "L2Anchor", "OnlineEWC", "SCENARIOS", "Strategy", "Task",
    "average_accuracy", "backward_transfer", "empirical_fisher",
    "forgetting", "permuted_digits", "permuted_tasks", "run_sequence",
    "split_cifar10", "split_digits", "split_mnist1d", "split_tasks",
    "task_accuracy",
]
