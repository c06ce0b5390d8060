"""The per-backend pieces of `keras_bayes.backend` that decide speed: the
skip of a step with non-finite gradients (`if_finite`) and the default of
`fused_update` (`fuse_updates_by_default`)."""

import keras
import numpy as np
import pytest

from keras_bayes import backend
from keras_bayes.optimizers import SOBA

BACKEND = keras.backend.backend()


def test_if_finite_picks_one_structure():
    """`compute()` on a finite step, `keep()` otherwise, whole structures
    (every backend has its own implementation)."""
    old = {"a": keras.ops.ones((3,)), "b": keras.ops.zeros((2, 2))}

    def compute():
        return {"a": old["a"] * 2.0, "b": old["b"] + 1.0}

    def keep():
        return old

    for finite, expected_a, expected_b in ((True, 2.0, 1.0),
                                           (False, 1.0, 0.0)):
        out = backend.if_finite(keras.ops.convert_to_tensor(finite),
                                compute, keep)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out["a"]),
                                      np.full((3,), expected_a))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out["b"]),
                                      np.full((2, 2), expected_b))


@pytest.mark.skipif(BACKEND != "jax", reason="XLA buffer reuse on JAX")
def test_jax_skip_branch_keeps_donated_buffers_in_place():
    """The reason `if_finite` is a `lax.cond` on JAX: with a select per new
    value, XLA copied every donated input buffer at the start of the
    program (measured: 4 copies of 4 slots, 1.8x the update's time). One
    branch over all outputs needs none."""
    import jax
    import jax.numpy as jnp

    def update(state, gradient):
        finite = jnp.isfinite(jnp.sum(gradient * 0.0))
        mean, scale, momentum, sample = state

        def compute():
            new_momentum = 0.9 * momentum + 0.1 * gradient
            new_scale = scale + (sample - mean) * gradient
            new_mean = mean - 0.1 * new_momentum / new_scale
            return (new_mean, new_scale, new_momentum,
                    new_mean + jax.lax.rsqrt(new_scale))

        return backend.if_finite(finite, compute, lambda: state)

    shape = (256, 256)
    state = tuple(jnp.full(shape, 1.0 + i) for i in range(4))
    text = jax.jit(update, donate_argnums=0).lower(
        state, jnp.ones(shape)).compile().as_text()
    copies = [line for line in text.splitlines()
              if " copy(" in line and "f32[256,256]" in line]
    assert copies == []


def _dense_variables(sizes):
    return [keras.Variable(np.zeros(size, "float32")) for size in sizes]


@pytest.mark.skipif(BACKEND != "torch", reason="torch's default")
def test_torch_fuses_many_small_variables_only():
    """Eager torch: the flat update for many small variables (kernel
    launches dominate), per variable for a few large ones (the copies of
    the flat path dominate), as measured in backend/torch.py."""
    assert backend.fuse_updates_by_default(_dense_variables([(30, 30)] * 8))
    assert not backend.fuse_updates_by_default(
        _dense_variables([(512, 1024), (1024,)]))
    optimizer = SOBA(0.1, ess=10.0)
    optimizer.build(_dense_variables([(512, 1024), (1024,)]))
    assert not optimizer._fuse
    optimizer = SOBA(0.1, ess=10.0, fused_update=True)
    optimizer.build(_dense_variables([(512, 1024), (1024,)]))
    assert optimizer._fuse


@pytest.mark.skipif(BACKEND == "torch", reason="compiled backends")
def test_compiled_backends_update_per_variable_by_default():
    optimizer = SOBA(0.1, ess=10.0)
    optimizer.build(_dense_variables([(30, 30)] * 8))
    assert not optimizer._fuse
