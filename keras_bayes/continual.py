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

This module holds the offline task sequences of the field (split and
permuted digits, split MNIST-1D, split CIFAR-10) and the metrics (accuracy
under each scenario, average accuracy after each task, forgetting, backward
transfer). The baselines (fine-tuning, an L2 pull to the previous weights,
online EWC) and `run_sequence`, which trains any method over a sequence, are
experiments: `benchmarks/continual_baselines.py` in the repository.

Scenarios (van de Ven & Tolias, 2019): one output layer over every class is
shared by all tasks; `"task"`-incremental evaluation knows the task and takes
the argmax over its classes only, `"class"`-incremental evaluation takes it
over all classes. Permuted tasks share the labels (`"domain"`-incremental, the
same as `"class"` here).
"""

import dataclasses

import numpy as np

from keras_bayes._validation import check_choice
from keras_bayes._validation import check_positive_integer

SCENARIOS = ("task", "class")
"""The evaluation scenarios: task-incremental and class-incremental."""


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
    logits = model.predict(task.x_test, batch_size=batch_size, verbose=0)
    return accuracy_from_logits(logits, task, scenario)


def accuracy_from_logits(logits, task, scenario="task"):
    """Test accuracy on `task` of the `logits` predicted for `task.x_test`.

    `task_accuracy` without the forward pass, for a caller that scores one
    prediction under several scenarios.
    """
    check_choice("scenario", scenario, SCENARIOS)
    logits = np.asarray(logits)
    if scenario == "task":
        classes = np.asarray(task.classes)
        predicted = classes[np.argmax(logits[:, classes], axis=-1)]
    else:
        predicted = np.argmax(logits, axis=-1)
    return float(np.mean(predicted == task.y_test))


__all__ = [
    "SCENARIOS", "Task", "accuracy_from_logits", "average_accuracy",
    "backward_transfer", "forgetting", "permuted_digits", "permuted_tasks",
    "split_cifar10", "split_digits", "split_mnist1d", "split_tasks",
    "task_accuracy",
]
