"""Backend-independent versions of the `keras_bayes.backend` functions.

The per-backend modules import what they do not change from here.
"""

import math

import keras
import numpy as np
from keras import ops

__all__ = ["agree_across_replicas", "all_finite", "assign_flat", "choose",
           "compile_function", "cut_flat", "elementwise_kernel", "flatten",
           "fuse_updates_by_default", "if_finite", "nan_unless_finite",
           "optimizer_state_detached", "raise_unless", "share_storage",
           "single_device", "standard_normal", "step_noise", "step_normal"]


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


def assign_flat(assign, writes):
    """For each `(variables, flat)` of `writes`, `assign` each variable its
    consecutive piece of the 1-D `flat`."""
    for variables, flat in writes:
        offset = 0
        for variable in variables:
            size = int(np.prod(tuple(variable.shape), dtype=np.int64))
            assign(variable, ops.reshape(flat[offset:offset + size],
                                         tuple(variable.shape)))
            offset += size


def share_storage(variables):
    """None: the values of JAX arrays and TensorFlow variables cannot be
    views of one buffer (torch's returns a `FlatStorage`)."""
    return None


def flatten(tensors):
    """The tensors (or variables) reshaped to 1-D and concatenated."""
    return ops.concatenate(
        [ops.reshape(ops.convert_to_tensor(t), (-1,)) for t in tensors], 0)


def cut_flat(flat, variables):
    """The 1-D `flat` (as `flatten` made it) cut into one piece per
    variable, reshaped and cast to its shape and dtype."""
    pieces, offset = [], 0
    for variable in variables:
        size = math.prod(int(dim) for dim in variable.shape)
        pieces.append(ops.cast(
            ops.reshape(flat[offset:offset + size], tuple(variable.shape)),
            variable.dtype))
        offset += size
    return pieces


def all_finite(tensors):
    """A boolean scalar: every entry of every tensor of the (non-empty)
    list is finite.

    Computed as isfinite(Σ_v |c_v|), c_v = `nan_unless_finite(t_v)`: NaN
    iff some entry of t_v is NaN or ±Inf, else 0 (no overflow). This shape
    of the test keeps compiled steps small: one reduction per tensor, and
    one over the stacked per-tensor results that XLA keeps as its own
    kernel. The direct `all(stack([all(isfinite(t)) ...]))` is simplified
    by XLA into a chain of V scalar `and`s that it copies into each of the
    ~5V kernels of the update reading the flag (V² work: most of a
    many-variable model's compile time on JAX).
    """
    checks = [nan_unless_finite(t) for t in tensors]
    return ops.isfinite(ops.sum(ops.abs(ops.stack(checks))))


def nan_unless_finite(tensor):
    """A scalar: NaN if `tensor` has a NaN or ±Inf entry, else 0.

    Σ 0·x: a compiler fuses the product into the reduction, one pass."""
    return ops.sum(ops.multiply(tensor, 0.0))


def fuse_updates_by_default(variables):
    """Compilers fuse the per-variable updates already."""
    return False


