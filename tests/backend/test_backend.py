"""The per-backend pieces of `keras_bayes.backend` that decide speed: the
skip of a step with non-finite gradients (`if_finite`, `nan_unless_finite`),
the default of `fused_update` (`fuse_updates_by_default`), torch's compiled
update (`elementwise_kernel`), and the runs of small variables updated
together (`PosteriorOptimizer._update_runs`)."""

import keras
import numpy as np
import pytest

from keras_bayes import backend
from keras_bayes.optimizers import SOBA
from keras_bayes.optimizers import base

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


@pytest.mark.parametrize("size", [6, 2**16])  # JAX: a select; a cond
@pytest.mark.parametrize("flag", [True, False])
def test_choose_takes_one_tensor_whole(flag, size):
    a = keras.ops.convert_to_tensor(np.arange(size, dtype="float32"))
    b = keras.ops.convert_to_tensor(-np.arange(size, dtype="float32"))
    chosen = backend.choose(keras.ops.convert_to_tensor(flag), a, b)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(chosen),
                                  np.arange(size) * (1 if flag else -1))


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


@pytest.mark.skipif(BACKEND != "jax", reason="XLA buffer reuse on JAX")
def test_jax_soba_step_updates_its_state_in_place():
    """SOBA's whole update, jitted with its state donated, copies none of
    the large variable's buffers: the branch that keeps a skipped step's
    state passes each through (a computed mean there cost a copy of the
    mean per step)."""
    import jax
    import jax.numpy as jnp

    shape = (256, 256)  # updated alone, not in a flat run; chosen by cond
    variables = [keras.Variable(np.ones(shape, "float32")),
                 keras.Variable(np.ones((256,), "float32"))]
    optimizer = SOBA(0.1, ess=100, seed=0)
    optimizer.build(variables)

    def step(optimizer_values, gradients, values):
        values, optimizer_values = optimizer.stateless_apply(
            optimizer_values, gradients, values)
        return optimizer_values, values  # in the order of the inputs

    text = jax.jit(step, donate_argnums=(0, 2)).lower(
        [v.value for v in optimizer.variables],
        [jnp.ones(tuple(v.shape)) for v in variables],
        [v.value for v in variables]).compile().as_text()
    assert _copies_per_step(text, "f32[256,256]") == []


def _copies_per_step(hlo_text, shape):
    """The copies of arrays of `shape` in a compiled HLO module, but for
    those in a computation that only copies (a branch of
    `backend.choose` that takes a buffer whole: the first step's)."""
    copies, ops = [], []
    for line in hlo_text.splitlines() + ["}"]:
        if line.startswith("}"):
            if any(" copy(" not in op for op in ops):
                copies += [op for op in ops
                           if " copy(" in op and shape in op]
            ops = []
        elif " = " in line and not any(
                word in line for word in (" parameter(", " tuple(",
                                          " get-tuple-element(")):
            ops.append(line)
    return copies


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


