"""`keras_bayes.backend` on torch."""

import math
import warnings
from typing import NamedTuple

import keras
import torch

from keras_bayes import _keras_compat
from keras_bayes.backend import common
from keras_bayes.backend.common import agree_across_replicas  # noqa: F401
from keras_bayes.backend.common import choose  # noqa: F401
from keras_bayes.backend.common import compile_function  # noqa: F401
from keras_bayes.backend.common import nan_unless_finite  # noqa: F401
from keras_bayes.backend.common import optimizer_state_detached  # noqa: F401
from keras_bayes.backend.common import raise_unless  # noqa: F401
from keras_bayes.backend.common import single_device  # noqa: F401

__all__ = ["agree_across_replicas", "all_finite", "assign_flat", "choose",
           "compile_function", "cut_flat", "elementwise_kernel", "flatten",
           "fuse_updates_by_default", "if_finite", "nan_unless_finite",
           "optimizer_state_detached", "raise_unless", "share_storage",
           "single_device", "standard_normal", "step_noise", "step_normal"]

# `raise_unless` is the eager check of `common`: one host sync per step, and
# only in the opt-in "raise" mode.


def assign_flat(assign, writes):
    """One fused copy of the pieces of every flat tensor of `writes`
    instead of a Python loop of `assign`s (`assign` is not needed)."""
    targets, pieces = [], []
    for variables, flat in writes:
        values = [v.value for v in variables]
        targets += values
        pieces += [piece.view(value.shape) for piece, value in zip(
            torch.split(flat, [value.numel() for value in values]), values)]
    if targets:
        with torch.no_grad():
            torch._foreach_copy_(targets, pieces)


def cut_flat(flat, variables):
    """The 1-D `flat` cut into one piece per variable, of its shape and
    dtype: one `torch.split` and a view per piece (Keras' slice, reshape
    and cast cost ~35 µs a piece; 0.3 ms of bSAM's step on an 8-variable
    CNN, measured)."""
    shapes = [tuple(variable.shape) for variable in variables]
    pieces = torch.split(flat, [math.prod(shape) for shape in shapes])
    return [keras.ops.cast(piece.view(shape), variable.dtype)
            if keras.backend.standardize_dtype(piece.dtype) != variable.dtype
            else piece.view(shape)
            for piece, shape, variable in zip(pieces, shapes, variables)]


class FlatStorage:
    """One 1-D tensor, `value`, of which a list of variables (one dtype,
    one device) hold consecutive pieces as their values (`share_storage`).

    A flat update then reads the variables' concatenation without
    concatenating them, and writes it in one copy (or in its own loop,
    `elementwise_kernel`'s `out=`) instead of a cut and a copy per
    variable: for a CNN's four slots of 8 variables, some 30 small
    operations a step. The variables stay ordinary Keras variables:
    `assign`, saving and loading write into their piece of `value`."""

    def __init__(self, variables):
        stored = [_keras_compat.torch_variable_tensor(v) for v in variables]
        with torch.no_grad():
            self.value = torch.cat([t.detach().reshape(-1) for t in stored])
        pieces = torch.split(self.value, [t.numel() for t in stored])
        self._parameters = []
        for variable, piece, tensor in zip(variables, pieces, stored):
            parameter = torch.nn.Parameter(
                piece.view(tensor.shape), requires_grad=tensor.requires_grad)
            _keras_compat.set_torch_variable_tensor(variable, parameter)
            self._parameters.append(parameter)
        self._first = variables[0]

    def current(self):
        """Whether the variables read `value` now: not inside a
        `StatelessScope` (or an autocast) that gives the first one another
        value."""
        return self._first.value is self._parameters[0]

    def assign(self, value):
        """Write the 1-D `value` into `value` (nothing if it is `value`)."""
        if value is not self.value:
            with torch.no_grad():
                self.value.copy_(value)


def share_storage(variables):
    """A `FlatStorage` of the `variables` (one dtype and device, at least
    one), whose values become views of it."""
    return FlatStorage(list(variables))


#: Up to this many entries in all, `all_finite` concatenates the tensors
#: and takes one minimum and maximum (one reduction instead of one per
#: tensor: 24 against 66 µs for a CNN's 8 gradients on the 2-core CPU);
#: above it the copy costs more than the reductions it saves.
FINITE_CONCAT_MAX_ENTRIES = 65_536