def optimizer_state_detached(variables):
    return False


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise of `shape`, drawn with one seed of `seed` (a
    `keras.random.SeedGenerator`, which it advances once)."""
    return keras.random.normal(shape, dtype=dtype, seed=seed)


def step_normal(shape, dtype, generator, step, start):
    """The update noise of one training step: N(0, 1) numbers `start`,
    `start + 1`, ... of step `step`'s stream, where the backend can address
    them by index (JAX, TensorFlow: `counter_step_normal`). Here a fresh
    draw from the `SeedGenerator` (which it advances); `step` and `start`
    are not used."""
    return keras.random.normal(shape, dtype=dtype, seed=generator)


def step_noise(shape, dtype, generator, step, start):
    """The update noise of a step as an `elementwise_kernel` takes it: here
    `step_normal`'s numbers themselves (a compiled step fuses them into the
    update)."""
    return step_normal(shape, dtype, generator, step, start)


def if_finite(finite, compute, keep):
    """`compute()` where the scalar `finite` is True, else `keep()`: two
    functions of no arguments returning the same structure of tensors.

    Both run, and the result is selected entry by entry (`ops.where`).
    """
    return keras.tree.map_structure(
        lambda new, old: ops.where(finite, new, old), compute(), keep())


def choose(flag, if_true, if_false):
    """`if_true` where the scalar boolean `flag` holds, else `if_false`:
    two tensors of one shape and dtype, chosen whole. Here a select
    entry by entry (`ops.where`), which a compiler fuses into the ops that
    read the result."""
    return ops.where(flag, if_true, if_false)


def compile_function(python_function, num_entries):
    """The optimizer's update function (of `num_entries` weights) as it is:
    JAX's trainer compiles the whole step already, and torch runs it
    eagerly."""
    return python_function


def elementwise_kernel(function):
    """`function` as it is: where the step or the update is compiled (JAX,
    TensorFlow), an elementwise function is fused as part of it. The
    kernel takes `out=`, the variables its result will be assigned to,
    where a backend can write them in place (torch); here it is unused."""
    def kernel(*args, out=None):
        return function(*args)

    return kernel


# ----------------------------------------------------------------------
# A counter-based N(0, 1) generator in `keras.ops`, the training noise of
# the JAX and TensorFlow backends (`standard_normal` there): on a CPU the
# backends' own generators (Threefry, Philox) were most of a posterior
# step's time and of its compile time (docs/speed.md). Its numbers are
# elementwise functions of their index, so a compiler fuses them into the
# update that consumes them.

# Multipliers of the `lowbias32` integer hash (C. Wellons, "Prospecting for
# hash functions", 2018) and the golden-ratio constant that separates the
# two words of a key.
_LOWBIAS32_M1 = 0x7FEB352D
_LOWBIAS32_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _uint32(value):
    return ops.convert_to_tensor(value, dtype="uint32")


def _lowbias32(x):
    """A bijective 32-bit integer hash with full avalanche (uint32 in, out)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, _uint32(_LOWBIAS32_M1))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, _uint32(_LOWBIAS32_M2))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def _key_words(seed):
    """Two well-mixed 32-bit words from a Keras seed `[s, c]`.

    A `SeedGenerator` hands out `[s, c]`, `[s, c + 1]`, ...: the words are
    a bijective hash of `c` for each `s`, so the keys of successive draws
    differ, and they differ in every bit position.
    """
    seed = ops.cast(seed, "uint32")
    first = _lowbias32(
        ops.add(_lowbias32(ops.add(seed[0], _uint32(_GOLDEN))), seed[1]))
    return first, _lowbias32(ops.bitwise_xor(first, _uint32(_GOLDEN)))


#: The most numbers one draw may have: the counter is 32-bit, and built
#: from an int32 range (XLA has no unsigned one).
MAX_DRAW_SIZE = 2**31 - 1


def check_draw_size(size, start):
    """A `ValueError` unless numbers `start`, ..., `start + size - 1` fit
    the 32-bit counter (`MAX_DRAW_SIZE`)."""
    end = size + start
    if end > MAX_DRAW_SIZE:
        raise ValueError(
            f"One noise draw is limited to {MAX_DRAW_SIZE} numbers (a 32-bit "
            f"counter); this one reaches number {end}. A posterior "
            "optimizer's update numbers all the weights of the model it "
            "was built for in one stream per step, so a model may hold at "
            "most that many weights.")


def counter_bits(size, seed, start=0):
    """`size` pseudo-random uint32 words of the key `seed` (uint32[2]),
    the words number `start`, ..., `start + size - 1` of its stream.

    Word i is lowbias32(lowbias32(i xor k1) + k2) with (k1, k2) the key's
    words: a counter-based generator, one small loop of integer operations
    instead of a separate random-number kernel. Any range of the stream can
    be drawn on its own: the words are functions of their index.
    """
    check_draw_size(size, start)
    size = size + start
    first, second = _key_words(seed)
    counter = ops.cast(ops.arange(start, size, dtype="int32"), "uint32")
    return _lowbias32(
        ops.add(_lowbias32(ops.bitwise_xor(counter, first)), second))