def test_cut_flat_inverts_flatten():
    """`cut_flat` gives back the pieces `flatten` joined, in each
    variable's shape and dtype (a float16 variable's piece is cast)."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"))
                 for s in ((2, 3, 4), (5,), (1, 1))]
    variables.append(keras.Variable(np.ones((3,), "float16")))
    flat = backend.flatten([keras.ops.cast(v, "float32") for v in variables])
    assert tuple(flat.shape) == (24 + 5 + 1 + 3,)
    pieces = backend.cut_flat(flat, variables)
    for piece, variable in zip(pieces, variables):
        assert tuple(piece.shape) == tuple(variable.shape)
        assert keras.backend.standardize_dtype(piece.dtype) == variable.dtype
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(piece),
                                      keras.ops.convert_to_numpy(variable))


@pytest.mark.parametrize("concatenated", [True, False],
                         ids=["concatenated", "per-tensor"])
def test_all_finite_flags_any_nonfinite_entry(monkeypatch, concatenated):
    """The step's finiteness check: False for one NaN, +Inf or -Inf entry
    in any tensor (of mixed dtypes, beside an empty one), True for finite
    entries as large as float32 allows (no overflow in the check). On
    torch both ways of reducing (one concatenation, or each tensor)."""
    if BACKEND == "torch":
        from keras_bayes.backend import torch as torch_backend

        monkeypatch.setattr(torch_backend, "FINITE_CONCAT_MAX_ENTRIES",
                            10**6 if concatenated else 0)
    elif not concatenated:
        pytest.skip("one way on this backend")
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(4, 5)).astype("float32"),
              np.full((3,), 3e38, "float32"),
              np.full((2,), -3e38, "float32"),
              np.zeros((0,), "float32"),
              rng.normal(size=(6,)).astype("float16")]

    def check(arrays):
        return bool(keras.ops.convert_to_numpy(backend.all_finite(
            [keras.ops.convert_to_tensor(a) for a in arrays])))

    assert check(values)
    assert check(values[1:2])  # min and max both near float32's largest
    for bad in (np.nan, np.inf, -np.inf):
        for position in (0, 4):
            arrays = [a.copy() for a in values]
            arrays[position].flat[1] = bad
            assert not check(arrays), (bad, position)


def test_nan_unless_finite_flags_exactly_the_nonfinite_tensors():
    """NaN for a NaN, +Inf or -Inf entry; 0 otherwise, also for entries
    near the float32 limit (no overflow) and for an empty tensor."""
    def probe(values):
        return float(keras.ops.convert_to_numpy(backend.nan_unless_finite(
            keras.ops.convert_to_tensor(np.asarray(values, "float32")))))

    assert probe([[1.0, -2.0], [3e38, -3e38]]) == 0.0
    assert probe(np.zeros((0,))) == 0.0
    for bad in (np.nan, np.inf, -np.inf):
        values = np.ones((4, 5), "float32")
        values[2, 3] = bad
        assert np.isnan(probe(values))


def test_update_runs_group_consecutive_small_variables_of_one_kind():
    """Small variables run together while they are consecutive in the
    model, of one dtype and weight decay; a large one is always alone."""
    small, large = (10,), (base.SEPARATE_UPDATE_MIN_ENTRIES,)
    variables = _dense_variables([small, small, large, small, small, small])
    position = {id(v): i for i, v in enumerate(variables)}

    def index(variable):
        return position[id(variable)]

    def positions(runs):
        return [[index(v) for v in run] for run in runs]

    kinds = {id(v): "a" for v in variables}
    kinds[id(variables[5])] = "b"
    runs = base._update_runs(variables, index, lambda v: kinds[id(v)])
    assert positions(runs) == [[0, 1], [2], [3, 4], [5]]
    # Not consecutive in the model (a variable without a gradient between).
    runs = base._update_runs([variables[i] for i in (0, 1, 3)], index,
                             lambda v: "a")
    assert positions(runs) == [[0, 1], [3]]


needs_torch = pytest.mark.skipif(BACKEND != "torch",
                                 reason="torch's compiled update")


@needs_torch
def test_torch_kernel_compiles_large_inputs_and_matches_eager(monkeypatch):
    """Above `COMPILE_MIN_ENTRIES` the kernel runs through torch.compile,
    flattened: the same values, in the shapes given."""
    import torch

    from keras_bayes.backend import torch as torch_backend

    calls = []

    def update(x, state, scale):
        calls.append(torch.compiler.is_compiling())
        return {"y": torch.where(x > 0, x * scale, state["z"])}, x.sum()

    kernel = backend.elementwise_kernel(update)
    x = torch.randn(40, 30)
    state = {"z": torch.randn(40, 30)}
    expected = update(x, state, 2.0)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 1000)
    calls.clear()
    new, total = kernel(x, state, 2.0)
    assert calls == [True]  # traced by dynamo, not run eagerly
    assert tuple(new["y"].shape) == (40, 30)
    torch.testing.assert_close(new["y"], expected[0]["y"])
    torch.testing.assert_close(total, expected[1])
    calls.clear()
    kernel(x[:10], {"z": state["z"][:10]}, 2.0)  # below the threshold
    assert calls == [False]


@needs_torch
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_torch_kernel_draws_step_noise_in_its_loop(monkeypatch, compiled):
    """A `step_noise` argument is drawn inside the kernel (in the compiled
    loop from `NOISE_COMPILE_MIN_ENTRIES` weights, even below
    `COMPILE_MIN_ENTRIES`): the numbers of `step_normal` for the same
    range, in the kernel's shape and the noise's dtype."""
    import torch

    from keras_bayes.backend import torch as torch_backend

    calls = []

    def update(x, noise):
        calls.append(torch.compiler.is_compiling())
        return x + 0.5 * noise, noise

    monkeypatch.setattr(torch_backend, "NOISE_COMPILE_MIN_ENTRIES",
                        1000 if compiled else 10**6)
    kernel = backend.elementwise_kernel(update)
    generator = keras.random.SeedGenerator(7)
    step = keras.Variable(5, dtype="int64", trainable=False)
    x = torch.randn(40, 30)
    noise = backend.step_noise((40, 30), "float32", generator, step, 123)
    assert isinstance(noise, torch_backend.StepNoise)
    new, drawn = kernel(x, noise)
    assert calls == [compiled]
    expected = backend.step_normal((1200,), "float32", generator, step, 123)
    assert tuple(drawn.shape) == (40, 30) and drawn.dtype == torch.float32
    torch.testing.assert_close(drawn.reshape(-1), expected)
    torch.testing.assert_close(new, x + 0.5 * expected.reshape(40, 30))
    if not compiled:  # (a recompile would cost ~20 s)
        # Another range of the stream, in float64.
        noise = backend.step_noise((40, 30), "float64", generator, step, 0)
        torch.testing.assert_close(
            kernel(x.double(), noise)[1].reshape(-1),
            backend.step_normal((1200,), "float64", generator, step, 0))


@needs_torch
def test_torch_kernel_runs_eagerly_when_compiling_fails(monkeypatch):
    """No C++ compiler (or another compiler failure): one warning, then the
    eager function, with the same result."""
    import torch

    from keras_bayes.backend import torch as torch_backend

    def broken_compile(function, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 10)
    kernel = backend.elementwise_kernel(lambda x: x * 3.0)
    x = torch.arange(20.0)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        torch.testing.assert_close(kernel(x), x * 3.0)
    torch.testing.assert_close(kernel(x), x * 3.0)  # no second warning


@needs_torch
def test_torch_kernel_writes_its_result_into_out(monkeypatch):
    """`out=`: a compiled call stores the result in the given variables
    (no fresh tensors, no copy after) and returns their tensors; an eager
    call returns fresh tensors and leaves the variables alone."""
    import torch

    from keras_bayes.backend import torch as torch_backend

    def update(x, state):
        return {"z": state["z"] + x}, x * 2.0

    kernel = backend.elementwise_kernel(update)
    x = torch.randn(40, 30)
    z, sample = keras.Variable(np.ones((40, 30), "float32")), \
        keras.Variable(np.zeros((40, 30), "float32"))
    storages = [z.value.data_ptr(), sample.value.data_ptr()]
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 1000)
    new, doubled = kernel(x, {"z": z.value}, out=({"z": z}, sample))
    assert new["z"] is z.value and doubled is sample.value
    assert [z.value.data_ptr(), sample.value.data_ptr()] == storages
    torch.testing.assert_close(z.value, 1.0 + x)
    torch.testing.assert_close(sample.value, x * 2.0)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 10**6)
    before = z.value.clone()
    new, doubled = kernel(x, {"z": z.value}, out=({"z": z}, sample))
    torch.testing.assert_close(new["z"], before + x)
    torch.testing.assert_close(z.value, before)  # unchanged


@needs_torch
def test_torch_kernel_writes_into_tensors_and_returns_fresh_for_none(
        monkeypatch):
    """`out=` may hold tensors (a flat slot storage) and None (a result
    wanted in a fresh tensor, the next sample of a flat update): the
    compiled call writes the tensors in place, returns them, and the
    result for None in the kernel's shape."""
    import torch

    from keras_bayes.backend import torch as torch_backend

    def update(x, state):
        return {"z": state["z"] + x}, x * 2.0

    kernel = backend.elementwise_kernel(update)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 1000)
    x = torch.randn(1200)
    z = torch.ones(1200)
    storage = z.data_ptr()
    new, doubled = kernel(x, {"z": z}, out=({"z": z}, None))
    assert new["z"] is z and z.data_ptr() == storage
    torch.testing.assert_close(z, 1.0 + x)
    assert doubled.data_ptr() not in (z.data_ptr(), x.data_ptr())
    torch.testing.assert_close(doubled, x * 2.0)


