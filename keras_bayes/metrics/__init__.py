"""Calibration and uncertainty metrics on labels and predicted probabilities."""

from keras_bayes.metrics.calibration import accuracy
from keras_bayes.metrics.calibration import brier_score
from keras_bayes.metrics.calibration import calibration_bins
from keras_bayes.metrics.calibration import classification_report
from keras_bayes.metrics.calibration import expected_calibration_error
from keras_bayes.metrics.calibration import negative_log_likelihood

__all__ = [
    "accuracy",
    "brier_score",
    "calibration_bins",
    "classification_report",
    "expected_calibration_error",
    "negative_log_likelihood",
]
