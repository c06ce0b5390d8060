"""Training steps for optimizers that need more than one mean gradient.

- `contract`: what a training step and such an optimizer promise each
  other (`MultiPassOptimizer`, `PerExampleOptimizer`, `StepPlan`,
  `PassRecord`, `StepContext`); a leaf module the optimizers import.
- `TwoPassModel` (`two_pass`): the step of every `MultiPassOptimizer`
  (SAM, bSAM, SOBA with `mc_samples` > 1).
- `VOGNModel` and `per_example_squared_gradients` (`per_example`): the step
  of every `PerExampleOptimizer` (VOGN).
- `jax`, `tensorflow`, `torch`: the per-backend halves of those steps, one
  chosen at import (`_backend`); `shared` and `batch_norm`: the
  backend-neutral halves.
"""

from keras_bayes.training.contract import MultiPassOptimizer
from keras_bayes.training.contract import PassRecord
from keras_bayes.training.contract import PerExampleOptimizer
from keras_bayes.training.contract import StepContext
from keras_bayes.training.contract import StepPlan
from keras_bayes.training.per_example import VOGNModel
from keras_bayes.training.per_example import per_example_squared_gradients
from keras_bayes.training.two_pass import TwoPassModel
from keras_bayes.training.wrapper import WrapperModel

__all__ = [
    "MultiPassOptimizer",
    "PassRecord",
    "PerExampleOptimizer",
    "StepContext",
    "StepPlan",
    "TwoPassModel",
    "VOGNModel",
    "WrapperModel",
    "per_example_squared_gradients",
]