@needs_torch
def test_torch_share_storage_makes_the_variables_views_of_one_tensor():
    """`share_storage`: the variables keep their values, which become
    consecutive pieces of one flat tensor; an `assign` writes into it, a
    write into it shows in the variables, and inside a `StatelessScope`
    that maps them elsewhere the storage says it is not current."""
    import torch

    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype("float32")
              for s in ((3, 4), (5,), (2, 1, 2))]
    variables = [keras.Variable(v, trainable=False) for v in values]
    storage = backend.share_storage(variables)
    flat = np.concatenate([v.ravel() for v in values])
    np.testing.assert_array_equal(storage.value.numpy(), flat)
    for variable, value in zip(variables, values):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert storage.current()

    variables[1].assign(np.full((5,), 7.0, "float32"))
    np.testing.assert_array_equal(storage.value[12:17].numpy(), 7.0)
    new = torch.arange(21, dtype=torch.float32)
    storage.assign(new)
    np.testing.assert_array_equal(variables[2].numpy().ravel(),
                                  np.arange(17, 21))
    storage.assign(storage.value)  # itself: nothing to copy
    np.testing.assert_array_equal(storage.value.numpy(), np.arange(21))

    with keras.StatelessScope(state_mapping=[
            (variables[0], torch.zeros(3, 4))]):
        assert not storage.current()
    assert storage.current()


