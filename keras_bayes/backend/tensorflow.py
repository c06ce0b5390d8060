"""`keras_bayes.backend` on TensorFlow (with `tf.distribute`)."""

import tensorflow as tf
from keras import ops

from keras_bayes.backend import common
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import optimizer_state_detached  # noqa: F401
from keras_bayes.backend.common import standard_normal  # noqa: F401

__all__ = ["agree_across_replicas", "assign_flat", "fuse_updates_by_default",
           "optimizer_state_detached", "raise_unless", "single_device",
           "standard_normal"]


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
