"""The networks of the report's benchmarks, as plain Keras functional models."""

import keras

from keras_bayes.layers import FilterResponseNormalization
from keras_bayes.optimizers.base import check_choice
from keras_bayes.optimizers.base import check_positive_integer

NORMALIZATIONS = ("frn", "batchnorm")


def _normalization(kind, name):
    if kind == "frn":
        return FilterResponseNormalization(name=name)
    return keras.layers.BatchNormalization(name=name)


def _conv(filters, strides, name, kernel_size=3):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same",
        use_bias=False, kernel_initializer="he_normal", name=name)


def _activation(kind, x):
    # FRN ends in its own thresholded linear unit (TLU), so it replaces the
    # ReLU after each normalisation; BatchNorm is followed by a ReLU.
    return x if kind == "frn" else keras.layers.ReLU()(x)


def _block(x, filters, strides, kind, name):
    shortcut = x
    y = _conv(filters, strides, f"{name}_conv1")(x)
    y = _activation(kind, _normalization(kind, f"{name}_norm1")(y))
    y = _conv(filters, 1, f"{name}_conv2")(y)
    y = _normalization(kind, f"{name}_norm2")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, strides, f"{name}_shortcut",
                         kernel_size=1)(shortcut)
        shortcut = _normalization(kind, f"{name}_shortcut_norm")(shortcut)
    y = keras.layers.Add()([y, shortcut])
    return keras.layers.ReLU()(y)


def resnet20(num_classes=10, normalization="frn", input_shape=(32, 32, 3),
             width=16):
    """ResNet-20 for 32×32 images (He et al., 2016): 3 stages × 3 blocks.

    Args:
        num_classes: int, outputs (logits).
        normalization: `"frn"` (Filter Response Normalization + TLU, the
            report's choice: no batch statistics, so two-pass and sampled
            training see no batch coupling) or `"batchnorm"`.
        input_shape: the image shape.
        width: int, filters of the first stage (16; ×2 and ×4 later).

    Returns:
        A functional `keras.Model` named `resnet20_<normalization>`,
        about 0.27 M parameters at the defaults.
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    num_classes = check_positive_integer("num_classes", num_classes)
    width = check_positive_integer("width", width)
    inputs = keras.Input(input_shape)
    x = _conv(width, 1, "stem_conv")(inputs)
    x = _activation(normalization, _normalization(normalization,
                                                  "stem_norm")(x))
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _block(x, filters, strides, normalization,
                       f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet20_{normalization}")


def small_cnn(num_classes=10, input_shape=(32, 32, 3)):
    """A two-block CNN for quick CPU runs (about 0.1 M parameters)."""
    num_classes = check_positive_integer("num_classes", num_classes)
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(num_classes),
    ], name="small_cnn")


__all__ = ["resnet20", "small_cnn"]
