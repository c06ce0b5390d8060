"""Backend-independent versions of the `keras_bayes.backend` functions.

The per-backend modules import what they do not change from here.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["agree_across_replicas", "assign_flat", "compile_function",
           "fuse_updates_by_default", "optimizer_state_detached",
           "raise_unless", "single_device", "standard_normal"]


def single_device():
    """True unless a `keras.distribution` is set."""
    return keras.distribution.distribution() is None


def agree_across_replicas(finite):
    """Without replicas the flag already holds for the whole step."""
    return finite


def raise_unless(finite, message):
    """Raise `FloatingPointError(message)` if `finite` is False (eager)."""
    if not bool(finite):
        raise FloatingPointError(message)


def assign_flat(assign, variables, flat):
    """`assign` each variable its consecutive piece of the 1-D `flat`."""
    offset = 0
    for variable in variables:
        size = int(np.prod(tuple(variable.shape), dtype=np.int64))
        assign(variable, ops.reshape(flat[offset:offset + size],
                                     tuple(variable.shape)))
        offset += size


def fuse_updates_by_default():
    return False


def optimizer_state_detached(variables):
    return False


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise of `shape`, drawn with one seed of `seed` (a
    `keras.random.SeedGenerator`, which it advances once)."""
    return keras.random.normal(shape, dtype=dtype, seed=seed)


def compile_function(python_function, num_entries):
    """The optimizer's update function (of `num_entries` weights) as it is:
    JAX's trainer compiles the whole step already, and torch runs it
    eagerly."""
    return python_function
