"""Classification metrics as plain NumPy functions.

Every function takes integer labels of shape (n,) and predicted class
probabilities of shape (n, k) whose rows sum to one (within 1e-3; pass
logits through a softmax first). Bad input raises `ValueError`.
"""

import numpy as np


def _check(labels, probs):
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(
            "`probs` must have shape (n, num_classes). "
            f"Received shape {probs.shape}"
        )
    labels = labels.reshape(-1)
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            "`labels` and `probs` must have the same length. Received "
            f"{labels.shape[0]} labels and {probs.shape[0]} rows of probs"
        )
    if labels.size and (
        not np.all(np.equal(np.mod(labels, 1), 0))
        or labels.min() < 0
        or labels.max() >= probs.shape[1]
    ):
        raise ValueError(
            f"`labels` must be integers in [0, {probs.shape[1] - 1}]. "
            f"Received values in [{labels.min()}, {labels.max()}]"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError("`probs` contains NaN or infinite values")
    if np.any(probs < 0) or np.any(np.abs(probs.sum(axis=1) - 1) > 1e-3):
        raise ValueError(
            "`probs` rows must be non-negative and sum to 1 (within 1e-3); "
            "apply a softmax to logits first"
        )
    return labels.astype(np.int64), probs


def accuracy(labels, probs):
    """Fraction of examples whose most probable class is the label."""
    labels, probs = _check(labels, probs)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def negative_log_likelihood(labels, probs, eps=1e-12):
    """Mean −log p(label); probabilities are floored at `eps`."""
    labels, probs = _check(labels, probs)
    picked = probs[np.arange(labels.shape[0]), labels]
    return float(-np.mean(np.log(np.maximum(picked, eps))))


def brier_score(labels, probs):
    """Mean over examples of Σ_k (p_k − 1[k = label])² (range [0, 2])."""
    labels, probs = _check(labels, probs)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_bins(labels, probs, num_bins=15):
    """Equal-width confidence bins over [0, 1].

    Bin b holds the examples with confidence in (b/B, (b+1)/B]; the first bin
    also holds confidence 0 exactly, so every example is in one bin.

    Returns a dict of arrays of length `num_bins`: `counts`, `accuracy` and
    `confidence` (the mean within each bin; 0 for an empty bin) and `edges`
    (length num_bins + 1).
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or (
        num_bins < 1
    ):
        raise ValueError(
            f"`num_bins` must be an integer >= 1. Received: {num_bins!r}"
        )
    labels, probs = _check(labels, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1,
                    0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins).astype(np.float64)
    sum_conf = np.bincount(index, weights=confidence, minlength=num_bins)
    sum_correct = np.bincount(index, weights=correct, minlength=num_bins)
    safe = np.maximum(counts, 1.0)
    return {
        "counts": counts,
        "accuracy": sum_correct / safe,
        "confidence": sum_conf / safe,
        "edges": edges,
    }


def expected_calibration_error(labels, probs, num_bins=15):
    """ECE = Σ_b (n_b / n)·|accuracy_b − confidence_b| over equal-width bins."""
    bins = calibration_bins(labels, probs, num_bins)
    total = bins["counts"].sum()
    if total == 0:
        return 0.0
    gaps = np.abs(bins["accuracy"] - bins["confidence"])
    return float(np.sum(bins["counts"] / total * gaps))


def classification_report(labels, probs, num_bins=15):
    """A dict with accuracy, nll, ece and brier."""
    return {
        "accuracy": accuracy(labels, probs),
        "nll": negative_log_likelihood(labels, probs),
        "ece": expected_calibration_error(labels, probs, num_bins),
        "brier": brier_score(labels, probs),
    }
