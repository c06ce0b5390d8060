"""Classification and calibration metrics as plain NumPy functions.

Inputs: integer `labels` of shape (n,) (or (n, 1)) in [0, k), or one-hot
labels of shape (n, k) with exactly one 1 per row (their argmax), and
predicted class probabilities `probs` of shape (n, k). Rows of `probs`
must be finite, non-negative and sum to 1 within 1e-3; they are used as
given, never renormalised (pass logits through a softmax first). Anything
else - empty input, mismatched lengths, fractional or out-of-range labels,
NaN/inf - raises `ValueError` naming the argument.

Confidence and correctness. For example i, the confidence is
c_i = max_j p_ij and the prediction is argmax_j p_ij (the first maximal
class on ties); the example is correct when the prediction equals its label.

Binning (`calibration_bins`, B = `num_bins` bins, edges e_0 <= ... <= e_B):

- Bins are right-closed: example i is in bin b when e_b < c_i <= e_{b+1}.
  The first bin also takes everything at or below e_1 (so c = 0 lands in
  bin 0) and the last bin everything above e_{B-1} (so c = 1, and a
  confidence slightly above 1 from a row summing to 1 + 1e-4, lands in bin
  B - 1). Equivalently, the bin index is the number of interior edges
  e_1, ..., e_{B-1} strictly below c_i. Every example is in exactly one bin.
- `binning="width"`: e_b = b / B. A confidence exactly on an edge belongs
  to the bin below it (c = 0.5 with B = 2 is in bin 0). The comparison is
  made in the floating precision of `probs` (float16/32/64; float64 for
  other input): with float32 input the edges are b / B rounded to float32.
  The streaming Keras metric works the same way, so both put a float32
  confidence in the same bin. A valid row has c >= 1/k (up to the
  tolerance), so the bins below 1/k are always empty.
- `binning="mass"` (equal-mass, "adaptive"): with the confidences sorted,
  c_(1) <= ... <= c_(n), the interior edges are e_b = c_(m_b) with
  m_b = ceil(b·n / B), b = 1, ..., B-1; e_0 = 0 and e_B = 1. With distinct
  confidences bin b holds exactly m_{b+1} - m_b examples (m_0 = 0,
  m_B = n), i.e. floor(n/B) or ceil(n/B). Ties are never split: an
  example's bin depends only on its confidence, so tied confidences share a
  bin, which may then hold more than n/B examples while a neighbour holds
  fewer or none. With n < B some bins are empty.
- Empty bins have count 0 and report accuracy 0 and confidence 0; they
  carry zero weight in the ECE and are skipped by the MCE.

ECE = Σ_b (n_b / n)·|acc_b − conf_b| and MCE = max_{b: n_b > 0}
|acc_b − conf_b|, where acc_b and conf_b are the mean correctness and the
mean confidence in bin b.
"""

import numpy as np

from keras_bayes._validation import check_choice
from keras_bayes._validation import check_labels_probs
from keras_bayes._validation import check_positive_integer
from keras_bayes._validation import comparison_dtype

BINNINGS = ("width", "mass")


def _check(labels, probs):
    """Validated (labels int64 (n,), probs float64 (n, k))."""
    return check_labels_probs(labels, probs)


def accuracy(labels, probs):
    """Fraction of examples whose most probable class is the label.

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.

    Returns:
        A float in [0, 1].

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import accuracy
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> accuracy([0, 1, 1, 0], probs)
    0.75
    """
    labels, probs = _check(labels, probs)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def negative_log_likelihood(labels, probs, eps=1e-12):
    """Mean −log p(label) in nats; probabilities are floored at `eps`.

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.
        eps: float, the floor that keeps a zero probability finite.

    Returns:
        A float >= 0.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import negative_log_likelihood
    >>> probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    >>> round(negative_log_likelihood([0, 1], probs), 4)  # -(ln .5 + ln .75)/2
    0.4904
    """
    labels, probs = _check(labels, probs)
    picked = probs[np.arange(labels.shape[0]), labels]
    return float(-np.mean(np.log(np.maximum(picked, eps))))


def brier_score(labels, probs):
    """Mean over examples of Σ_k (p_k − 1[k = label])² (range [0, 2]).

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.

    Returns:
        A float in [0, 2]; 0 for confident correct predictions.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import brier_score
    >>> probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> brier_score([0, 1], probs)  # (0 + 0.25 + 0.25) / 2
    0.25
    """
    labels, probs = _check(labels, probs)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def equal_width_edges(num_bins, dtype=np.float64):
    """[0, 1/B, ..., 1] as float64, each rounded to `dtype` first."""
    num_bins = check_positive_integer("num_bins", num_bins)
    nominal = np.arange(num_bins + 1, dtype=np.float64) / num_bins
    return nominal.astype(dtype).astype(np.float64)


