"""A diagonal Gaussian over a model's weights, to keep and to reuse as a prior.

`PosteriorOptimizer.posterior()` exports what an optimizer has learnt as a
`Posterior`: per trainable variable, its path, the mean and the diagonal
precision 1/σ². `Posterior.save` / `Posterior.load` keep it on its own
(`.npz`); passed as `prior=` to a keras_bayes optimizer it becomes the prior of
the next task (continual learning), and it is saved inside that optimizer's
`.keras` file.
"""

import numpy as np


def _as_float_arrays(values, name):
    arrays = [np.array(v, dtype="float32", copy=True) for v in values]
    for index, array in enumerate(arrays):
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"`{name}[{index}]` contains non-finite values; a Posterior "
                "needs finite means and precisions."
            )
    return arrays


class Posterior:
    """A diagonal Gaussian N(mean, diag(1/precision)) per variable.

    Args:
        means: list of arrays, one per variable.
        precisions: list of arrays of the same shapes, each > 0: the total
            precision 1/σ² of each weight (not per example).
        paths: list of str, the `variable.path` of each variable, used to
            match the Gaussian to a model's variables. Defaults to
            `"variable_<i>"`.

    Example: built by hand, kept in a file, made broader.

    >>> import numpy as np
    >>> from keras_bayes import Posterior
    >>> posterior = Posterior([np.zeros(3)], [np.full(3, 4.0)],
    ...                       paths=["dense/kernel"])
    >>> posterior
    <Posterior: 1 variables, 3 weights>
    >>> posterior.stds[0]
    array([0.5, 0.5, 0.5], dtype=float32)
    >>> posterior.save("task1.npz")
    >>> Posterior.load("task1.npz").tempered(0.25).stds[0]
    array([1., 1., 1.], dtype=float32)

    What an optimizer learnt, as the prior of the next task:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x)), loss)
    model.fit(x, y, epochs=2, verbose=0)
    task1 = model.optimizer.posterior()       # a Posterior
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x), prior=task1), loss)
    model.fit(x, 1 - y, epochs=2, verbose=0)  # task 2, pulled towards task 1
    ```
    """

    def __init__(self, means, precisions, paths=None):
        means = _as_float_arrays(means, "means")
        precisions = _as_float_arrays(precisions, "precisions")
        if len(means) != len(precisions):
            raise ValueError(
                "`means` and `precisions` must have one entry per variable. "
                f"Received {len(means)} means and {len(precisions)} "
                "precisions."
            )
        for index, (mean, precision) in enumerate(zip(means, precisions)):
            if mean.shape != precision.shape:
                raise ValueError(
                    f"`precisions[{index}]` must have the shape of "
                    f"`means[{index}]`, {mean.shape}. Received: "
                    f"{precision.shape}"
                )
            if np.any(precision <= 0):
                raise ValueError(
                    f"`precisions[{index}]` must be > 0 everywhere. Received "
                    f"a minimum of {precision.min()!r}."
                )
        if paths is None:
            paths = [f"variable_{i}" for i in range(len(means))]
        paths = [str(p) for p in paths]
        if len(paths) != len(means) or len(set(paths)) != len(paths):
            raise ValueError(
                "`paths` must hold one distinct name per variable. "
                f"Received {len(paths)} paths for {len(means)} variables."
            )
        self.means = means
        self.precisions = precisions
        self.paths = paths

    def __len__(self):
        return len(self.means)

    def __repr__(self):
        size = sum(m.size for m in self.means)
        return f"<Posterior: {len(self)} variables, {size} weights>"

    @property
    def stds(self):
        """The standard deviations 1/sqrt(precision), one array each."""
        return [1.0 / np.sqrt(p) for p in self.precisions]

    def tempered(self, factor):
        """The same means with every precision multiplied by `factor` > 0.

        A factor below 1 widens the Gaussian (a weaker prior, which lets a
        model forget part of earlier tasks to fit a new one).
        """
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(
                f"`factor` must be a finite number > 0. Received: "
                f"factor={factor!r}"
            )
        return Posterior(self.means, [factor * p for p in self.precisions],
                         self.paths)

    # ------------------------------------------------------------------
    # Matching to a model's variables.

    def match(self, variables):
        """(mean, precision) or None for each of `variables`.

        Variables are matched by `variable.path`. When no path matches (the
        same architecture rebuilt with new layer names), the first `len(self)`
        variables are matched in order, provided every shape agrees. A
        variable without a match (a new output head, say) gets None.

        Raises:
            ValueError: a matched variable has another shape, or neither
                rule matches anything.
        """
        variables = list(variables)
        by_path = {path: i for i, path in enumerate(self.paths)}
        indices = [by_path.get(v.path) for v in variables]
        if all(i is None for i in indices):
            shapes_agree = len(variables) >= len(self) and all(
                tuple(v.shape) == m.shape
                for v, m in zip(variables, self.means)
            )
            if not shapes_agree:
                raise ValueError(
                    "This Posterior does not fit the variables: no variable "
                    f"path matches (posterior paths start {self.paths[:3]}, "
                    f"model paths {[v.path for v in variables[:3]]}) and the "
                    "shapes differ in order."
                )
            indices = list(range(len(self))) + [None] * (
                len(variables) - len(self))
        out = []
        for variable, index in zip(variables, indices):
            if index is None:
                out.append(None)
                continue
            if tuple(variable.shape) != self.means[index].shape:
                raise ValueError(
                    f"Variable '{variable.path}' has shape "
                    f"{tuple(variable.shape)} but the Posterior entry "
                    f"'{self.paths[index]}' has shape "
                    f"{self.means[index].shape}."
                )
            out.append((self.means[index], self.precisions[index]))
        return out

    # ------------------------------------------------------------------
    # Saving on its own.

    def save(self, filepath):
        """Write the Gaussian to an `.npz` file."""
        filepath = str(filepath)
        if not filepath.endswith(".npz"):
            raise ValueError(
                f"`filepath` must end in '.npz'. Received: {filepath!r}"
            )
        arrays = {"paths": np.array(self.paths)}
        for i, (mean, precision) in enumerate(zip(self.means,
                                                  self.precisions)):
            arrays[f"mean_{i}"] = mean
            arrays[f"precision_{i}"] = precision
        np.savez(filepath, **arrays)

    @classmethod
    def load(cls, filepath):
        """Read a Gaussian written by `save`."""
        with np.load(str(filepath), allow_pickle=False) as data:
            paths = [str(p) for p in data["paths"]]
            means = [data[f"mean_{i}"] for i in range(len(paths))]
            precisions = [data[f"precision_{i}"] for i in range(len(paths))]
        return cls(means, precisions, paths)

    def spec(self):
        """Paths and shapes (no values): what an optimizer's config keeps."""
        return {"paths": list(self.paths),
                "shapes": [list(m.shape) for m in self.means]}


