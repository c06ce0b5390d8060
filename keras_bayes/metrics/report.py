"""One call that evaluates a predictive distribution the way the papers do."""

from keras_bayes.metrics.calibration import classification_report
from keras_bayes.metrics.calibration import maximum_calibration_error
from keras_bayes.metrics.detection import misclassification_detection
from keras_bayes.metrics.detection import ood_detection
from keras_bayes.predictive import average_log_probs
from keras_bayes.predictive import softmax


def _averaged(log_samples):
    return softmax(average_log_probs(log_samples))


def _block(labels, probs, num_bins):
    report = classification_report(labels, probs, num_bins)
    report["mce"] = maximum_calibration_error(labels, probs, num_bins)
    report["misclassification_auroc"] = misclassification_detection(
        labels, probs)["auroc"]
    return report


def evaluate_probabilities(labels, probs, probs_ood=None, num_bins=15,
                           ood_score="entropy"):
    """The metrics of `evaluate_uncertainty` for given probabilities.

    For any classifier (no posterior needed): accuracy, nll, ece, mce,
    brier, misclassification_auroc and, with `probs_ood`, ood_auroc,
    ood_aupr_in, ood_aupr_out and ood_fpr_at_95_tpr.

    `labels` are integer class indices, shape (n,) or (n, 1), or one-hot,
    shape (n, k) with k the number of classes of `probs` and exactly one 1
    per row (then their argmax); other (n, k) labels raise `ValueError`.

    Args:
        labels: integer labels (n,) or (n, 1), or one-hot (n, k).
        probs: probabilities (n, k), e.g. `model.predict(x_test)` of a model
            ending in a softmax.
        probs_ood: optional probabilities on out-of-distribution inputs.
        num_bins: equal-width bins of ECE and MCE.
        ood_score: "entropy" (default), "max_prob" or
            "mutual_information" (see `ood_detection`).

    Returns:
        A dict of floats, keys as listed above.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.metrics import evaluate_probabilities
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> probs_ood = np.array([[0.5, 0.5], [0.55, 0.45]])
    >>> report = evaluate_probabilities([0, 1, 1, 0], probs,
    ...                                 probs_ood=probs_ood, num_bins=5)
    >>> round(report["ece"], 4), report["ood_auroc"]
    (0.3, 1.0)
    """
    block = _block(labels, probs, num_bins)
    if probs_ood is not None:
        ood = ood_detection(probs, probs_ood, score=ood_score)
        block.update({f"ood_{k}": v for k, v in ood.items() if k != "score"})
    return block


def evaluate_uncertainty(predictive, x, y, x_ood=None, num_bins=15,
                         ood_score="entropy", at_mean=True, averaged=True):
    """Accuracy, calibration and detection metrics of a `Predictive`.

    Args:
        predictive: a `keras_bayes.Predictive`.
        x, y: in-distribution inputs and labels: integer class indices,
            shape (n,) or (n, 1), or one-hot, shape (n, k) with exactly one
            1 per row and k the number of classes (see
            `evaluate_probabilities`).
        x_ood: optional out-of-distribution inputs (the positive class of
            the OOD scores).
        num_bins: equal-width bins of ECE and MCE.
        ood_score: the OOD score of `keras_bayes.metrics.ood_detection`
            ("entropy", "max_prob" or "mutual_information"; the latter only
            for the averaged predictions).
        at_mean, averaged: which predictions to evaluate.

    Returns:
        A dict with up to two entries, `"mean"` (at the posterior mean, or
        the weights as they are for a model without posterior) and `"bma"`
        (the average over `predictive.num_samples` samples). Each holds
        accuracy, nll, ece, mce, brier, misclassification_auroc (max-prob
        confidence, correct = positive) and, with `x_ood`, ood_auroc,
        ood_aupr_in, ood_aupr_out and ood_fpr_at_95_tpr.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0)
    predictive = keras_bayes.Predictive(model, num_samples=4,
                                        from_logits=True, seed=0)
    report = keras_bayes.metrics.evaluate_uncertainty(
        predictive, x, y, x_ood=10 * x)
    print(report["mean"]["ece"], report["bma"]["ood_auroc"])
    ```
    """
    result = {}
    if at_mean:
        probs = predictive.predict_at_mean(x)
        block = _block(y, probs, num_bins)
        if x_ood is not None:
            score = "entropy" if ood_score == "mutual_information" else (
                ood_score)
            ood = ood_detection(probs, predictive.predict_at_mean(x_ood),
                                score=score)
            block.update({f"ood_{k}": v for k, v in ood.items()
                          if k != "score"})
        result["mean"] = block
    if averaged:
        log_samples = predictive.predict_log_samples(x)
        probs = _averaged(log_samples)
        block = _block(y, probs, num_bins)
        if x_ood is not None:
            log_ood = predictive.predict_log_samples(x_ood)
            if ood_score == "mutual_information":
                ood = ood_detection(softmax(log_samples),
                                    softmax(log_ood), score=ood_score)
            else:
                ood = ood_detection(probs, _averaged(log_ood),
                                    score=ood_score)
            block.update({f"ood_{k}": v for k, v in ood.items()
                          if k != "score"})
        result["bma"] = block
    return result
