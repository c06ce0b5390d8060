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
    """One task of a sequence: its data and the labels it uses.

    Built by `split_tasks`, `permuted_tasks` and the ready-made sequences
    (`split_digits`, ...); a dataclass, so a task of your own is one call.

    Args:
        name: str, shown in tables and plots.
        x_train, y_train, x_test, y_test: NumPy arrays, integer labels.
        classes: tuple of the labels the task uses (the outputs compared
            under the `"task"` scenario).

    Example:

    >>> import numpy as np
    >>> from keras_bayes.continual import Task
    >>> x, y = np.zeros((6, 4), "float32"), np.array([0, 1, 0, 1, 0, 1])
    >>> Task("zeros", x[:4], y[:4], x[4:], y[4:], classes=(0, 1))
    Task('zeros', train=4, test=2, classes=(0, 1))
    """

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

    Example:

    >>> import numpy as np
    >>> from keras_bayes.continual import split_tasks
    >>> y = np.arange(8) % 4                   # labels 0..3
    >>> x = np.arange(8, dtype="float32")[:, None]
    >>> for task in split_tasks((x, y), (x, y), classes_per_task=2):
    ...     print(task)
    Task('classes 0-1', train=4, test=4, classes=(0, 1))
    Task('classes 2-3', train=4, test=4, classes=(2, 3))
    >>> split_tasks((x, y), (x, y), task_classes=[(3, 0)])[0].y_train
    array([0, 3, 0, 3])
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

    Args:
        train, test: `(x, y)` pairs with integer labels.
        num_tasks: int >= 1.
        seed: int, the seed of the permutations.

    Returns:
        A list of `num_tasks` `Task`s, each with every class.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.continual import permuted_tasks
    >>> x = np.arange(8, dtype="float32").reshape(2, 4)
    >>> tasks = permuted_tasks((x, [0, 1]), (x, [0, 1]), num_tasks=2)
    >>> tasks[0].x_train[0]        # the original order
    array([0., 1., 2., 3.], dtype=float32)
    >>> np.sort(tasks[1].x_train[0])  # the same features, permuted
    array([0., 1., 2., 3.], dtype=float32)
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
    """scikit-learn's digits in tasks of `classes_per_task` classes.

    Args:
        classes_per_task: int, classes of each task (0-1, 2-3, ...).
        seed: int, the seed of the train/test split (`load_digits`).

    Returns:
        A list of `Task`, inputs of shape (n, 64) in [0, 1].

    Example:

    >>> from keras_bayes.continual import split_digits
    >>> tasks = split_digits(classes_per_task=2)
    >>> [task.classes for task in tasks]
    [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    """
    from keras_bayes.datasets import load_digits

    return split_tasks(*load_digits(seed=seed),
                       classes_per_task=classes_per_task)


def permuted_digits(num_tasks=5, seed=0):
    """scikit-learn's digits with a new pixel permutation per task.

    Args:
        num_tasks: int >= 1; task 0 keeps the original pixel order.
        seed: int, the seed of the split and of the permutations.

    Returns:
        A list of `Task`, each with the ten classes.

    Example:

    >>> from keras_bayes.continual import permuted_digits
    >>> tasks = permuted_digits(num_tasks=3)
    >>> [task.name for task in tasks], tasks[0].x_train.shape
    (['permutation 0', 'permutation 1', 'permutation 2'], (1258, 64))
    """
    from keras_bayes.datasets import load_digits

    return permuted_tasks(*load_digits(seed=seed), num_tasks=num_tasks,
                          seed=seed)


def split_mnist1d(classes_per_task=2, num_samples=5000, seed=42):
    """MNIST-1D (generated locally) in tasks of `classes_per_task` classes.

    Args:
        classes_per_task: int, classes of each task (0-1, 2-3, ...).
        num_samples: int, examples generated (80 % train, 20 % test).
        seed: int, the generator's seed.

    Returns:
        A list of `Task`, inputs of shape (n, 40).

    Example:

    >>> from keras_bayes.continual import split_mnist1d
    >>> tasks = split_mnist1d(classes_per_task=5, num_samples=500)
    >>> [task.classes for task in tasks]
    [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    """
    from keras_bayes.datasets import load_mnist1d

    return split_tasks(*load_mnist1d(num_samples=num_samples, seed=seed),
                       classes_per_task=classes_per_task)


