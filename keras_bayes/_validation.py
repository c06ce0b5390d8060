"""Argument checks shared by the whole package.

Every check takes the argument's name first, then its value, and raises
`ValueError` naming the argument in backticks and ending in Keras' style
"Received: name=value", e.g.

    `rho` must be in [0.0, inf]. Received: rho=-1.0

The array checks at the end validate the NumPy inputs of
`keras_bayes.metrics` (probabilities, labels, scores); they name the
offending argument the same way, e.g. "`probs` contains NaN or infinite
values".
"""

import math
import numbers
import os

import numpy as np


def _interval(low, high, low_open, high_open):
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    return f"{left}{lo}, {hi}{right}"


def check_number(name, value, low=None, high=None, low_open=False,
                 high_open=False, allow_inf=False):
    """`value` as a Python float; `ValueError` unless it lies in the range.

    `low`/`high` are the bounds (None: unbounded), `low_open`/`high_open`
    exclude them. NaN is always refused, infinities unless `allow_inf`.
    """
    interval = _interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a real number in {interval}. "
            f"Received: {name}={value!r}"
        )
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(
            f"`{name}` must be a finite number in {interval}. "
            f"Received: {name}={value!r}"
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (
        value >= high if high_open else value > high
    )
    if too_low or too_high:
        raise ValueError(
            f"`{name}` must be in {interval}. Received: {name}={value!r}"
        )
    return value


def check_positive_integer(name, value):
    """`value` as an int; `ValueError` unless it is an integer >= 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
    return int(value)


def check_choice(name, value, choices):
    """`value` unchanged; `ValueError` unless it is one of `choices`."""
    try:
        known = value in choices
    except (TypeError, ValueError):  # unhashable, or an array
        known = False
    if not known:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_boolean(name, value):
    """`value` as a bool; `ValueError` unless it is True or False (a NumPy
    bool too). Integers such as 1 are refused: they usually mean a count
    passed to the wrong argument."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return bool(value)


def check_path(name, value):
    """`value` as a str path; `ValueError` unless it is a non-empty str or
    `os.PathLike`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"`{name}` must be a non-empty path (a str or os.PathLike). "
            f"Received: {name}={value!r}"
        )
    return value


def check_learning_rate(learning_rate):
    """Numbers must be >= 0; schedules and callables pass through."""
    if isinstance(learning_rate, numbers.Real):
        check_number("learning_rate", learning_rate, low=0.0)
    return learning_rate


def check_seed(seed):
    """An int or None (the seed of a `keras.random.SeedGenerator`)."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise ValueError(
            f"`seed` must be an integer or None. Received: seed={seed!r}"
        )
    return seed


# -- Arrays (the inputs of keras_bayes.metrics) -----------------------------

#: Rows of probabilities must sum to one within this absolute tolerance.
#: They are then used as given (never renormalised).
SUM_TOLERANCE = 1e-3

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def comparison_dtype(array):
    """The floating precision the input arrived in (float64 otherwise).

    Bin edges are rounded to this precision before confidences are compared
    with them, so float32 data bins exactly as it does inside a float32
    Keras metric.
    """
    dtype = np.asarray(array).dtype
    for candidate in _FLOAT_DTYPES:
        if dtype == candidate:
            return candidate
    return np.float64


def check_real_array(values, name):
    """`values` as a finite float64 array; rejects empty and non-numeric."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold real numbers. Received dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty (shape {array.shape})")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return array


def check_probs(probs, name="probs", ndims=(2,)):
    """Probabilities with classes on the last axis.

    Checks: number of dimensions in `ndims`, at least one example and one
    class (and one sample for 3-D input), finite, non-negative, and every
    row summing to 1 within `SUM_TOLERANCE`. Returns a float64 array.
    """
    array = np.asarray(probs)
    if array.ndim not in ndims:
        shapes = " or ".join(
            {2: "(n, num_classes)", 3: "(num_samples, n, num_classes)"}[d]
            for d in ndims
        )
        raise ValueError(
            f"`{name}` must have shape {shapes}. Received shape {array.shape}"
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold real numbers. Received dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if array.ndim == 3 and array.shape[0] == 0:
        raise ValueError(
            f"`{name}` must hold at least one sample (num_samples >= 1). "
            f"Received shape {array.shape}"
        )
    if array.shape[-2] == 0:
        raise ValueError(
            f"`{name}` is empty: it has no examples (shape {array.shape})"
        )
    if array.shape[-1] == 0:
        raise ValueError(
            f"`{name}` must have at least one class. Received shape "
            f"{array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    if np.any(array < 0):
        raise ValueError(f"`{name}` contains negative values")
    worst = np.max(np.abs(array.sum(axis=-1) - 1.0))
    if worst > SUM_TOLERANCE:
        raise ValueError(
            f"`{name}` rows must sum to 1 (within {SUM_TOLERANCE}); the "
            f"largest deviation is {worst:.3g}. Apply a softmax to logits, "
            "or renormalise, first"
        )
    return array


def is_one_hot(array):
    """Whether `array` is a 2-D array of 0/1 with two or more columns and
    exactly one 1 in every row (the output of `keras.utils.to_categorical`)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 2 or array.dtype.kind not in "biuf":
        return False
    return bool(np.all((array == 0) | (array == 1))
                and np.all(array.sum(axis=1) == 1))


