"""Per-example gradients and VOGN's training step.

Kept for `from keras_bayes.per_example import VOGNModel`; the code lives in
`keras_bayes.training.per_example`.
"""

from keras_bayes.training.per_example import VOGNModel
from keras_bayes.training.per_example import per_example_squared_gradients

__all__ = ["VOGNModel", "per_example_squared_gradients"]
