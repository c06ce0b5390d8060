"""`keras_bayes.backend` on TensorFlow (with `tf.distribute`)."""

import tensorflow as tf
from keras import ops

from keras_bayes.backend import common
from keras_bayes.backend.common import all_finite  # noqa: F401
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import choose  # noqa: F401
from keras_bayes.backend.common import cut_flat  # noqa: F401
from keras_bayes.backend.common import elementwise_kernel  # noqa: F401
from keras_bayes.backend.common import flatten  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import nan_unless_finite  # noqa: F401
from keras_bayes.backend.common import share_storage  # noqa: F401
from keras_bayes.backend.common import if_finite  # noqa: F401
from keras_bayes.backend.common import optimizer_state_detached  # noqa: F401

__all__ = ["agree_across_replicas", "all_finite", "assign_flat", "choose",
           "compile_function", "cut_flat", "elementwise_kernel", "flatten",
           "fuse_updates_by_default", "if_finite", "nan_unless_finite",
           "optimizer_state_detached", "raise_unless", "share_storage",
           "single_device", "standard_normal", "step_noise", "step_normal"]


def single_device():
    """True unless a `keras.distribution` or a `tf.distribute` strategy is
    set."""
    return common.single_device() and not tf.distribute.has_strategy()


def agree_across_replicas(finite):
    """On a `tf.distribute` replica, False if any replica saw a bad gradient.

    Keras all-reduces the gradients after this check runs, so one replica's
    NaN reaches every replica's update: every replica must skip.
    """
    if (not tf.distribute.has_strategy()
            or tf.distribute.in_cross_replica_context()):
        return finite
    bad = ops.cast(ops.logical_not(finite), "float32")
    bad = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, bad)
    return ops.equal(bad, 0.0)


def raise_unless(finite, message):
    """An assertion in the graph: `InvalidArgumentError` carrying `message`
    when `finite` is False (dropped by XLA under `jit_compile=True`)."""
    tf.debugging.Assert(finite, [message])


# Below this many entries the update stays in the plain graph: XLA's
# compile (~3 s on a CPU) would take more than it saves. Measured on the
# 2-core CPU: on a 1.6 M-entry MLP XLA saves ~26 ms a step (~16 ns an
# entry), so a 3 s compile is repaid within ~1 000 steps at ~200 k
# entries; on a 29 k-entry CNN the plain graph is already within 2 % of
# Adam and XLA only added compile time (first fit 1.4 s -> 5.2 s).
COMPILE_MIN_ENTRIES = 250_000


def compile_function(python_function, num_entries):
    """`python_function` as one XLA program (`tf.function(jit_compile=
    True)`) when the update covers at least `COMPILE_MIN_ENTRIES` weights:
    for the optimizer's update of all variables, which TensorFlow on a CPU
    otherwise runs as ~30 separate kernels per variable, each a pass over
    the weights (Keras compiles the whole step with XLA by default only on
    GPUs). Nested in an XLA step it is inlined; called eagerly it compiles
    once per input signature. Smaller updates: the function itself."""
    if num_entries < COMPILE_MIN_ENTRIES:
        return python_function
    return tf.function(python_function, jit_compile=True, autograph=False)


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise: `common.counter_normal`. `tf.random.stateless_normal`
    cost 22 ms on 1.6 M numbers on this CPU, more than Adam's whole step,
    and under XLA on a CPU it is slower still (770 ms, measured)."""
    return common.counter_normal(shape, dtype, seed)


def step_normal(shape, dtype, generator, step, start):
    """The update noise of a step: `common.counter_step_normal`."""
    return common.counter_step_normal(shape, dtype, generator, step, start)


def step_noise(shape, dtype, generator, step, start):
    """The update noise as an `elementwise_kernel` takes it: the numbers
    of `step_normal`, which the compiled step fuses into the update."""
    return step_normal(shape, dtype, generator, step, start)