@pytest.mark.skipif(BACKEND == "torch", reason="JAX and TensorFlow")
def test_immutable_backends_share_no_storage():
    assert backend.share_storage(_dense_variables([(3,), (4,)])) is None


def test_fused_slots_live_in_one_storage_where_the_backend_allows():
    """A fused optimizer on torch keeps each slot of its variables in one
    flat tensor after the first step (the update reads and writes it with
    no concatenation); on JAX and TensorFlow the slots stay separate. Either
    way the steps equal the per-variable ones, including a skipped step and
    slots assigned from outside between steps."""
    rng = np.random.default_rng(4)
    shapes = [(6, 5), (5,), (5, 3), (3,)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes]
             for _ in range(4)]
    grads[2][1][0] = np.nan
    results = []
    for fused in (False, True):
        variables = [keras.Variable(v) for v in start]
        optimizer = SOBA(0.05, ess=50.0, hess_init=0.3, seed=3,
                         fused_update=fused)
        for step, step_grads in enumerate(grads):
            optimizer.apply_gradients(zip(step_grads, variables))
            if step == 0:
                optimizer._state["momentum"][2].assign(
                    np.full((5, 3), 0.01, "float32"))
        indices = tuple(range(len(shapes)))
        storage = optimizer._slot_storage(indices) if fused else None
        if fused and BACKEND == "torch":
            assert storage is not None
            for name, slots in optimizer._state.items():
                flat = keras.ops.convert_to_numpy(storage[name].value)
                np.testing.assert_array_equal(flat, np.concatenate([
                    keras.ops.convert_to_numpy(s).ravel() for s in slots]))
                assert (slots[1].value.data_ptr()
                        == storage[name].value[30:].data_ptr())
        else:
            assert storage is None
        assert optimizer.nonfinite_steps == 1
        results.append([keras.ops.convert_to_numpy(v) for v in variables]
                       + optimizer.posterior_mean()
                       + optimizer.posterior_std())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def _steps_with_a_bad_one(optimizer_class, **kwargs):
    """Three steps of `optimizer_class` on three variables, the second with
    a NaN gradient: the variables, the posterior mean and std after."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"))
                 for s in ((20, 30), (30,), (7,))]
    optimizer = optimizer_class(**kwargs)
    for step in range(3):
        grads = [rng.normal(size=tuple(v.shape)).astype("float32")
                 for v in variables]
        if step == 1:
            grads[0][3, 4] = np.nan
        optimizer.apply_gradients(zip(grads, variables))
    assert optimizer.nonfinite_steps == 1
    return ([keras.ops.convert_to_numpy(v) for v in variables]
            + optimizer.posterior_mean() + optimizer.posterior_std())


@needs_torch
@pytest.mark.parametrize("alone", [False, True],
                         ids=["one-run", "each-variable-alone"])
def test_torch_compiled_soba_steps_match_eager_ones(monkeypatch, alone):
    """SOBA's update through torch.compile (every kernel compiled: the
    threshold set to 0) against the eager one, same seed, three steps, the
    second skipped for a NaN gradient. Variables updated alone are written
    in place by the compiled kernel (`out=`): the skipped step must still
    leave them as they were."""
    from keras_bayes.backend import torch as torch_backend

    if alone:
        monkeypatch.setattr(base, "SEPARATE_UPDATE_MIN_ENTRIES", 1)
    settings = dict(learning_rate=0.05, ess=200.0, hess_init=0.3, seed=3)
    eager = _steps_with_a_bad_one(SOBA, **settings)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 0)
    compiled = _steps_with_a_bad_one(SOBA, **settings)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@needs_torch
def test_torch_compiled_rules_with_keras_noise_skip_bad_steps(monkeypatch):
    """The rules whose noise is Keras' (the Lie group's) select the kept
    values after computing the new ones (`keep_if_finite`): their compiled
    kernel must not write in place. Compiled against eager, a NaN step in
    between."""
    from keras_bayes.backend import torch as torch_backend
    from keras_bayes.optimizers import LieAdditive

    settings = dict(learning_rate=0.1, noise_scale=0.01, seed=3)
    eager = _steps_with_a_bad_one(LieAdditive, **settings)
    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 0)
    compiled = _steps_with_a_bad_one(LieAdditive, **settings)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