def one_hot_to_indices(labels, num_classes=None, name="labels"):
    """Integer labels (n,) from one-hot labels (n, num_classes).

    Accepted only when `is_one_hot` holds and, where `num_classes` is
    given, the labels have exactly `num_classes` columns; anything else of
    shape (n, k > 1) (soft or smoothed labels, several 1s in a row, a
    different number of classes) raises `ValueError`, since which class it
    means cannot be read off safely.
    """
    array = np.asarray(labels)
    if not is_one_hot(array):
        raise ValueError(
            f"`{name}` has shape {array.shape}, but is not one-hot (0/1 "
            "with exactly one 1 per row). Pass integer class indices of "
            "shape (n,), or one-hot labels of shape (n, num_classes); for "
            f"soft labels, e.g. `{name}.argmax(axis=-1)`"
        )
    if num_classes is not None and array.shape[1] != num_classes:
        raise ValueError(
            f"`{name}` looks one-hot with {array.shape[1]} columns (shape "
            f"{array.shape}), but the probabilities have {num_classes} "
            f"classes. Pass one-hot labels of shape (n, {num_classes}) "
            "(`keras.utils.to_categorical(y, num_classes)`) or integer "
            "class indices"
        )
    return np.argmax(array, axis=1)


def check_labels(labels, num_examples, num_classes, name="labels"):
    """Class labels as int64 (n,), each in [0, num_classes).

    Accepts integer class indices of shape (n,) or (n, 1), and one-hot
    labels of shape (n, num_classes) (`one_hot_to_indices`), which become
    their argmax.
    """
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold integer class indices. Received dtype "
            f"{array.dtype}"
        )
    if array.ndim == 2 and array.shape[1] > 1:
        array = one_hot_to_indices(array, num_classes, name)
    if array.ndim > 1 and array.shape[1:] != (1,) * (array.ndim - 1):
        raise ValueError(
            f"`{name}` must have shape (n,), (n, 1) or, one-hot, "
            f"(n, {num_classes}). Received shape {array.shape}"
        )
    array = array.reshape(-1)
    if array.shape[0] != num_examples:
        raise ValueError(
            f"`{name}` and the probabilities must have the same length. "
            f"Received {array.shape[0]} labels and {num_examples} rows of "
            "probabilities"
        )
    as_float = array.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(np.mod(as_float, 1) != 0):
        raise ValueError(f"`{name}` must hold integers (no fractions or NaN)")
    if as_float.min() < 0 or as_float.max() >= num_classes:
        raise ValueError(
            f"`{name}` must be integers in [0, {num_classes - 1}]. "
            f"Received values in [{as_float.min():g}, {as_float.max():g}]"
        )
    return as_float.astype(np.int64)


def check_labels_probs(labels, probs):
    """Validated (labels int64 (n,), probs float64 (n, k))."""
    probs_array = check_probs(probs, "probs")
    labels_array = check_labels(labels, *probs_array.shape)
    return labels_array, probs_array


def check_binary_targets(targets, name="targets"):
    """A 1-D array of 0/1 (or bool) as a bool array."""
    array = np.asarray(targets)
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D. Received shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"`{name}` is empty")
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold 0/1 or booleans. Received dtype "
            f"{array.dtype}"
        )
    values = array.astype(np.float64)
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"`{name}` must hold only 0/1 or booleans")
    return values == 1


def check_scores(scores, length, name="scores"):
    array = np.asarray(scores)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D. Received shape {array.shape}")
    if array.shape[0] != length:
        raise ValueError(
            f"`{name}` and `targets` must have the same length. Received "
            f"{array.shape[0]} scores and {length} targets"
        )
    return check_real_array(array, name)
