"""Where a SOBA update's time goes on JAX: its parts, timed alone.

Each part is one `jax.jit` function over flat float32 arrays of `--size`
entries (default: the 1,585,162 parameters of step_cost.py's `wide_mlp`),
timed as the mean of `--repeats` calls after one warm-up call:

* `adam`: Adam's elementwise update (3 inputs + gradient, 3 outputs);
* `counter_bits`: the 32-bit counter hash behind the JAX training noise
  (`keras_bayes.backend.common.counter_bits`);
* `counter_normal`: those bits turned into N(0, 1) by the inverse CDF
  (`bits_to_normal`: the noise SOBA draws every step);
* `erf_inv`: `jax.lax.erf_inv` alone on ready floats;
* `erf_inv_normal`: the same bits turned into N(0, 1) with `jax.lax.erf_inv`
  (its log1p of −u²) instead of `bits_to_normal`'s log((1 − u)(1 + u));
* `threefry_normal`: `jax.random.normal` (Keras' default generator);
* `box_muller`: a Box-Muller transform of the same counter bits (two
  normals per pair of words), the usual alternative to the inverse CDF;
* `soba_update`: SOBA's elementwise update with its noise, fused by XLA
  (4 state inputs + gradient, 4 outputs), without the Keras step around it.

The ratio `soba_update / adam` is the floor of the optimizer part of a
SOBA step on this backend as the code stands; step_cost.py measures the
whole step inside `fit` (results in benchmarks/results/).

Usage: KERAS_BACKEND=jax python benchmarks/jax_update_parts.py [--size N]
"""

import argparse
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from keras_bayes.backend import common as noise  # noqa: E402


def time_ms(function, *args, repeats=30):
    function = jax.jit(function)
    jax.block_until_ready(function(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = function(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e3


def adam(param, grad, m, v):
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad * grad
    return param - 1e-3 * m / (jnp.sqrt(v) + 1e-7), m, v


def box_muller(key, size):
    half = size // 2 + 1
    first = noise.counter_bits(half, key)
    second = noise._lowbias32(first ^ jnp.uint32(0x9E3779B9))
    u1 = ((first >> 8).astype(jnp.float32) + 1.0) * (1.0 / 2**24)
    angle = (second >> 8).astype(jnp.float32) * (2 * math.pi / 2**24)
    radius = jnp.sqrt(-2.0 * jnp.log(u1))
    return jnp.concatenate([radius * jnp.cos(angle),
                            radius * jnp.sin(angle)])[:size]


def soba_update(sample, grad, mean, hessian, momentum, key, ess=1000.0,
                delta=1e-4, beta1=0.9, beta2=0.99999, lr=0.1):
    z = noise.bits_to_normal(noise.counter_bits(sample.shape[0], key))
    estimate = grad * (sample - mean) * ess * (hessian + delta)
    new_hessian = (beta2 * hessian + (1 - beta2) * estimate
                   + 0.5 * (1 - beta2) ** 2 * (hessian - estimate) ** 2
                   / (hessian + delta))
    new_momentum = beta1 * momentum + (1 - beta1) * grad
    new_mean = mean - lr * (new_momentum + delta * mean) / (new_hessian + delta)
    std = 1.0 / jnp.sqrt(ess * (new_hessian + delta))
    return new_mean + std * z, new_mean, new_hessian, new_momentum


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_585_162)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    size, repeats = args.size, args.repeats
    key = jnp.array([1, 2], dtype=jnp.uint32)
    arrays = [jnp.full((size,), 0.1 * (i + 1), jnp.float32) for i in range(5)]
    parts = {
        "adam": (adam, arrays[:4]),
        "counter_bits": (lambda k: noise.counter_bits(size, k), [key]),
        "counter_normal": (lambda k: noise.bits_to_normal(
            noise.counter_bits(size, k)), [key]),
        "erf_inv": (jax.lax.erf_inv, [arrays[0]]),
        "erf_inv_normal": (lambda k: math.sqrt(2.0) * jax.lax.erf_inv(
            (noise.counter_bits(size, k) >> 8).astype(jnp.int32).astype(
                jnp.float32) * (2.0 / 2**24) + (1.0 / 2**24 - 1.0)), [key]),
        "threefry_normal": (lambda k: jax.random.normal(
            jax.random.key(0), (size,)), [key]),
        "box_muller": (lambda k: box_muller(k, size), [key]),
        "soba_update": (soba_update, arrays + [key]),
    }
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{size:,} float32 entries, mean of {repeats} calls")
    results = {}
    for name, (function, inputs) in parts.items():
        results[name] = time_ms(function, *inputs, repeats=repeats)
        print(f"{name:16s} {results[name]:8.2f} ms "
              f"({results[name] / results['adam']:.2f}x adam)")
    return results


if __name__ == "__main__":
    main()
