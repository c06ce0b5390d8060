"""Calibration and uncertainty metrics on labels and predicted probabilities.

NumPy functions (no scikit-learn or SciPy needed) and streaming Keras
metrics. Conventions, detailed in each submodule's docstring:

- Inputs: integer `labels` (n,) in [0, k), or one-hot (n, k) with exactly
  one 1 per row (read as their argmax; other (n, k) labels raise);
  `probs` (n, k) with finite, non-negative rows summing to 1 within 1e-3,
  used as given (never renormalised; otherwise `ValueError`). Where
  samples are accepted, `probs` may be (S, n, k) and its mean over
  samples is the prediction.
  Empty inputs, mismatched lengths, fractional or out-of-range labels and
  NaN/inf raise `ValueError` naming the argument.
- Confidence c = max_j p_j; prediction = argmax (first maximal class).
- Calibration bins (`calibration`): right-closed, bin b holds
  e_b < c <= e_{b+1}, the first bin also everything <= e_1 (c = 0), the
  last everything > e_{B-1} (c = 1). `binning="width"`: e_b = b/B, compared
  in the input's float precision; `binning="mass"`: quantile edges
  e_b = c_(ceil(b·n/B)), tied confidences never split. Empty bins weigh 0
  in the ECE and are skipped by the MCE.
- Entropies are in nats (`uncertainty`).
- Ranking metrics (`ranking`): AUROC from average ranks, AP and FPR@TPR
  as scikit-learn defines them; one ROC point per distinct score.
- `misclassification_detection`: correct predictions are the positive
  class, ranked by confidence (score "max_prob", "entropy" or
  "mutual_information"; NaN when all predictions are correct or all
  wrong). `ood_detection`: OOD is the positive class, ranked by
  uncertainty ("entropy", "max_prob" = 1 − max prob, "mutual_information").
- Regression (`regression`): Gaussian NLL and central interval coverage.
- Streaming Keras metrics (`streaming`): `ExpectedCalibrationError`
  (equal-width bins, same convention as `calibration_bins`) and
  `BrierScore`.
"""

from keras_bayes.metrics.calibration import accuracy
from keras_bayes.metrics.calibration import brier_score
from keras_bayes.metrics.calibration import calibration_bins
from keras_bayes.metrics.calibration import classification_report
from keras_bayes.metrics.calibration import expected_calibration_error
from keras_bayes.metrics.calibration import maximum_calibration_error
from keras_bayes.metrics.calibration import negative_log_likelihood
from keras_bayes.metrics.detection import misclassification_detection
from keras_bayes.metrics.detection import ood_detection
from keras_bayes.metrics.ranking import auroc
from keras_bayes.metrics.ranking import average_precision
from keras_bayes.metrics.ranking import fpr_at_tpr
from keras_bayes.metrics.regression import gaussian_nll
from keras_bayes.metrics.regression import interval_coverage
from keras_bayes.metrics.report import evaluate_probabilities
from keras_bayes.metrics.report import evaluate_uncertainty
from keras_bayes.metrics.streaming import BrierScore
from keras_bayes.metrics.streaming import ExpectedCalibrationError
from keras_bayes.metrics.uncertainty import mutual_information
from keras_bayes.metrics.uncertainty import predictive_entropy
from keras_bayes.metrics.uncertainty import uncertainty_decomposition

__all__ = [
    "BrierScore",
    "ExpectedCalibrationError",
    "accuracy",
    "auroc",
    "average_precision",
    "brier_score",
    "calibration_bins",
    "evaluate_probabilities",
    "evaluate_uncertainty",
    "classification_report",
    "expected_calibration_error",
    "fpr_at_tpr",
    "gaussian_nll",
    "interval_coverage",
    "maximum_calibration_error",
    "misclassification_detection",
    "mutual_information",
    "negative_log_likelihood",
    "ood_detection",
    "predictive_entropy",
    "uncertainty_decomposition",
]
