"""Callbacks for training with keras_bayes optimizers."""

from keras_bayes.callbacks.early_stopping import EarlyStopping
from keras_bayes.callbacks.model_checkpoint import ModelCheckpoint
from keras_bayes.callbacks.nonfinite_steps import NonfiniteSteps
from keras_bayes.callbacks.posterior_tensorboard import PosteriorTensorBoard
from keras_bayes.callbacks.swap_mean_weights import SwapMeanWeights
from keras_bayes.callbacks.uncertainty_metrics import UncertaintyMetrics

__all__ = ["EarlyStopping", "ModelCheckpoint", "NonfiniteSteps",
           "PosteriorTensorBoard", "SwapMeanWeights", "UncertaintyMetrics"]
