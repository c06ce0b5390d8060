"""Statistics of the training noise: the backend's generator
(`keras_bayes.backend.standard_normal`: counter-based on JAX, TensorFlow and
torch, Keras' own on other backends) and the noise a posterior optimizer puts
into its samples, over parameters, variables, steps and seeds."""

import keras
import numpy as np
import pytest
from scipy import stats

from keras_bayes import backend
from keras_bayes.backend import common
from keras_bayes.optimizers import SOBA

N = 200_000
# |correlation| of two independent samples of N exceeds 5/sqrt(N) with
# probability 6e-7.
CORRELATION_BOUND = 5.0 / np.sqrt(N)

# The generator is written in `keras.ops` (keras_bayes/backend/common.py);
# torch lacks the uint32 arithmetic it needs and draws the same streams in
# int32 (keras_bayes/backend/torch.py, checked against NumPy by
# `test_step_noise_matches_a_numpy_derivation` and
# `test_training_noise_matches_a_numpy_derivation`).
on_counter = pytest.mark.skipif(
    keras.backend.backend() not in ("jax", "tensorflow"),
    reason="`common`'s counter-based generator is JAX's and TensorFlow's")


def _lowbias32_numpy(x):
    x = x.astype(np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    return x ^ (x >> np.uint64(16))


def _counter_bits_numpy(size, seed, start=0):
    """The generator's words re-derived in NumPy (uint64 arithmetic masked
    to 32 bits), from its definition in keras_bayes/backend/common.py."""
    golden, mask = 0x9E3779B9, 0xFFFFFFFF

    def hash_(value):  # one Python int
        return int(_lowbias32_numpy(np.array([value & mask]))[0])

    first = hash_(hash_(seed[0] + golden) + seed[1])
    second = hash_(first ^ golden)
    counter = np.arange(start, start + size, dtype=np.uint64)
    return _lowbias32_numpy(
        (_lowbias32_numpy(counter ^ np.uint64(first)) + np.uint64(second))
        & np.uint64(mask))


def _expected_normal(size, key, start=0):
    """√2·erfinv(u) (SciPy, float64) of the words `start`, ... of the key's
    stream, u the centre of each word's 24-bit cell."""
    from scipy.special import erfinv

    cells = _counter_bits_numpy(size, key, start) >> np.uint64(8)
    u = (2.0 * cells.astype(np.float64) + 1.0) / 2**24 - 1.0
    return np.sqrt(2.0) * erfinv(u)


def _draw(generator, shape=(N,)):
    return keras.ops.convert_to_numpy(
        backend.standard_normal(shape, "float32", generator)
    ).astype(np.float64)


def _check_standard_normal(z):
    z = z.ravel()
    n = z.size
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 5.0 / np.sqrt(n)
    # The sample variance of N(0, 1) has variance 2/n.
    assert abs(z.var() - 1.0) < 5.0 * np.sqrt(2.0 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def _uncorrelated(a, b):
    n = min(a.size, b.size)
    return abs(np.corrcoef(a[:n], b[:n])[0, 1]) < 5.0 / np.sqrt(n)


def test_standard_normal_is_standard_normal_and_independent():
    generator = keras.random.SeedGenerator(7)
    z = _draw(generator)
    _check_standard_normal(z)
    # Tails: at N draws the largest |z| is almost surely above 3.5; the
    # counter-based draw stops at |z| ≈ 5.4.
    assert 3.5 < np.abs(z).max() < 6.5
    # Fourth moment (a CLT-like approximation would miss it): 3 ± 5 sd.
    assert abs(np.mean(z**4) - 3.0) < 5.0 * np.sqrt(96.0 / N)
    # Neighbouring parameters (lags 1, 2 and a power of two).
    for lag in (1, 2, 1024):
        assert _uncorrelated(z[lag:], z[:-lag])
        assert _uncorrelated(z[lag:]**2, z[:-lag]**2)
    # The next draw of the generator (the next variable or step) is fresh,
    # so is a neighbouring seed; squares catch dependence beyond linear.
    z_next = _draw(generator)
    z_seed = _draw(keras.random.SeedGenerator(8))
    for other in (z_next, z_seed):
        assert _uncorrelated(z, other)
        assert _uncorrelated(z**2, other**2)
    # Same number of parameters, different shapes: the same stream.
    again = keras.random.SeedGenerator(7)
    np.testing.assert_array_equal(_draw(again, (400, 500)).ravel(), z)


def test_standard_normal_is_reproducible_and_seeds_differ():
    a = _draw(keras.random.SeedGenerator(3), (1000,))
    b = _draw(keras.random.SeedGenerator(3), (1000,))
    c = _draw(keras.random.SeedGenerator(4), (1000,))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.01


@on_counter
def test_counter_bits_match_a_numpy_derivation():
    # JAX and TensorFlow give the same words for the same key.
    for seed in ([0, 0], [7, 3], [2**32 - 1, 12345]):
        bits = keras.ops.convert_to_numpy(common.counter_bits(
            5000, np.asarray(seed, dtype="uint32")))
        np.testing.assert_array_equal(bits.astype(np.uint64),
                                      _counter_bits_numpy(5000, seed))


@on_counter
def test_counter_bits_are_balanced():
    counter_bits = common.counter_bits
    bits = keras.ops.convert_to_numpy(counter_bits(
        N, np.asarray([0, 0], dtype="uint32"))).astype(np.uint64)
    ones = np.array([((bits >> b) & 1).mean() for b in range(32)])
    # Each bit is Bernoulli(½): the sd of its mean is 0.5/sqrt(N).
    assert np.all(np.abs(ones - 0.5) < 5 * 0.5 / np.sqrt(N))
    # A one-bit change of the key changes about half of the bits.
    other = keras.ops.convert_to_numpy(counter_bits(
        N, np.asarray([0, 1], dtype="uint32"))).astype(np.uint64)
    flipped = np.mean([((bits ^ other) >> b) & 1 for b in range(32)])
    assert abs(flipped - 0.5) < 0.01


def _standardised_noise(seed, steps, fused, shapes=((60, 50), (3000,))):
    """z = (θ − m)/σ of each variable after each of `steps` SOBA steps from
    random gradients."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"))
                 for s in shapes]
    opt = SOBA(0.01, ess=100.0, hess_init=0.5, seed=seed,
               fused_update=fused)
    draws = []
    for _ in range(steps):
        grads = [rng.normal(size=s).astype("float32") for s in shapes]
        opt.apply_gradients(zip(grads, variables))
        draws.append([
            (keras.ops.convert_to_numpy(v) - m).ravel() / s.ravel()
            for v, m, s in zip(variables, opt.posterior_mean(),
                               opt.posterior_std())])
    return draws


@pytest.mark.parametrize("fused", [False, True],
                         ids=["per-variable", "fused"])
def test_training_noise_statistics(fused):
    """SOBA's samples: mean 0, variance 1, normal, uncorrelated across
    variables and steps; `seed=` reproduces them, another seed does not."""
    draws = _standardised_noise(seed=5, steps=3, fused=fused)
    for step in draws:
        _check_standard_normal(np.concatenate(step))
        assert _uncorrelated(step[0], step[1])
    for first, second in zip(draws, draws[1:]):
        for a, b in zip(first, second):
            assert _uncorrelated(a, b)
    again = _standardised_noise(seed=5, steps=1, fused=fused)
    for a, b in zip(draws[0], again[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    other = _standardised_noise(seed=6, steps=1, fused=fused)
    assert not np.allclose(draws[0][1], other[0][1])


@on_counter
def test_every_24_bit_cell_gives_a_finite_symmetric_normal():
    """All 2^24 cells of the inverse-CDF transform, the extremes included:
    finite (a cell that rounded to u = ±1 made z = ±inf and a NaN step),
    symmetric (cell k and cell 2^24 - 1 - k give -z and z), and each
    z inside the truncation |z| < 5.5."""
    cells = np.arange(2**24, dtype=np.uint32)
    z = keras.ops.convert_to_numpy(
        common.bits_to_normal(cells << np.uint32(8)))
    assert np.all(np.isfinite(z))
    assert np.all(np.abs(z) < 5.5)
    np.testing.assert_array_equal(z, -z[::-1])
    assert np.all(np.diff(z) > 0)  # strictly increasing in the cell


@on_counter
def test_inverse_cdf_matches_scipy_on_every_cell():
    """The erfinv approximation (Giles' single-precision polynomials, with
    log((1 − u)(1 + u))) against SciPy's double-precision √2·erfinv at the
    centre of each of the 2^24 cells: catches a wrong coefficient or a lost
    digit, which the statistical tests would not."""
    from scipy.special import erfinv

    cells = np.arange(2**24, dtype=np.uint32)
    z = keras.ops.convert_to_numpy(
        common.bits_to_normal(cells << np.uint32(8))).astype(np.float64)
    u = (2.0 * cells.astype(np.float64) + 1.0) / 2**24 - 1.0
    reference = np.sqrt(2.0) * erfinv(u)
    # Float32 output: a few ulps (2^-23 relative) of approximation error.
    np.testing.assert_allclose(z, reference, rtol=1e-6, atol=1e-7)


def test_step_noise_matches_a_numpy_derivation():
    """The update noise of every backend (`backend.step_normal`; torch's
    own int32 version of the generator, compiled from
    `NOISE_COMPILE_MIN_ENTRIES` numbers): number k of step t's stream is
    √2·erfinv(u) of word k of the key [seed ^ 0x5851F42D, t], u the centre
    of the word's 24-bit cell, re-derived here in NumPy and SciPy. A range
    drawn alone, small or large, equals the same range of a larger draw
    (on torch to rounding: an eager draw and a compiled one may round the
    last bit differently)."""
    seed, step = 11, 5
    generator = keras.random.SeedGenerator(seed)
    key = [seed ^ 0x5851F42D, step]
    for size, start in ((6000, 0), (100, 40), (5000, 300)):
        z = keras.ops.convert_to_numpy(backend.step_normal(
            (size,), "float32", generator, step, start)).astype(np.float64)
        np.testing.assert_allclose(z, _expected_normal(size, key, start),
                                   rtol=1e-6, atol=1e-6)
    whole = keras.ops.convert_to_numpy(backend.step_normal(
        (6000,), "float32", generator, step, 0))
    for size, start in ((100, 40), (5000, 300)):
        part = keras.ops.convert_to_numpy(backend.step_normal(
            (size,), "float32", generator, step, start))
        if keras.backend.backend() == "torch":
            np.testing.assert_allclose(part, whole[start:start + size],
                                       rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(part, whole[start:start + size])
    # The generator is read, not advanced; another step, other numbers.
    again = keras.ops.convert_to_numpy(backend.step_normal(
        (6000,), "float32", generator, step, 0))
    np.testing.assert_array_equal(again, whole)
    other = keras.ops.convert_to_numpy(backend.step_normal(
        (6000,), "float32", generator, step + 1, 0))
    assert np.mean(other == whole) < 0.01


def test_training_noise_matches_a_numpy_derivation():
    """The other training noise (`backend.standard_normal`: the extra
    samples of bSAM and `mc_samples`, the Lie-group rules' Gaussian): the
    n-th draw of a `SeedGenerator(s)` is the stream of the key [s, n],
    re-derived in NumPy and SciPy, on every backend (torch in its own
    int32 code, compiled for the larger draw)."""
    generator = keras.random.SeedGenerator(7)
    for draw, size in enumerate((6000, 300)):
        z = keras.ops.convert_to_numpy(backend.standard_normal(
            (size,), "float32", generator)).astype(np.float64)
        np.testing.assert_allclose(z, _expected_normal(size, [7, draw]),
                                   rtol=1e-6, atol=1e-6)


def test_counter_bits_refuse_a_draw_beyond_the_counter():
    """A 32-bit counter would repeat numbers: the size is refused, naming
    the limit and what to do."""
    with pytest.raises(ValueError, match="limited to 2147483647 numbers"):
        common.counter_bits(2**31, np.asarray([0, 0], dtype="uint32"))
    with pytest.raises(ValueError, match="limited to 2147483647 numbers"):
        backend.step_normal((2**20,), "float32",
                            keras.random.SeedGenerator(1), 0, 2**31 - 10)