def split_cifar10(classes_per_task=2, train_size=None, test_size=None,
                  path=None, seed=0):
    """CIFAR-10 from the offline archive in tasks, images scaled to [0, 1].

    `train_size` / `test_size` take class-balanced subsets (see
    `keras_bayes.datasets.load_cifar10`).

    Args:
        classes_per_task: int, classes of each task (0-1, 2-3, ...).
        train_size, test_size: optional subset sizes (multiples of 10).
        path: the archive; defaults as in `load_cifar10`.
        seed: int, the seed of the subsets.

    Returns:
        A list of `Task`, float32 images (n, 32, 32, 3) in [0, 1].

    Example (on a stand-in archive of random images in the real one's
    format; with the real archive only the last call is needed):

    ```python
    import io, lzma
    import numpy as np
    from PIL import Image
    from keras_bayes.continual import split_cifar10

    images = np.random.default_rng(0).integers(
        0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    jpegs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        jpegs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(jpeg) for jpeg in jpegs])
    split = dict(jpeg=np.concatenate(jpegs), offsets=offsets,
                 y=np.repeat(np.arange(10), 2))
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{key}_{part}": value for key, value in split.items()
                        for part in ("train", "test")})
    with lzma.open("cifar10-jpeg.npz.xz", "wb") as f:
        f.write(buffer.getvalue())

    tasks = split_cifar10(classes_per_task=2, path="cifar10-jpeg.npz.xz")
    assert len(tasks) == 5 and tasks[0].x_train.shape == (4, 32, 32, 3)
    ```
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
    """Mean accuracy over the tasks seen so far, after each task.

    Args:
        matrix: (T, T) accuracies, `matrix[i, j]` on task j after training
            on tasks 0..i (entries above the diagonal are not used).

    Returns:
        A float array of length T, entry i = mean_{j <= i} matrix[i, j].

    Example:

    >>> from keras_bayes.continual import average_accuracy
    >>> average_accuracy([[0.9, 0.0], [0.7, 0.8]])
    array([0.9 , 0.75])
    """
    matrix = np.asarray(matrix, dtype=float)
    return np.array([matrix[i, :i + 1].mean() for i in range(len(matrix))])


def forgetting(matrix):
    """Mean over old tasks of (best accuracy before the last task − final).

    Chaudhry et al. (2018); 0 for a single task.

    Args:
        matrix: (T, T) accuracies, `matrix[i, j]` on task j after training
            on tasks 0..i.

    Returns:
        A float; 0 when no task lost accuracy.

    Example: task 0 fell from its best, 0.9, to 0.6; task 1 from 0.8 to
    0.7:

    >>> from keras_bayes.continual import forgetting
    >>> round(forgetting([[0.9, 0.0, 0.0], [0.8, 0.8, 0.0],
    ...                   [0.6, 0.7, 0.9]]), 4)
    0.2
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

    Args:
        matrix: (T, T) accuracies, `matrix[i, j]` on task j after training
            on tasks 0..i.

    Returns:
        A float.

    Example:

    >>> from keras_bayes.continual import backward_transfer
    >>> round(backward_transfer([[0.9, 0.0], [0.6, 0.8]]), 4)
    -0.3
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

    Args:
        model: a Keras model with one output per class (logits or
            probabilities).
        task: a `Task`.
        scenario: `"task"` or `"class"`.
        batch_size: int, the batch size of `model.predict`.

    Returns:
        A float in [0, 1].

    Example:

    ```python
    import keras
    from keras_bayes import continual

    tasks = continual.split_digits(classes_per_task=5)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(tasks[0].x_train, tasks[0].y_train, epochs=1, verbose=0)
    known = continual.task_accuracy(model, tasks[0], scenario="task")
    unknown = continual.task_accuracy(model, tasks[0], scenario="class")
    assert known >= unknown   # fewer classes to choose from
    ```
    """
    check_choice("scenario", scenario, SCENARIOS)
    logits = model.predict(task.x_test, batch_size=batch_size, verbose=0)
    return accuracy_from_logits(logits, task, scenario)


def accuracy_from_logits(logits, task, scenario="task"):
    """Test accuracy on `task` of the `logits` predicted for `task.x_test`.

    `task_accuracy` without the forward pass, for a caller that scores one
    prediction under several scenarios.

    Args:
        logits: (n, num_outputs) predictions on `task.x_test`.
        task: a `Task`.
        scenario: `"task"` (argmax over `task.classes`) or `"class"`
            (argmax over every output).

    Returns:
        A float in [0, 1].

    Example: output 0 wins overall, but the task only has classes 2 and 3:

    >>> import numpy as np
    >>> from keras_bayes.continual import Task, accuracy_from_logits
    >>> task = Task("2-3", None, None, None, np.array([3, 2]), classes=(2, 3))
    >>> logits = np.array([[5.0, 0.0, 1.0, 2.0], [5.0, 0.0, 2.0, 1.0]])
    >>> accuracy_from_logits(logits, task, "task")
    1.0
    >>> accuracy_from_logits(logits, task, "class")
    0.0
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