# M. Giles, "Approximating the erfinv function" (GPU Computing Gems, 2011),
# single precision: erfinv(u) = u·p(w) with w = −log((1 − u)(1 + u)), p a
# polynomial in w − 2.5 where w < 5 (|z| < 2.9) and in √w − 3 beyond;
# relative error below 4e-7 over the cells used here (checked against
# SciPy in tests/optimizers/test_training_noise.py). Highest power first.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06,
                   -4.39150654e-06, 0.00021858087, -0.00125372503,
                   -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322,
                -0.00367342844, 0.00573950773, -0.0076224613,
                0.00943887047, 1.00167406, 2.83297682)


def _horner(coefficients, x):
    value = coefficients[0]
    for coefficient in coefficients[1:]:
        value = value * x + coefficient
    return value


def bits_to_normal(bits):
    """N(0, 1) (float32) from uint32 words by the inverse CDF:
    z = √2·erfinv(u).

    u takes the top 24 bits to the centre of one of 2^24 equal cells of
    (−1, 1), so it is symmetric and never ±1; the draw is exact N(0, 1) up
    to that discretisation, truncated at |z| ≈ 5.4 (probability ~1e-7).
    The log of (1 − u)(1 + u), not the log1p of −u² that the backends'
    erfinv take: both factors are exact in float32 and log1p cost twice as
    much on a CPU (it was a third of a JAX posterior step).
    """
    return cells_to_normal(
        ops.cast(ops.cast(ops.right_shift(bits, 8), "int32"), "float32"))


def cells_to_normal(cells):
    """N(0, 1) (float32) from cell numbers k in [0, 2^24) (float32): the
    inverse CDF of `bits_to_normal` after its words were cut to 24 bits."""
    # (2k + 1)/2^24 - 1 as k·2^-23 + (2^-24 - 1): every term and the result
    # are exact in float32. The obvious (k + 0.5)·2^-23 - 1 is not: k + 0.5
    # needs 25 bits, and k = 2^24 - 1 rounded to 2^24, u = 1, z = inf.
    uniform = cells * (2.0 / 2**24) + (1.0 / 2**24 - 1.0)
    w = -ops.log((1.0 - uniform) * (1.0 + uniform))
    polynomial = ops.where(
        w < 5.0,
        _horner(_ERFINV_CENTRAL, w - 2.5),
        _horner(_ERFINV_TAIL, ops.sqrt(w) - 3.0))
    return (math.sqrt(2.0) * polynomial) * uniform


def counter_normal(shape, dtype, seed, start=0):
    """N(0, 1) noise of `shape` from the counter-based generator: the same
    contract as `keras.random.normal(shape, seed=seed)` (a call with a
    `SeedGenerator` advances it once, so two calls are independent and a
    seeded optimizer reproduces its run); `seed` may also be a key
    (uint32[2]). `start` skips that many numbers of the key's stream."""
    key = seed.next() if isinstance(seed, keras.random.SeedGenerator) else seed
    normal = bits_to_normal(counter_bits(math.prod(shape), key, start))
    return ops.cast(ops.reshape(normal, shape), dtype)


# Separates the update noise's keys [s ^ c, step] from the keys [s, n] the
# optimizer's `SeedGenerator` hands out (for its other draws).
_UPDATE_STREAM = 0x5851F42D


def counter_step_normal(shape, dtype, generator, step, start):
    """`step_normal` by the counter-based generator: numbers `start`, ... of
    the stream of the key [s ^ c, step], s the seed of the `SeedGenerator`
    (read, not advanced) and c a fixed constant.

    Every variable of a step draws its own range of one stream, so the
    noise of all variables may be drawn at once and cut into pieces, or
    each piece on its own (Keras' per-variable updates under a
    distribution), with the same numbers; and nothing is drawn from the
    generator inside a step's branch (`if_finite`).
    """
    seed = ops.cast(ops.convert_to_tensor(generator.state), "uint32")[0]
    key = ops.stack([
        ops.bitwise_xor(seed, _uint32(_UPDATE_STREAM)),
        ops.cast(step, "uint32")])
    return counter_normal(shape, dtype, key, start)