def all_finite(tensors):
    """A boolean scalar: every entry of every tensor is finite, from the
    tensors' minimum and maximum (`torch.aminmax` propagates NaN): a few
    operations (one reduction of the concatenation, or one per tensor
    above `FINITE_CONCAT_MAX_ENTRIES`) where the per-tensor
    `nan_unless_finite` terms of `common` took ~50 (0.4 ms a step for a
    CNN of 8 variables, measured)."""
    tensors = [t for t in map(_tensor, tensors) if t.numel()]
    if not tensors:
        return torch.tensor(True)
    if sum(t.numel() for t in tensors) <= FINITE_CONCAT_MAX_ENTRIES:
        extremes = torch.aminmax(torch.cat([t.reshape(-1)
                                            for t in tensors]))
        return torch.isfinite(torch.stack(extremes)).all()
    # torch.stack promotes mixed float dtypes.
    return torch.isfinite(torch.stack(
        [extreme for t in tensors for extreme in torch.aminmax(t)])).all()


def flatten(tensors):
    """The tensors (or variables) reshaped to 1-D and concatenated, by one
    `torch.cat`: a Keras op per piece cost ~20 µs of Python each, most of
    a small model's flat update (measured)."""
    return torch.cat([_tensor(t).reshape(-1) for t in tensors])


