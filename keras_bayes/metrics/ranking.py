"""Threshold-free binary detection metrics in NumPy (AUROC, AP, FPR@TPR).

`targets` is a 1-D array of 0/1 or booleans (1 = positive class); `scores`
a 1-D array of finite reals where a larger score means "more likely
positive". A threshold t predicts positive when score >= t; the thresholds
are the distinct score values, so tied scores always fall on the same side.
These definitions match scikit-learn's `roc_auc_score`, `roc_curve` and
`average_precision_score` (no sample weights); scikit-learn is not needed.

All three metrics are undefined unless both classes are present, and then
raise `ValueError` (as scikit-learn's `roc_auc_score` does).
"""

import numbers

import numpy as np

from keras_bayes._validation import check_binary_targets
from keras_bayes._validation import check_scores


def _check_targets_scores(targets, scores):
    targets = check_binary_targets(targets, "targets")
    scores = check_scores(scores, targets.shape[0], "scores")
    positives = int(targets.sum())
    if positives == 0 or positives == targets.shape[0]:
        raise ValueError(
            "`targets` must contain both classes (0 and 1); the metric is "
            f"undefined with {positives} positives out of {targets.shape[0]}"
        )
    return targets, scores


def average_ranks(values):
    """1-based ranks of `values` in ascending order, ties sharing the mean."""
    values = np.asarray(values)
    n = values.shape[0]
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    first = np.flatnonzero(starts)  # 0-based position of each tie group
    after = np.concatenate([first[1:], [n]])
    # Mean of the 1-based ranks first + 1, ..., after.
    group_rank = (first + 1 + after) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(starts) - 1]
    return ranks


def _counts_above_thresholds(targets, scores):
    """True and false positives at each distinct threshold, descending."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ordered = scores[order]
    hits = targets[order].astype(np.float64)
    last_of_group = np.concatenate(
        [np.flatnonzero(ordered[1:] != ordered[:-1]), [ordered.shape[0] - 1]]
    )
    true_pos = np.cumsum(hits)[last_of_group]
    false_pos = last_of_group + 1 - true_pos
    return true_pos, false_pos


def auroc(targets, scores):
    """Area under the ROC curve, from ranks (Mann-Whitney U).

    AUROC = (Σ_{i positive} rank_i − P(P+1)/2) / (P·N), where rank_i is the
    ascending rank of score_i among all n scores with ties given their
    average rank, and P, N are the numbers of positives and negatives. It
    is the probability that a random positive scores above a random
    negative, ties counting 1/2, and equals the trapezoidal area under the
    ROC curve (scikit-learn's `roc_auc_score`).

    Args:
        targets: 0/1 or booleans (n,), 1 = positive; both classes present.
        scores: finite reals (n,), larger = more likely positive.

    Returns:
        A float in [0, 1]; 0.5 for an uninformative score.

    Example: of the 2 × 2 (positive, negative) pairs, only (0.35, 0.4) is
    ordered wrongly:

    >>> from keras_bayes.metrics import auroc
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    targets, scores = _check_targets_scores(targets, scores)
    ranks = average_ranks(scores)
    positives = float(targets.sum())
    negatives = targets.shape[0] - positives
    rank_sum = ranks[targets].sum()
    return float(
        (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    )


def average_precision(targets, scores):
    """AP = Σ_t (R_t − R_{t−1})·P_t over the distinct thresholds t.

    Thresholds are taken in decreasing order; P_t = TP_t / (TP_t + FP_t) and
    R_t = TP_t / P are the precision and recall when predicting positive
    for score >= t, and R_0 = 0. This is scikit-learn's
    `average_precision_score` (no interpolation; ties grouped).

    Args:
        targets: 0/1 or booleans (n,), 1 = positive; both classes present.
        scores: finite reals (n,), larger = more likely positive.

    Returns:
        A float in (0, 1].

    Example: recall 1/2 at precision 1 (threshold 0.8), then 1 at
    precision 2/3 (threshold 0.35):

    >>> from keras_bayes.metrics import average_precision
    >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    targets, scores = _check_targets_scores(targets, scores)
    true_pos, false_pos = _counts_above_thresholds(targets, scores)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def fpr_at_tpr(targets, scores, tpr=0.95):
    """Smallest false-positive rate at which the TPR reaches `tpr`.

    FPR@TPR = min { FPR_t : TPR_t >= tpr } over the points of the ROC curve,
    one point per distinct score threshold t (predict positive when
    score >= t), with TPR_t = TP_t / P and FPR_t = FP_t / N. This is
    `fpr[tpr >= level].min()` for scikit-learn's
    `roc_curve(..., drop_intermediate=False)`. No interpolation between
    thresholds; TPR_t is compared with `tpr` exactly (19/20 >= 0.95 holds).

    Args:
        targets: 0/1 or booleans (n,), 1 = positive; both classes present.
        scores: finite reals (n,), larger = more likely positive.
        tpr: the TPR level, a real number in (0, 1]; 0.95 gives FPR@95%TPR.

    Returns:
        A float in [0, 1].

    Example: catching both positives needs the threshold 0.35, which
    also accepts the negative scored 0.4:

    >>> from keras_bayes.metrics import fpr_at_tpr
    >>> fpr_at_tpr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], tpr=0.95)
    0.5
    >>> fpr_at_tpr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], tpr=0.5)
    0.0
    """
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real) or not (
        0.0 < tpr <= 1.0
    ):
        raise ValueError(f"`tpr` must be in (0, 1]. Received: {tpr!r}")
    targets, scores = _check_targets_scores(targets, scores)
    true_pos, false_pos = _counts_above_thresholds(targets, scores)
    tpr_curve = true_pos / true_pos[-1]
    fpr_curve = false_pos / false_pos[-1]
    return float(np.min(fpr_curve[tpr_curve >= tpr]))
