"""Base noise families of the Lie-group Bayesian learning rule.

Every sampler is a small pure function `(shape, dtype, seed) -> tensor` built
on Keras' seeded random ops, so it runs unchanged on TensorFlow, JAX and
torch, inside `jit_compile` and eagerly. Pass the optimizer's tracked
`keras.random.SeedGenerator` as `seed`: each call then advances the
generator, so two variables (even of equal shape) and two steps always get
independent noise.

The families and their moments (c = `noise_scale` multiplies all of them),
as in the official `liegroups` code (`noise.py`):

| family     | draw                        | mean     | std       |
|------------|-----------------------------|----------|-----------|
| gaussian   | N(0, 1)                     | 0        | 1         |
| uniform    | U(−½, ½)                    | 0        | 1/√12     |
| laplace    | Laplace(0, 1)               | 0        | √2        |
| rayleigh   | Rayleigh(scale 1)           | √(π/2)   | √((4−π)/2)|

Only the uniform draw has a unit *range* rather than a unit scale; the
moments are those of the reference implementation, so its `noiseconfig`
values carry over as `noise_scale`.
"""

import math

import keras
from keras import ops

NOISE_FAMILIES = ("gaussian", "uniform", "laplace", "rayleigh")

# Mean and standard deviation of each family at noise_scale = 1.
NOISE_MEAN = {
    "gaussian": 0.0,
    "uniform": 0.0,
    "laplace": 0.0,
    "rayleigh": math.sqrt(math.pi / 2.0),
}
NOISE_STD = {
    "gaussian": 1.0,
    "uniform": 1.0 / math.sqrt(12.0),
    "laplace": math.sqrt(2.0),
    "rayleigh": math.sqrt((4.0 - math.pi) / 2.0),
}


def gaussian_noise(shape, dtype, seed):
    """N(0, 1)."""
    return keras.random.normal(shape, dtype=dtype, seed=seed)


def uniform_noise(shape, dtype, seed):
    """U(−½, ½): zero mean, range 1, std 1/√12."""
    return keras.random.uniform(shape, minval=-0.5, maxval=0.5, dtype=dtype,
                                seed=seed)


def laplace_noise(shape, dtype, seed):
    """Laplace(0, 1) by the inverse CDF: −sign(w)·log(1 − |w|), w ~ U(−1, 1).

    |w| is kept below 1 − ε (ε the float32 machine epsilon) so that the
    draw stays finite; this truncates the tails beyond |x| ≈ 16, a
    probability of about 1e-7.
    """
    w = keras.random.uniform(shape, minval=-1.0, maxval=1.0, dtype="float32",
                             seed=seed)
    magnitude = ops.minimum(ops.abs(w), 1.0 - 2.0**-23)
    return ops.cast(-ops.sign(w) * ops.log1p(-magnitude), dtype)


def rayleigh_noise(shape, dtype, seed):
    """Rayleigh(scale 1) by the inverse CDF: sqrt(−2·log(1 − u)), u ~ U[0, 1).

    Strictly positive except with probability 2^-24 (u = 0 gives 0).
    """
    u = keras.random.uniform(shape, dtype="float32", seed=seed)
    return ops.cast(ops.sqrt(-2.0 * ops.log1p(-u)), dtype)


SAMPLERS = {
    "gaussian": gaussian_noise,
    "uniform": uniform_noise,
    "laplace": laplace_noise,
    "rayleigh": rayleigh_noise,
}


def draw_noise(family, shape, dtype, seed):
    """One draw of the base noise `family` (at noise_scale 1)."""
    return SAMPLERS[family](tuple(shape), dtype, seed)