def equal_mass_edges(confidence, num_bins):
    """Edges [0, c_(m_1), ..., c_(m_{B-1}), 1] with m_b = ceil(b·n/B)."""
    num_bins = check_positive_integer("num_bins", num_bins)
    ordered = np.sort(np.asarray(confidence, dtype=np.float64))
    n = ordered.shape[0]
    ranks = [-(-b * n // num_bins) for b in range(1, num_bins)]  # ceil
    interior = ordered[np.asarray(ranks, dtype=np.int64) - 1]
    return np.concatenate([[0.0], interior, [1.0]])


def bin_index(confidence, edges):
    """Right-closed bin of each confidence: #{interior edges < c}."""
    return np.searchsorted(np.asarray(edges)[1:-1], confidence, side="left")


def calibration_bins(labels, probs, num_bins=15, binning="width"):
    """Per-bin counts, accuracy and confidence of the top-class prediction.

    See the module docstring for the exact bin membership rule (right-closed
    bins, edges, ties, the precision of the comparison).

    Args:
        labels: integer labels, shape (n,).
        probs: probabilities, shape (n, k), rows summing to 1.
        num_bins: integer B >= 1.
        binning: "width" (equal-width bins over [0, 1]) or "mass"
            (equal-mass bins at quantiles of the confidences).

    Returns:
        A dict of float64 arrays of length B: `counts` (n_b), `accuracy`
        (acc_b, mean correctness in the bin; 0 if empty) and `confidence`
        (conf_b, mean confidence in the bin; 0 if empty), and `edges` of
        length B + 1 (nominal b / B for "width"; data quantiles for "mass").

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import calibration_bins
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> bins = calibration_bins([0, 1, 1, 0], probs, num_bins=5)
    >>> bins["counts"], bins["accuracy"]
    (array([0., 0., 1., 2., 1.]), array([0., 0., 0., 1., 1.]))
    >>> bins["confidence"]
    array([0.  , 0.  , 0.6 , 0.75, 0.9 ])
    """
    num_bins = check_positive_integer("num_bins", num_bins)
    check_choice("binning", binning, BINNINGS)
    dtype = comparison_dtype(probs)
    labels, probs = _check(labels, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    if binning == "width":
        index = bin_index(confidence, equal_width_edges(num_bins, dtype))
        edges = equal_width_edges(num_bins)
    else:
        edges = equal_mass_edges(confidence, num_bins)
        index = bin_index(confidence, edges)
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


def expected_calibration_error(labels, probs, num_bins=15, binning="width"):
    """ECE = Σ_b (n_b / n)·|acc_b − conf_b| (in [0, 1]).

    `binning` is "width" (equal-width, the usual ECE) or "mass" (equal-mass,
    sometimes called adaptive ECE); see `calibration_bins`.

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.
        num_bins: integer B >= 1.
        binning: "width" (default) or "mass".

    Returns:
        A float in [0, 1].

    Example: three non-empty bins, (1/4)·|0 − 0.6| (the wrong prediction)
    + (2/4)·|1 − 0.75| + (1/4)·|1 − 0.9| = 0.3:

    >>> import numpy as np
    >>> from keras_bayes.metrics import expected_calibration_error
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> round(expected_calibration_error([0, 1, 1, 0], probs, num_bins=5), 4)
    0.3
    """
    bins = calibration_bins(labels, probs, num_bins, binning)
    gaps = np.abs(bins["accuracy"] - bins["confidence"])
    return float(np.sum(bins["counts"] / bins["counts"].sum() * gaps))


def maximum_calibration_error(labels, probs, num_bins=15, binning="width"):
    """MCE = max over non-empty bins b of |acc_b − conf_b| (in [0, 1]).

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.
        num_bins: integer B >= 1.
        binning: "width" (default) or "mass", see `calibration_bins`.

    Returns:
        A float in [0, 1].

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import maximum_calibration_error
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> round(maximum_calibration_error([0, 1, 1, 0], probs, num_bins=5), 4)
    0.6
    """
    bins = calibration_bins(labels, probs, num_bins, binning)
    filled = bins["counts"] > 0
    gaps = np.abs(bins["accuracy"] - bins["confidence"])
    return float(np.max(gaps[filled]))


def classification_report(labels, probs, num_bins=15):
    """A dict with accuracy, nll, ece (equal-width) and brier.

    Args:
        labels: integer labels (n,), or one-hot labels (n, k).
        probs: probabilities (n, k), rows summing to 1.
        num_bins: equal-width bins of the ECE.

    Returns:
        `{"accuracy", "nll", "ece", "brier"}`, floats (see `accuracy`,
        `negative_log_likelihood`, `expected_calibration_error`,
        `brier_score`).

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import classification_report
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> report = classification_report([0, 1, 1, 0], probs, num_bins=5)
    >>> {key: round(value, 4) for key, value in report.items()}
    {'accuracy': 0.75, 'nll': 0.4004, 'ece': 0.3, 'brier': 0.25}
    """
    return {
        "accuracy": accuracy(labels, probs),
        "nll": negative_log_likelihood(labels, probs),
        "ece": expected_calibration_error(labels, probs, num_bins),
        "brier": brier_score(labels, probs),
    }
