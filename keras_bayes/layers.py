"""Layers used by the report's networks."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_bayes")
class FilterResponseNormalization(keras.layers.Layer):
    """Filter Response Normalization with a Thresholded Linear Unit.

    Per example and channel, over the spatial axes (Singh & Krishnan, 2020):

    ```
    ν² = mean_{spatial}(x²)
    y  = γ · x / sqrt(ν² + ε) + β
    z  = max(y, τ)                      # TLU (skipped with `use_tlu=False`)
    ```

    It needs no batch statistics, so it behaves the same in training and
    inference and under two passes per step (SAM, bSAM): the report's
    ResNet-20 uses it instead of BatchNorm.

    Args:
        epsilon: float > 0 added to ν². Defaults to 1e-6.
        use_tlu: bool, apply the learned threshold τ. Defaults to True.
        axis: the channel axis. Defaults to -1 (channels last).

    Example (at initialisation γ = 1, β = τ = 0: each channel is divided by
    its root mean square, then negative values are cut at 0):

    >>> import keras
    >>> import numpy as np
    >>> from keras_bayes.layers import FilterResponseNormalization
    >>> x = np.array([[[3.0], [-4.0]]], "float32")  # (batch, 2 steps, 1 ch.)
    >>> y = FilterResponseNormalization()(x)
    >>> keras.ops.convert_to_numpy(y).round(3).ravel()  # 3 / rms, max(·, 0)
    array([0.849, 0.   ], dtype=float32)
    """

    def __init__(self, epsilon=1e-6, use_tlu=True, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not epsilon > 0:
            raise ValueError(
                f"`epsilon` must be > 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self.use_tlu = bool(use_tlu)
        self.axis = axis

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 3:
            raise ValueError(
                "FilterResponseNormalization needs inputs of rank >= 3 "
                f"(batch, spatial..., channels). Received: {input_shape}")
        axis = self.axis % rank
        shape = [1] * rank
        shape[axis] = input_shape[axis]
        self._reduce_axes = tuple(
            i for i in range(1, rank) if i != axis)
        self.gamma = self.add_weight(shape=tuple(shape), initializer="ones",
                                     name="gamma")
        self.beta = self.add_weight(shape=tuple(shape), initializer="zeros",
                                    name="beta")
        self.tau = (self.add_weight(shape=tuple(shape), initializer="zeros",
                                    name="tau") if self.use_tlu else None)

    def call(self, inputs):
        nu2 = ops.mean(ops.square(inputs), axis=self._reduce_axes,
                       keepdims=True)
        y = self.gamma * inputs * ops.rsqrt(nu2 + self.epsilon) + self.beta
        return ops.maximum(y, self.tau) if self.use_tlu else y

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "use_tlu": self.use_tlu,
                       "axis": self.axis})
        return config


__all__ = ["FilterResponseNormalization"]
