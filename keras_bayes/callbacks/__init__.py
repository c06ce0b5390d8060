"""Callbacks for training with keras_bayes optimizers."""

from keras_bayes.callbacks.swap_mean_weights import SwapMeanWeights

__all__ = ["SwapMeanWeights"]
