"""The posterior in TensorBoard: an MNIST-1D MLP trained by SOBA.

    python examples/posterior_tensorboard.py              # logs/mnist1d_soba
    python examples/posterior_tensorboard.py --epochs 30 --log-dir logs/run2
    tensorboard --logdir logs

Keras' `TensorBoard` writes the losses and accuracies (runs `train/` and
`validation/`), keras_bayes' `PosteriorTensorBoard` the per-layer median
posterior std and its histograms (run `posterior/`), under one log_dir.
Writing needs TensorFlow on every backend, Keras' callback also the
`tensorboard` package (`pip install tensorboard`), which serves the page.
See docs/tensorboard.md.
"""

import argparse
import os
import sys

# Run as a script, the checkout this file is in comes first on the path, so
# its keras_bayes is the one demonstrated.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import keras  # noqa: E402

import keras_bayes  # noqa: E402
from keras_bayes.datasets import load_mnist1d  # noqa: E402


def main(log_dir="logs/mnist1d_soba", epochs=20, every_n_epochs=1):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_mnist1d()
    model = keras.Sequential([
        keras.Input((40,)),
        keras.layers.Dense(128, activation="relu", name="hidden_1"),
        keras.layers.Dense(128, activation="relu", name="hidden_2"),
        keras.layers.Dense(10, name="logits"),
    ])
    optimizer = keras_bayes.optimizers.SOBA(
        learning_rate=0.2, ess=len(x_train), hess_init=0.1, beta2=0.9999,
        weight_decay=1e-3, seed=0)
    model.compile(optimizer,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32,
              validation_data=(x_test, y_test), verbose=2, callbacks=[
                  keras_bayes.callbacks.SwapMeanWeights(),
                  keras.callbacks.TensorBoard(log_dir),
                  keras_bayes.callbacks.PosteriorTensorBoard(
                      log_dir, every_n_epochs=every_n_epochs),
              ])
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log-dir", default="logs/mnist1d_soba")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every-n-epochs", type=int, default=1)
    args = parser.parse_args()
    main(args.log_dir, args.epochs, args.every_n_epochs)
