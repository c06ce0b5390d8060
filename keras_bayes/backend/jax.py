"""`keras_bayes.backend` on JAX."""

import math

import jax

from keras_bayes import _keras_compat
from keras_bayes.backend import common
from keras_bayes.backend.common import agree_across_replicas  # noqa: F401
from keras_bayes.backend.common import all_finite  # noqa: F401
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import compile_function  # noqa: F401
from keras_bayes.backend.common import counter_normal
from keras_bayes.backend.common import counter_step_normal
from keras_bayes.backend.common import cut_flat  # noqa: F401
from keras_bayes.backend.common import elementwise_kernel  # noqa: F401
from keras_bayes.backend.common import flatten  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import nan_unless_finite  # noqa: F401
from keras_bayes.backend.common import share_storage  # noqa: F401
from keras_bayes.backend.common import single_device  # noqa: F401

__all__ = ["agree_across_replicas", "all_finite", "assign_flat", "choose",
           "compile_function", "cut_flat", "elementwise_kernel", "flatten",
           "fuse_updates_by_default", "if_finite", "nan_unless_finite",
           "optimizer_state_detached", "raise_unless", "share_storage",
           "single_device", "standard_normal", "step_noise", "step_normal"]


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


def step_normal(shape, dtype, generator, step, start):
    """The update noise of a step: `common.counter_step_normal`, which
    reads the generator without advancing it (a variable assigned inside
    `if_finite`'s `lax.cond` would leak the branch's tracer)."""
    return counter_step_normal(shape, dtype, generator, step, start)


def step_noise(shape, dtype, generator, step, start):
    """The update noise as an `elementwise_kernel` takes it: the numbers
    of `step_normal`, which the compiled step fuses into the update."""
    return step_normal(shape, dtype, generator, step, start)


def if_finite(finite, compute, keep):
    """`compute()` where `finite` is True, else `keep()`, as one
    `jax.lax.cond`.

    Not an entry-by-entry select: selecting each new slot between its old
    and new value made XLA (CPU) copy every donated slot buffer at the
    start of the step and split the update into more passes, 1.8x the
    update's time on a 1 M-weight variable (measured; docs/speed.md).
    """
    return jax.lax.cond(finite, compute, keep)


#: Tensors of at least this many entries are chosen by a `lax.cond`.
CHOOSE_COND_MIN_ENTRIES = 65_536


def choose(flag, if_true, if_false):
    """`if_true` if the scalar `flag` holds, else `if_false`: from
    `CHOOSE_COND_MIN_ENTRIES` entries up chosen whole by one
    `jax.lax.cond`, below that by `common.choose`'s select.

    An entry-by-entry select read by several of the update's outputs (the
    current mean: by the new Hessian and the new mean) was a pass of its
    own over the weights, since XLA's CPU fusion does not copy it into
    each reader (0.25 ms of SOBA's update of 1.6 M weights, measured); the
    branch that passes a buffer through costs nothing. On small tensors
    the pass is cheap and a conditional each costs compile time (a `cond`
    for every variable and run of MobileNetV2 made its first `fit` 2 s
    slower, measured).
    """
    if math.prod(jax.numpy.shape(if_true)) < CHOOSE_COND_MIN_ENTRIES:
        return common.choose(flag, if_true, if_false)
    return jax.lax.cond(flag, lambda: if_true, lambda: if_false)


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise: `common.counter_normal` (Threefry was most of a
    posterior update's time and of its compile time on a CPU)."""
    return counter_normal(shape, dtype, seed)
