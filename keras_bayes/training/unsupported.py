"""The training steps on a backend keras_bayes does not train on (e.g.
numpy, which cannot differentiate): every step raises."""

import contextlib

import keras


def _unsupported(what):
    return NotImplementedError(
        f"{what} is not available on the {keras.backend.backend()!r} "
        "backend (jax, tensorflow and torch are supported).")


def no_gradient_tracking():
    return contextlib.nullcontext()


def process_group():
    raise ValueError(
        "keras_bayes.distributed drives torch.distributed and needs the "
        f"torch backend. Backend: {keras.backend.backend()!r}")


def multi_pass_step(model, plan, *args, gradient_reducer=None):
    raise _unsupported("TwoPassModel's multi-pass step")


def per_example_gradients(model, loss, trainable, non_trainable, x, y):
    raise _unsupported("Per-example gradients")


def per_example_step(model, layers, *args):
    raise _unsupported("VOGNModel's per-example step")
