"""Metrics for Gaussian predictive distributions N(mean, var) (NumPy).

`targets`, `mean` and `var` are arrays of the same shape (any shape, e.g.
(n,) or (n, d)); every entry is one scalar prediction and the metrics
average over all entries. Inputs must be non-empty and finite, and `var`
strictly positive; otherwise `ValueError` names the argument.
"""

import math
import numbers
from statistics import NormalDist

import numpy as np

from keras_bayes._validation import check_real_array


def _check_gaussian(targets, mean, var):
    targets = check_real_array(targets, "targets")
    mean = check_real_array(mean, "mean")
    var = check_real_array(var, "var")
    for name, array in (("mean", mean), ("var", var)):
        if array.shape != targets.shape:
            raise ValueError(
                f"`{name}` must have the shape of `targets`. Received "
                f"{array.shape} and {targets.shape}"
            )
    if np.any(var <= 0):
        raise ValueError(
            f"`var` must be > 0 everywhere. Received minimum {var.min():g}"
        )
    return targets, mean, var


def gaussian_nll(targets, mean, var):
    """Mean Gaussian negative log-likelihood, in nats.

    NLL = mean_i ½·[log(2π·var_i) + (y_i − mean_i)² / var_i].

    Args:
        targets: real targets y, shape (n,).
        mean: predicted means, shape (n,).
        var: predicted variances > 0, shape (n,).

    Returns:
        A float.

    Example: a standard normal at its mean, ½·log(2π):

    >>> from keras_bayes.metrics import gaussian_nll
    >>> round(gaussian_nll([0.0], [0.0], [1.0]), 4)
    0.9189
    """
    targets, mean, var = _check_gaussian(targets, mean, var)
    terms = 0.5 * (np.log(2 * math.pi * var) + (targets - mean) ** 2 / var)
    return float(np.mean(terms))


def normal_quantile_for_level(level):
    """z with P(|Z| <= z) = level for Z ~ N(0, 1): Φ⁻¹((1 + level) / 2)."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not (
        0.0 < level < 1.0
    ):
        raise ValueError(f"`level` must be in (0, 1). Received: {level!r}")
    return NormalDist().inv_cdf((1.0 + float(level)) / 2.0)


def interval_coverage(targets, mean, var, level=0.95):
    """Fraction of targets inside the central `level` interval.

    coverage = mean_i 1[|y_i − mean_i| <= z·sqrt(var_i)] with
    z = Φ⁻¹((1 + level)/2) (1.959964 for level = 0.95); the interval is
    closed. A calibrated model has coverage ≈ level.

    Args:
        targets: real targets y, shape (n,).
        mean: predicted means, shape (n,).
        var: predicted variances > 0, shape (n,).
        level: the interval's probability, in (0, 1).

    Returns:
        A float in [0, 1].

    Example: 3.0 lies outside mean ± 1.96·std, the other two inside:

    >>> from keras_bayes.metrics import interval_coverage
    >>> round(interval_coverage([0.0, 1.0, 3.0], [0.0, 0.0, 0.0],
    ...                         [1.0, 1.0, 1.0]), 4)
    0.6667
    """
    z = normal_quantile_for_level(level)
    targets, mean, var = _check_gaussian(targets, mean, var)
    inside = np.abs(targets - mean) <= z * np.sqrt(var)
    return float(np.mean(inside))