class PriorSpec:
    """The structure of a prior whose values are optimizer variables.

    An optimizer's `get_config` records its prior's paths and shapes only:
    the values are slots of the optimizer, saved and restored with its
    variables (`.keras` files). `from_config` rebuilds the optimizer with this
    placeholder, and loading the file fills it in.

    Args:
        paths: list of str, the variables' paths.
        shapes: list of shapes, one per path.

    Example:

    >>> from keras_bayes.posterior import PriorSpec
    >>> spec = PriorSpec(["dense/kernel", "dense/bias"], [(8, 2), (2,)])
    >>> len(spec), spec.spec()
    (2, {'paths': ['dense/kernel', 'dense/bias'], 'shapes': [[8, 2], [2]]})
    """

    def __init__(self, paths, shapes):
        self.paths = [str(p) for p in paths]
        self.shapes = [tuple(int(d) for d in s) for s in shapes]

    def __len__(self):
        return len(self.paths)

    def spec(self):
        return {"paths": list(self.paths),
                "shapes": [list(s) for s in self.shapes]}

    def match(self, variables):
        placeholder = Posterior(
            [np.zeros(s, "float32") for s in self.shapes],
            [np.ones(s, "float32") for s in self.shapes], self.paths)
        return placeholder.match(variables)


__all__ = ["Posterior", "PriorSpec"]
