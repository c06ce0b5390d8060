"""Bayesian optimizers: Keras optimizers that learn a posterior."""

from keras_bayes.optimizers.base import PosteriorOptimizer
from keras_bayes.optimizers.soba import IVON
from keras_bayes.optimizers.soba import SOBA

__all__ = ["IVON", "PosteriorOptimizer", "SOBA"]
