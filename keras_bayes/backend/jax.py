"""`keras_bayes.backend` on JAX."""

import jax

from keras_bayes import _keras_compat
from keras_bayes.backend.common import agree_across_replicas  # noqa: F401
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import single_device  # noqa: F401

__all__ = ["agree_across_replicas", "assign_flat", "fuse_updates_by_default",
           "optimizer_state_detached", "raise_unless", "single_device"]


def raise_unless(finite, message):
    """Raise `FloatingPointError(message)` if `finite` is False.

    Only outside a trace: an error raised while a jitted step runs leaves
    the model and optimizer state donated to it deleted, so the posterior
    would be lost, which is what `nonfinite_gradients="raise"` exists to
    prevent. A traced step is refused with a `ValueError` instead.
    """
    if isinstance(finite, jax.core.Tracer):
        raise ValueError(
            "nonfinite_gradients='raise' cannot raise from inside a "
            "compiled JAX training step without losing the training "
            "state. Use nonfinite_gradients='skip' (and read "
            "`optimizer.nonfinite_steps`), or `run_eagerly=True`.")
    if not bool(finite):
        raise FloatingPointError(message)


def optimizer_state_detached(variables):
    """True while the JAX trainer holds the variables' values (e.g. when a
    traced training step failed and `fit` still finalizes)."""
    return any(_keras_compat.jax_state_detached(v) for v in variables)
