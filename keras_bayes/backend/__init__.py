"""The few numeric helpers that differ between Keras backends.

One module per backend (`jax.py`, `tensorflow.py`, `torch.py`) exposes the
same functions; the one of the active backend is chosen once, here, as
Keras chooses `keras/src/backend/<name>/`. Code elsewhere in the package
calls `keras_bayes.backend.<function>` and holds no backend branches.

- `single_device()`: no `keras.distribution` and no `tf.distribute`
  strategy is active (variables may then be concatenated).
- `agree_across_replicas(finite)`: the "all gradients finite" flag, made
  equal on every replica of a `tf.distribute` strategy.
- `raise_unless(finite, message)`: raise `FloatingPointError` (or the
  backend's equivalent) from inside a training step when `finite` is False.
- `assign_flat(assign, writes)`: for each `(variables, flat)` of
  `writes`, write consecutive pieces of the 1-D tensor `flat` into
  `variables` (`assign(variable, value)` is the optimizer's `assign`;
  torch: one `_foreach_copy_` for all).
- `fuse_updates_by_default()`: whether `PosteriorOptimizer` updates all
  variables in one flat pass when `fused_update` is None.
- `share_storage(variables)`: one flat tensor whose consecutive pieces the
  variables' values become (torch: a `FlatStorage`, so a flat update of
  the optimizer's slots reads and writes them without a concatenation and
  a cut), or None where values cannot alias (JAX, TensorFlow).
- `optimizer_state_detached(variables)`: True while the trainer holds the
  variables' values outside them (JAX, after a traced step failed).
- `standard_normal(shape, dtype, seed)`: the training noise, N(0, 1) from
  one seed of a `SeedGenerator` (`common.counter_normal`, counter-based, on
  JAX and TensorFlow, where the default generators were most of a
  posterior step on a CPU; torch draws the same stream in int32, compiled
  for large draws; `keras.random.normal` on other backends).
- `step_normal(shape, dtype, generator, step, start)`: the update noise
  of a training step, numbers `start`, ... of the step's stream
  (counter-based, so a range can be drawn alone, and the generator is
  read, not advanced; torch draws the same stream in int32, compiled for
  large draws; other backends: a fresh draw from the generator).
- `step_noise(shape, dtype, generator, step, start)`: the same noise as
  an `elementwise_kernel` takes it (torch: a `StepNoise`, the key and
  range, drawn inside the kernel's compiled loop; elsewhere the numbers of
  `step_normal`).
- `all_finite(tensors)`: the step's finiteness check, a boolean scalar
  (one reduction per tensor and one over their results; torch: the
  tensors' max and min).
- `nan_unless_finite(tensor)`: NaN if `tensor` has a non-finite entry,
  else 0 (the per-tensor term of `common.all_finite`).
- `if_finite(finite, compute, keep)`: `compute()` if the step's gradients
  are finite, else `keep()` (JAX: one `lax.cond`; torch: a Python
  branch; elsewhere an entry-by-entry select).
- `compile_function(function, num_entries)`: the optimizer's update of all
  variables as one compiled program where the trainer does not compile the
  step and the update is large enough to repay the compile (TensorFlow:
  XLA from 250 k weights; elsewhere the function itself).
- `elementwise_kernel(function)`: an elementwise function of tensors (the
  update of one variable or run) as the backend runs it best (torch:
  `torch.compile` from 250 k weights per call, or 4 096 where it draws a
  `step_noise`, eager where compiling fails, writing its result into the
  variables given as `out=`; elsewhere the function itself, compiled with
  the step).
- `choose(flag, if_true, if_false)`: one of two tensors of one shape by a
  scalar flag (the posterior mean before the first update; JAX: a
  `lax.cond`, elsewhere an entry-by-entry select).
- `flatten(tensors)`: tensors or variables as one 1-D concatenation (the
  flat update of a run or group; torch: one `torch.cat`).
- `cut_flat(flat, variables)`: the inverse, a 1-D tensor cut into pieces
  of the variables' shapes and dtypes (torch: one `torch.split`).
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "jax":
    from keras_bayes.backend.jax import *  # noqa: F401,F403
elif _BACKEND == "tensorflow":
    from keras_bayes.backend.tensorflow import *  # noqa: F401,F403
elif _BACKEND == "torch":
    from keras_bayes.backend.torch import *  # noqa: F401,F403
else:
    # Other Keras backends: single-process, eager semantics.
    from keras_bayes.backend.common import *  # noqa: F401,F403
