"""Bayesian optimizers: Keras optimizers that learn a posterior."""

from keras_bayes.optimizers.base import PosteriorOptimizer
from keras_bayes.optimizers.bsam import BSAM
from keras_bayes.optimizers.lie_group import LieAdditive
from keras_bayes.optimizers.lie_group import LieAffine
from keras_bayes.optimizers.lie_group import LieGroupBLR
from keras_bayes.optimizers.lie_group import LieMultiplicative
from keras_bayes.optimizers.lie_group import lie_group_blr
from keras_bayes.optimizers.sam import SAM
from keras_bayes.optimizers.sam import TwoPassOptimizer
from keras_bayes.optimizers.soba import IVON
from keras_bayes.optimizers.soba import SOBA
from keras_bayes.optimizers.vogn import VOGN

__all__ = ["BSAM", "IVON", "PosteriorOptimizer", "SAM", "SOBA",
           "TwoPassOptimizer"]
__all__ += ["LieAdditive", "LieAffine", "LieGroupBLR", "LieMultiplicative",
            "VOGN", "lie_group_blr"]
