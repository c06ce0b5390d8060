"""The training steps of the Keras backend, chosen once at import.

As Keras chooses its trainer (`keras/src/backend/<name>/trainer.py`): every
backend module offers the same functions (`multi_pass_step`,
`per_example_step`, `per_example_gradients`, `no_gradient_tracking`,
`process_group`), and the rest of the package calls `steps.<function>`.
"""

import keras

if keras.backend.backend() == "jax":
    from keras_bayes.training import jax as steps
elif keras.backend.backend() == "tensorflow":
    from keras_bayes.training import tensorflow as steps
elif keras.backend.backend() == "torch":
    from keras_bayes.training import torch as steps
else:
    from keras_bayes.training import unsupported as steps

__all__ = ["steps"]