def _tensor(value):
    """`value` as a torch tensor: a variable's `value` (what
    `convert_to_tensor` returns for it, without its ~10 µs of dispatch,
    which a flat update of a few variables pays some 40 times a step)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, keras.Variable):
        return value.value
    return keras.ops.convert_to_tensor(value)


# The flat update saves ~25 kernel launches and one random call per
# variable, and costs a concatenation and a copy back of every slot each
# step. Measured on the 2-core CPU: a clear gain on the step-cost CNN
# (docs/speed.md), a loss on the 1.6 M-weight MLP (6 variables, 264 k
# weights on average: 96 ms vs 78 ms a step).
FUSE_MAX_MEAN_ENTRIES = 100_000


def fuse_updates_by_default(variables):
    """True when the `variables` hold on average fewer than
    `FUSE_MAX_MEAN_ENTRIES` weights, where kernel launches outweigh the
    copies of the flat update (eager torch runs each op as one kernel)."""
    variables = list(variables)
    if not variables:
        return False
    entries = sum(math.prod(tuple(v.shape)) for v in variables)
    return entries / len(variables) < FUSE_MAX_MEAN_ENTRIES


def if_finite(finite, compute, keep):
    """`compute()` if the flag is True, else `keep()`: a Python branch on
    the flag (a host sync on a GPU), instead of a select per slot, each a
    pass over the weights in eager torch."""
    return compute() if bool(finite) else keep()


#: An elementwise kernel of at least this many weights per call runs
#: compiled (`torch.compile`, inductor). Eager torch runs each of the ~30
#: operations of a posterior update as its own pass over the weights
#: (`torch.where` alone 2.2 ms per million weights on the 2-core CPU);
#: compiled, the SOBA update is one loop: 1.1 ms against 13 ms on 1 M
#: weights. The compile costs seconds (about 4 s from the on-disk cache,
#: 20 s the first time on this machine), repaid within a few hundred steps
#: of such a model; smaller kernels stay eager.
COMPILE_MIN_ENTRIES = 250_000

#: Noise draws of at least this many numbers run compiled: the counter
#: generator is ~15 integer and float operations per number, 19 ms per
#: million eagerly, 1.8 ms compiled (`torch.randn`: 4.4 ms). One program
#: with a symbolic length serves every draw of the process.
NOISE_COMPILE_MIN_ENTRIES = 4_096


class _CompiledOrEager:
    """`function` through `torch.compile(function, dynamic=dynamic)`; where
    compiling fails (no C++ compiler, an unsupported platform) it warns
    once and runs `function` eagerly from then on. Inside a step that Keras
    compiles itself (`jit_compile=True`), `function` is traced as part of
    it."""

    def __init__(self, function, dynamic):
        self._function = function
        self._dynamic = dynamic
        self._compiled = None
        # None until the first compiled call returns; then whether it ran.
        self._compiles = None

    def __call__(self, *args):
        if self._compiles is False or torch.compiler.is_compiling():
            return self._function(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self._function,
                                           dynamic=self._dynamic)
        try:
            result = self._compiled(*args)
        except Exception as error:  # noqa: BLE001 (any compiler failure)
            if self._compiles:
                raise
            self._compiles = False
            warnings.warn(
                "keras_bayes: torch.compile failed, so the optimizer's "
                f"{getattr(self._function, '__name__', 'update')} runs "
                "eagerly (slower on large models: docs/speed.md). The "
                f"error: {type(error).__name__}: {error}", stacklevel=3)
            return self._function(*args)
        self._compiles = True
        return result


def elementwise_kernel(function):
    """`function`, an elementwise function of tensors (every non-scalar
    tensor in and out has one shape), run compiled (`_CompiledOrEager`) on
    inputs of at least `COMPILE_MIN_ENTRIES` entries, or of
    `NOISE_COMPILE_MIN_ENTRIES` where an argument is the update noise of
    `step_noise`: its numbers are then drawn inside the compiled loop,
    which replaces the noise's own program (one program and no noise
    buffer where there were two; the eager update of a CNN's 29 k weights
    was ~30 operations, 0.6 ms a step). The tensors go in flattened to 1-D,
    their length marked dynamic, so one program serves variables of every
    shape.

    `kernel(*args, out=targets)`, `targets` a structure of variables (or
    tensors) matching the result: a compiled call writes the result into
    them in its loop and returns their tensors (a None target: the result
    in a fresh tensor). Writing out fresh tensors and copying
    them into the variables after was half the update's memory traffic and
    page faults on every fresh buffer (a SOBA step on the 1.6 M-weight MLP:
    5 900 faults, measured); the caller's assignments of the returned
    tensors are then no-ops. Eager and small calls ignore `out`.

    Only the length is dynamic: `dynamic=True` would also make every
    Python float the function reads (an optimizer's hyperparameters) an
    input of the program, and the compiled loop then recomputed their
    powers and products for every 16 weights (8 ms against 2.3 ms per
    million weights for SOBA's update, measured)."""
    def with_noise(*args, shape=None):
        # The eager path passes the `shape` it has already found.
        shape = shape or _common_shape(args)
        return function(*[_realize(arg, shape) for arg in args])

    with_noise.__name__ = getattr(function, "__name__", "update")
    compiled = _CompiledOrEager(with_noise, dynamic=None)

    def write_into(targets, *args):
        fresh = []
        for target, value in zip(_leaves(targets),
                                 _leaves(with_noise(*args))):
            if target is None:
                fresh.append(value)
            else:
                target.copy_(value)
        return fresh

    write_into.__name__ = with_noise.__name__
    compiled_into = _CompiledOrEager(write_into, dynamic=None)

    def kernel(*args, out=None):
        shape = _common_shape(args)
        least = COMPILE_MIN_ENTRIES
        if any(isinstance(arg, StepNoise) for arg in args):
            least = min(least, NOISE_COMPILE_MIN_ENTRIES)
        if shape is None or math.prod(shape) < least:
            return with_noise(*args, shape=shape)
        if out is None or torch.compiler.is_compiling():
            result = compiled(*_map_leaves(_flat, args))
            return _map_leaves(
                lambda x: x.reshape(shape) if _is_array(x) else x, result)
        targets = _map_leaves(
            lambda v: None if v is None else _tensor(v), out)
        # A target is also read (the old value): it goes in as one flat
        # view, passed twice. Two views of one tensor would be aliased
        # inputs, which the compiled program handles through their base,
        # of fixed shape (a program per variable shape; a failed size
        # check where two bases differed in rank only, seen on torch 2.13).
        views = {}

        def flat_once(value):
            if id(value) not in views:
                views[id(value)] = _flat(value)
            return views[id(value)]

        with torch.no_grad():
            fresh = iter(compiled_into(_map_leaves(flat_once, targets),
                                       *_map_leaves(flat_once, args)))
        # A None target is a result in a fresh tensor.
        return _map_leaves(
            lambda t: next(fresh).reshape(shape) if t is None else t,
            targets)

    return kernel


def _flat(value):
    """`value` as 1-D with its length marked dynamic (`mark_dynamic`:
    torch's documented dynamic-shapes API); other arguments as they are."""
    if not _is_array(value):
        return value
    value = value.reshape(-1)
    if value.shape[0] > 1:  # lengths 0 and 1 are always specialised
        import torch._dynamo

        torch._dynamo.mark_dynamic(value, 0)
    return value


def _is_array(value):
    return isinstance(value, torch.Tensor) and value.ndim > 0


def _map_leaves(function, value):
    """`function` applied to the leaves of `value`, nested tuples, lists
    and dicts (a kernel's arguments and results), in their structure:
    `keras.tree.map_structure` took ~0.15 ms a call on them (measured)."""
    if isinstance(value, dict):
        return {key: _map_leaves(function, item)
                for key, item in value.items()}
    if isinstance(value, StepNoise):
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_map_leaves(function, item) for item in value)
    return function(value)


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (tuple, list)) and not isinstance(value,
                                                             StepNoise):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _common_shape(args):
    for value in _leaves(args):
        if _is_array(value):
            return tuple(value.shape)
    return None


def _realize(value, shape):
    """A `StepNoise` argument as its numbers, of `shape` (the kernel's
    other tensors'); any other argument as it is."""
    if not isinstance(value, StepNoise):
        return value
    normal = _stream_normal(math.prod(shape), value.start, value.key0,
                            value.key1)
    return keras.ops.cast(normal.reshape(shape), value.dtype)


