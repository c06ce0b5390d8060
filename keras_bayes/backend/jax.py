"""`keras_bayes.backend` on JAX."""

import math

import jax
import jax.numpy as jnp
from keras.random import SeedGenerator

from keras_bayes import _keras_compat
from keras_bayes.backend.common import agree_across_replicas  # noqa: F401
from keras_bayes.backend.common import assign_flat  # noqa: F401
from keras_bayes.backend.common import compile_function  # noqa: F401
from keras_bayes.backend.common import fuse_updates_by_default  # noqa: F401
from keras_bayes.backend.common import single_device  # noqa: F401

__all__ = ["agree_across_replicas", "assign_flat", "compile_function",
           "fuse_updates_by_default", "optimizer_state_detached",
           "raise_unless", "single_device", "standard_normal"]


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


# Multipliers of the `lowbias32` integer hash (C. Wellons, "Prospecting for
# hash functions", 2018) and the golden-ratio constant that separates the
# two words of a key.
_LOWBIAS32_M1 = 0x7FEB352D
_LOWBIAS32_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _lowbias32(x):
    """A bijective 32-bit integer hash with full avalanche (uint32 in, out)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_LOWBIAS32_M1)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(_LOWBIAS32_M2)
    return x ^ (x >> 16)


def _key_words(seed):
    """Two well-mixed 32-bit words from a Keras seed `[s, c]` (uint32[2]).

    A `SeedGenerator` hands out `[s, c]`, `[s, c + 1]`, ...: the words are
    a bijective hash of `c` for each `s`, so the keys of successive draws
    differ, and they differ in every bit position.
    """
    seed = seed.astype(jnp.uint32)
    first = _lowbias32(_lowbias32(seed[0] + jnp.uint32(_GOLDEN)) + seed[1])
    return first, _lowbias32(first ^ jnp.uint32(_GOLDEN))


def counter_bits(size, seed):
    """`size` pseudo-random uint32 words of the key `seed`.

    Word i is lowbias32(lowbias32(i xor k1) + k2), a counter-based
    generator: the words are elementwise functions of their index, which
    XLA fuses into the update that consumes them (one small loop, no
    separate random-number kernel and no 20-round Threefry per number).
    """
    first, second = _key_words(seed)
    counter = jax.lax.iota(jnp.uint32, size)
    return _lowbias32(_lowbias32(counter ^ first) + second)


def bits_to_normal(bits):
    """N(0, 1) from uint32 words by the inverse CDF: z = √2·erfinv(u).

    u takes the top 24 bits to the centre of one of 2^24 equal cells of
    (−1, 1), so it is symmetric and never ±1; the draw is exact N(0, 1) up
    to that discretisation, truncated at |z| ≈ 5.4 (probability ~1e-7).
    """
    cells = (bits >> 8).astype(jnp.int32).astype(jnp.float32)
    # (2k + 1)/2^24 - 1 as k·2^-23 + (2^-24 - 1): every term and the result
    # are exact in float32. The obvious (k + 0.5)·2^-23 - 1 is not: k + 0.5
    # needs 25 bits, and k = 2^24 - 1 rounded to 2^24, u = 1, z = inf (one
    # number in 2^24: a non-finite step every few hundred on a 100 k-weight
    # model).
    uniform = cells * (2.0 / 2**24) + (1.0 / 2**24 - 1.0)
    return math.sqrt(2.0) * jax.lax.erf_inv(uniform)


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise of `shape` from one seed of the `SeedGenerator` `seed`.

    The same contract as Keras' `keras.random.normal(shape, seed=seed)`
    (one call advances the generator once, so two calls are independent
    and a seeded optimizer reproduces its run), with the counter-based
    generator above instead of Threefry: on a CPU Threefry was most of a
    posterior update's time and of its compile time (docs/speed.md).
    """
    key = seed.next() if isinstance(seed, SeedGenerator) else seed
    size = math.prod(shape)
    normal = bits_to_normal(counter_bits(size, jnp.asarray(key)))
    return jnp.reshape(normal, shape).astype(dtype)
