"""Misclassification and out-of-distribution (OOD) detection (NumPy).

Both take predicted probabilities of shape (n, k), or per-sample
probabilities of shape (S, n, k) whose mean over the S samples is the
predictive distribution p̄ (needed for `score="mutual_information"`).

Score names (per example, computed from p̄ or the samples):

- "max_prob": the maximum probability max_j p̄_j (confidence). As an OOD
  score it is used as 1 − max_j p̄_j; the ranking is done on −max_j p̄_j,
  which orders examples identically without the rounding of 1 − x.
- "entropy": the predictive entropy H[p̄] (nats).
- "mutual_information": H[p̄] − (1/S)·Σ_s H[p_s]; needs 3-D input.

Positive classes:

- `misclassification_detection`: a CORRECT prediction is the positive
  class and the ranking score is the confidence (max_prob, −entropy or
  −mutual_information: higher = more likely correct). This is the AUROC of
  the misclassification columns in the bSAM paper's tables.
- `ood_detection`: an OOD example is the positive class and the ranking
  score is the uncertainty (1 − max_prob, entropy or mutual_information:
  higher = more likely OOD).

AUROC, AP and FPR at 95% TPR are defined in `ranking` (ties exactly as
scikit-learn). FPR@95%TPR is the smallest FPR among the ROC points (one
per distinct score threshold) whose TPR is >= 0.95.
"""

import numpy as np

from keras_bayes._validation import check_choice
from keras_bayes._validation import check_labels
from keras_bayes._validation import check_probs
from keras_bayes.metrics.ranking import auroc
from keras_bayes.metrics.ranking import average_precision
from keras_bayes.metrics.ranking import fpr_at_tpr
from keras_bayes.metrics.uncertainty import entropy_of_rows

SCORES = ("max_prob", "entropy", "mutual_information")


def _predictive_and_samples(probs, name, score):
    """(p̄ of shape (n, k), samples (S, n, k) or None), validated."""
    probs = check_probs(probs, name, ndims=(2, 3))
    if probs.ndim == 2:
        if score == "mutual_information":
            raise ValueError(
                f"`score='mutual_information'` needs per-sample "
                f"probabilities: `{name}` must have shape "
                f"(num_samples, n, num_classes). Received shape {probs.shape}"
            )
        return probs, None
    return probs.mean(axis=0), probs


def _uncertainty(predictive, samples, score):
    """Per-example uncertainty, higher = more uncertain (−max_prob for
    "max_prob", which ranks like 1 − max_prob)."""
    if score == "max_prob":
        return -predictive.max(axis=1)
    total = entropy_of_rows(predictive)
    if score == "entropy":
        return total
    expected = entropy_of_rows(samples).mean(axis=0)
    return np.maximum(total - expected, 0.0)


def misclassification_detection(labels, probs, score="max_prob"):
    """How well a confidence score separates correct from wrong predictions.

    Positive class: correct predictions (argmax_j p̄_j = label, first maximal
    class on ties). Ranking score: max_prob, −entropy or
    −mutual_information (higher = more confident).

    Args:
        labels: integer labels, shape (n,).
        probs: probabilities (n, k) or per-sample probabilities (S, n, k).
        score: "max_prob" (default), "entropy" or "mutual_information".

    Returns:
        A dict: `auroc`; `aupr_correct` (AP, correct = positive);
        `aupr_error` (AP, errors = positive, ranked by the uncertainty);
        `fpr_at_95_tpr` (fraction of errors accepted when keeping 95% of the
        correct predictions); `accuracy`; `score` (the name). If every
        prediction is correct, or every one wrong, the ranking metrics are
        undefined and are returned as NaN (no error is raised, since that
        is an outcome rather than bad input).

    Example: the one wrong prediction is also the least confident, so the
    confidence separates right from wrong perfectly:

    >>> import numpy as np
    >>> from keras_bayes.metrics import misclassification_detection
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> result = misclassification_detection([0, 1, 1, 0], probs)
    >>> result["accuracy"], result["auroc"]
    (0.75, 1.0)
    """
    check_choice("score", score, SCORES)
    predictive, samples = _predictive_and_samples(probs, "probs", score)
    labels = check_labels(labels, *predictive.shape)
    correct = predictive.argmax(axis=1) == labels
    confidence = -_uncertainty(predictive, samples, score)
    result = {"accuracy": float(correct.mean()), "score": score}
    if correct.all() or not correct.any():
        nan = float("nan")
        result.update(auroc=nan, aupr_correct=nan, aupr_error=nan,
                      fpr_at_95_tpr=nan)
        return result
    result.update(
        auroc=auroc(correct, confidence),
        aupr_correct=average_precision(correct, confidence),
        aupr_error=average_precision(~correct, -confidence),
        fpr_at_95_tpr=fpr_at_tpr(correct, confidence, 0.95),
    )
    return result


def ood_detection(probs_in, probs_out, score="entropy"):
    """How well an uncertainty score separates OOD from in-distribution data.

    Positive class: OOD (`probs_out`). Ranking score: entropy (default),
    1 − max_prob or mutual_information (higher = more likely OOD).

    Args:
        probs_in: predictions on in-distribution data, (n_in, k) or
            (S, n_in, k).
        probs_out: predictions on OOD data, (n_out, k) or (S', n_out, k),
            same k. Both need at least one example.
        score: "entropy" (default), "max_prob" or "mutual_information"
            (then both inputs must be 3-D).

    Returns:
        A dict: `auroc`; `aupr_in` (AP with in-distribution as the positive
        class, ranked by −score); `aupr_out` (AP with OOD positive, ranked by
        score); `fpr_at_95_tpr` (fraction of in-distribution examples
        flagged when 95% of the OOD examples are flagged); `score` (name).

    Example: confident in-distribution predictions, hesitant ones on the
    OOD inputs:

    >>> import numpy as np
    >>> from keras_bayes.metrics import ood_detection
    >>> probs_in = np.array([[0.95, 0.05], [0.1, 0.9]])
    >>> probs_out = np.array([[0.5, 0.5], [0.6, 0.4]])
    >>> ood_detection(probs_in, probs_out)["auroc"]
    1.0
    """
    check_choice("score", score, SCORES)
    pred_in, samples_in = _predictive_and_samples(probs_in, "probs_in", score)
    pred_out, samples_out = _predictive_and_samples(
        probs_out, "probs_out", score)
    if pred_in.shape[1] != pred_out.shape[1]:
        raise ValueError(
            "`probs_in` and `probs_out` must have the same number of "
            f"classes. Received {pred_in.shape[1]} and {pred_out.shape[1]}"
        )
    scores = np.concatenate([
        _uncertainty(pred_in, samples_in, score),
        _uncertainty(pred_out, samples_out, score),
    ])
    is_ood = np.concatenate([
        np.zeros(pred_in.shape[0], bool), np.ones(pred_out.shape[0], bool)
    ])
    return {
        "auroc": auroc(is_ood, scores),
        "aupr_in": average_precision(~is_ood, -scores),
        "aupr_out": average_precision(is_ood, scores),
        "fpr_at_95_tpr": fpr_at_tpr(is_ood, scores, 0.95),
        "score": score,
    }