# ----------------------------------------------------------------------
# The counter-based generator of `common` (`counter_normal` and
# `counter_step_normal`), in torch's int32 arithmetic: torch lacks most
# uint32 operations. Products and sums wrap modulo 2^32 as the uint32 ones
# do (the low 32 bits of a product do not depend on the signedness); a
# logical right shift is the arithmetic one with the copied sign bits
# masked off. The words equal `common`'s
# (tests/optimizers/test_training_noise.py checks them against NumPy).


def _as_int32(value):
    """A uint32 constant as the int32 of the same bits."""
    return value - 2**32 if value >= 2**31 else value


def _shift_right(x, bits):
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _lowbias32(x):
    x = x ^ _shift_right(x, 16)
    x = x * _as_int32(common._LOWBIAS32_M1)
    x = x ^ _shift_right(x, 15)
    x = x * _as_int32(common._LOWBIAS32_M2)
    return x ^ _shift_right(x, 16)


def _stream_normal(size, start, key0, key1):
    """Numbers `start`, ..., `start + size - 1` of the stream of the key
    [`key0`, `key1`] (int32 scalars, the bits of `common`'s uint32 key):
    the key words as `common._key_words` derives them, then
    `common.counter_bits` and `common.bits_to_normal`. The key words are
    derived in here, so that a compiled draw is one program (its scalar
    work runs once per vector of the loop), not some 30 eager operations."""
    golden = _as_int32(common._GOLDEN)
    first = _lowbias32(_lowbias32(key0 + golden) + key1)
    second = _lowbias32(first ^ golden)
    counter = torch.arange(size, dtype=torch.int32) + start
    bits = _lowbias32(_lowbias32(counter ^ first) + second)
    return common.cells_to_normal(_shift_right(bits, 8).to(torch.float32))


_compiled_stream_normal = _CompiledOrEager(_stream_normal, dynamic=True)


def _draw(shape, dtype, key0, key1, start):
    size = math.prod(shape)
    common.check_draw_size(size, start)
    draw = (_compiled_stream_normal if size >= NOISE_COMPILE_MIN_ENTRIES
            else _stream_normal)
    normal = draw(size, torch.tensor(start, dtype=torch.int32),
                  key0.to(torch.int32), key1.to(torch.int32))
    return keras.ops.cast(normal.reshape(shape), dtype)


class StepNoise(NamedTuple):
    """The update noise of a step, not drawn yet (`step_noise`): the key
    [`key0`, `key1`] and the first number `start` (int32 scalars) of its
    range of the step's stream, and the dtype of its numbers."""

    key0: torch.Tensor
    key1: torch.Tensor
    start: torch.Tensor
    dtype: str


def step_noise(shape, dtype, generator, step, start):
    """The update noise of a step (`step_normal`'s numbers), as the
    optimizer's `elementwise_kernel` takes it: a `StepNoise`, drawn inside
    the kernel, fused into its compiled loop."""
    common.check_draw_size(math.prod(shape), start)
    seed = generator.state.value[0].to(torch.int32)
    return StepNoise(
        seed ^ _as_int32(common._UPDATE_STREAM),
        keras.ops.convert_to_tensor(step).to(torch.int32),
        torch.tensor(start, dtype=torch.int32),
        keras.backend.standardize_dtype(dtype))


def step_normal(shape, dtype, generator, step, start):
    """The update noise of a step: numbers `start`, ... of the stream of
    the key [s ^ c, step], as `common.counter_step_normal` draws them on
    JAX and TensorFlow (the same words; the floats agree to rounding).
    Draws of `NOISE_COMPILE_MIN_ENTRIES` numbers or more run compiled."""
    seed = generator.state.value[0].to(torch.int32)
    return _draw(shape, dtype, seed ^ _as_int32(common._UPDATE_STREAM),
                 keras.ops.convert_to_tensor(step), start)


def standard_normal(shape, dtype, seed):
    """N(0, 1) noise of `shape` drawn with one seed of `seed`, as
    `common.counter_normal` draws it on JAX and TensorFlow: a
    `SeedGenerator` (advanced once) or a key of two integers; compiled from
    `NOISE_COMPILE_MIN_ENTRIES` numbers (`torch.randn`: 4.4 ms per million
    numbers, this generator 1.8 ms compiled). Any other seed: Keras'
    generator."""
    if isinstance(seed, keras.random.SeedGenerator):
        key = seed.next()
    elif isinstance(seed, torch.Tensor) and tuple(seed.shape) == (2,):
        key = seed
    else:
        return common.standard_normal(shape, dtype, seed)
    return _draw(shape, dtype, key[0], key[1], 0)
