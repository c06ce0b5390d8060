"""Input validation shared by the NumPy metrics.

Every check raises `ValueError` with the offending argument named in
backticks, e.g. "`probs` contains NaN or infinite values".
"""

import numbers

import numpy as np

#: Rows of probabilities must sum to one within this absolute tolerance.
#: They are then used as given (never renormalised).
SUM_TOLERANCE = 1e-3

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def check_positive_int(value, name):
    """`value` as an int; `ValueError` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
        value < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {value!r}"
        )
    return int(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. Received: {value!r}"
        )
    return value


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


def check_labels(labels, num_examples, num_classes, name="labels"):
    """Integer class labels of shape (n,) (or (n, 1)) in [0, num_classes)."""
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must hold integer class indices. Received dtype "
            f"{array.dtype}"
        )
    if array.ndim > 1 and array.shape[1:] != (1,) * (array.ndim - 1):
        raise ValueError(
            f"`{name}` must have shape (n,) or (n, 1). Received shape "
            f"{array.shape}"
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
