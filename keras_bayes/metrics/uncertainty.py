"""Entropy-based uncertainty of predicted class probabilities (NumPy).

All entropies are in nats (natural logarithm), with 0·log 0 = 0.

- Predictive (total) entropy of p = (p_1, ..., p_k):
  H[p] = −Σ_j p_j log p_j, in [0, log k].
- From S per-sample predictions p_s (e.g. posterior or MC-dropout samples,
  `Predictive.predict_samples`), with the model average p̄ = (1/S)·Σ_s p_s:

  total entropy      H[p̄]
  expected entropy   (1/S)·Σ_s H[p_s]        (aleatoric part)
  mutual information H[p̄] − (1/S)·Σ_s H[p_s] (epistemic part, >= 0)

Probability rows are validated as in `calibration` (finite, non-negative,
summing to 1 within 1e-3; never renormalised).
"""

import numpy as np

from keras_bayes._validation import check_probs


def entropy_of_rows(probs):
    """−Σ_j p_j log p_j over the last axis, with 0·log 0 = 0 (no checks)."""
    probs = np.asarray(probs, dtype=np.float64)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -np.sum(probs * logs, axis=-1)


def predictive_entropy(probs):
    """Entropy H[p_i] = −Σ_j p_ij log p_ij of every row, shape (n,), nats.

    Args:
        probs: probabilities of shape (n, k), or per-sample probabilities of
            shape (S, n, k), whose mean over samples is then used.

    Returns:
        A float64 array of shape (n,), between 0 and log k.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import predictive_entropy
    >>> predictive_entropy(np.array([[0.5, 0.5], [0.9, 0.1]])).round(4)
    array([0.6931, 0.3251])
    """
    probs = check_probs(probs, "probs", ndims=(2, 3))
    if probs.ndim == 3:
        probs = probs.mean(axis=0)
    return entropy_of_rows(probs)


def uncertainty_decomposition(sample_probs):
    """Total, aleatoric and epistemic uncertainty from samples, per example.

    Args:
        sample_probs: per-sample probabilities, shape (S, n, k), S >= 1.

    Returns:
        A dict of arrays of shape (n,), in nats:
        `total_entropy` H[p̄], `expected_entropy` (1/S)·Σ_s H[p_s] and
        `mutual_information` H[p̄] − (1/S)·Σ_s H[p_s]. Mutual information is
        >= 0 by Jensen's inequality; negative values from rounding (about
        1e-16) are clipped to 0. With S = 1 it is 0.

    Example: two samples that disagree completely. Each is certain
    (expected entropy 0), their average is a coin flip (total log 2): all
    the uncertainty is epistemic.

    >>> import numpy as np
    >>> from keras_bayes.metrics import uncertainty_decomposition
    >>> samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (S=2, n=1, k=2)
    >>> parts = uncertainty_decomposition(samples)
    >>> for key, value in parts.items():
    ...     print(key, value.round(4))
    total_entropy [0.6931]
    expected_entropy [0.]
    mutual_information [0.6931]
    """
    samples = check_probs(sample_probs, "sample_probs", ndims=(3,))
    total = entropy_of_rows(samples.mean(axis=0))
    expected = entropy_of_rows(samples).mean(axis=0)
    return {
        "total_entropy": total,
        "expected_entropy": expected,
        "mutual_information": np.maximum(total - expected, 0.0),
    }


def mutual_information(sample_probs):
    """Mutual information (epistemic uncertainty) per example, shape (n,).

    The `mutual_information` entry of `uncertainty_decomposition`:
    H[p̄] − (1/S)·Σ_s H[p_s], in nats.

    Args:
        sample_probs: per-sample probabilities, shape (S, n, k), S >= 1.

    Returns:
        A float64 array of shape (n,), >= 0.

    Example: two samples (S=2) for two examples; on the first they agree,
    which leaves no epistemic uncertainty, on the second they disagree.

    >>> import numpy as np
    >>> from keras_bayes.metrics import mutual_information
    >>> samples = np.array([[[0.7, 0.3], [1.0, 0.0]],
    ...                     [[0.7, 0.3], [0.0, 1.0]]])
    >>> mutual_information(samples).round(4)
    array([0.    , 0.6931])
    """
    return uncertainty_decomposition(sample_probs)["mutual_information"]
