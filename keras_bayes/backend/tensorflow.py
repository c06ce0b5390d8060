"""`keras_bayes.backend` on TensorFlow (with `tf.distribute`)."""

import math

import tensorflow as tf
from keras import ops
from keras.random import SeedGenerator

from keras_bayes.backend import common
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import optimizer_state_detached  # noqa: F401

__all__ = ["agree_across_replicas", "assign_flat", "compile_function",
           "fuse_updates_by_default", "optimizer_state_detached",
           "raise_unless", "single_device", "standard_normal"]


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


# The counter-based generator of the JAX backend (`jax.py` explains it),
# written with TensorFlow ops: `tf.random.stateless_normal` cost 22 ms on
# 1.6 M numbers on this CPU, more than Adam's whole step, and under XLA on
# a CPU it is slower still (770 ms, measured); the counter hash and the
# inverse CDF below fuse into the update that consumes them.
_LOWBIAS32_M1 = 0x7FEB352D
_LOWBIAS32_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _lowbias32(x):
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(_LOWBIAS32_M1, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(_LOWBIAS32_M2, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def counter_bits(size, seed):
    """`size` uint32 words of the key `seed`: the same words as the JAX
    backend's `counter_bits` for the same key."""
    seed = tf.cast(seed, tf.uint32)
    golden = tf.constant(_GOLDEN, tf.uint32)
    first = _lowbias32(_lowbias32(seed[0] + golden) + seed[1])
    second = _lowbias32(tf.bitwise.bitwise_xor(first, golden))
    # XLA has no uint32 range; the cast wraps like JAX's uint32 iota.
    counter = tf.cast(
        tf.range(size, dtype=tf.int32 if size < 2**31 else tf.int64),
        tf.uint32)
    return _lowbias32(
        _lowbias32(tf.bitwise.bitwise_xor(counter, first)) + second)


# Always compiled by XLA, also when called outside the compiled update
# (e.g. the extra samples of a two-pass step): TensorFlow's own erfinv
# kernel returns inf for the top cell (u = 1 − 2^-24) and is flat near it;
# XLA's, as on JAX, is finite and strictly increasing over all 2^24 cells
# (tests/optimizers/test_training_noise.py checks every cell).
@tf.function(jit_compile=True, autograph=False)
def bits_to_normal(bits):
    """N(0, 1) from uint32 words: √2·erfinv(u), u the centre of one of 2^24
    equal cells of (−1, 1) (exact in float32; `jax.py` says why)."""
    cells = tf.cast(tf.cast(tf.bitwise.right_shift(bits, 8), tf.int32),
                    tf.float32)
    uniform = cells * (2.0 / 2**24) + (1.0 / 2**24 - 1.0)
    return math.sqrt(2.0) * tf.math.erfinv(uniform)


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise of `shape` from one seed of the `SeedGenerator`
    `seed` (one call advances it once), by the counter-based generator."""
    key = seed.next() if isinstance(seed, SeedGenerator) else seed
    size = math.prod(shape)
    normal = bits_to_normal(counter_bits(size, key))
    return tf.cast(tf.reshape(normal, shape), dtype)
