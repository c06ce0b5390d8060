"""Data-parallel training on the torch backend (torch.distributed).

Keras 3.15's `fit` has no DistributedDataParallel on torch. This module is
the supported path for keras_bayes' optimizers there: a `fit`-like loop
(`fit_data_parallel`) built from three pieces that can also be used in a
loop of your own (`broadcast_variables`, `train_step`,
`global_metrics_result`). Every process (rank) runs the same script:

```python
import torch.distributed as dist
dist.init_process_group("gloo")          # "nccl" on GPUs; torchrun sets the env
model = keras.Sequential([...])
model.compile(optimizer=keras_bayes.optimizers.SOBA(0.1, ess=len(x), seed=0),
              loss=...)
history = keras_bayes.distributed.fit_data_parallel(
    model, x, y, batch_size=256, epochs=10)
```

What one step does, on every rank:

1. the rank's shard of the global batch (contiguous, near-equal parts of
   each global batch in rank order) goes through the Keras model's
   forward and backward pass;
2. the gradients are averaged over the ranks with `all_reduce`, each rank
   weighted by its share of the global batch, so the result is the
   gradient of the mean loss over the global batch (exact for Keras'
   default `"sum_over_batch_size"` reduction, also with an uneven last
   batch);
3. `optimizer.apply` runs on every rank with the same averaged gradient
   and the same optimizer state, so every rank draws the same posterior
   noise and the replicas stay identical without further communication.

Multi-pass steps (`keras_bayes.training.TwoPassModel` with `BSAM`, `SAM`
or `SOBA(mc_samples > 1)`) average every gradient of the step in the same
way before the optimizer sees it (`TwoPassModel.multi_pass_step(data,
gradient_reducer=...)`): bSAM's and SAM's perturbation is built
from the global-batch first-pass gradient, SOBA's curvature statistic from
the global-batch gradients at shared samples. The result is the
single-device algorithm on the global batch, as under JAX `DataParallel`
and (through `TwoPassModel`'s all-reduce) TensorFlow `MirroredStrategy`;
see `docs/distributed.md`.

Replica-identical noise comes from replica-identical state:
`fit_data_parallel` broadcasts rank 0's model variables and, once the
optimizer is built, all its variables (posterior slots, step counter and
the noise generator's seed state) before the first step. The posterior
mean is initialised lazily from the model's variables at the first update,
so it is the broadcast weights.
"""

import warnings

import keras
import numpy as np
from keras import tree

from keras_bayes import _keras_compat
from keras_bayes.training import TwoPassModel
from keras_bayes.training import shared
from keras_bayes.training._backend import steps


def _torch_distributed():
    """`torch.distributed` with an initialised process group; a clear
    error on another backend or without one."""
    return steps.process_group()


def _world(group):
    dist = _torch_distributed()
    return dist, dist.get_rank(group), dist.get_world_size(group)


def broadcast_variables(model, src=0, group=None, include_optimizer=True):
    """Copy rank `src`'s model (and optimizer) variables to every rank.

    Call it after the model and, with `include_optimizer`, the optimizer
    are built and before the first step. Broadcasting the optimizer's
    variables makes the posterior slots, the step counter and the seed state
    of the posterior noise identical on every rank, so all ranks draw the
    same samples even if the optimizer was created with `seed=None` or
    restored on rank 0 only.

    Args:
        model: a built `keras.Model`.
        src: int, the rank whose values are copied.
        group: a `torch.distributed` process group, or None (the default
            group).
        include_optimizer: bool, also broadcast `model.optimizer.variables`
            (built ones only).

    Example (torch backend; the start of a loop of your own, as
    `fit_data_parallel` does it):

    ```python
    import tempfile
    import keras
    import numpy as np
    import torch.distributed as dist
    import keras_bayes

    # torchrun starts one process per rank and sets the environment; run
    # alone, this script is a group of one.
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tempfile.mkdtemp()}/store")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x), seed=0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    keras_bayes.distributed.broadcast_variables(model)  # rank 0's values
    dist.destroy_process_group()
    ```
    """
    import torch

    dist = _torch_distributed()
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if include_optimizer and optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    with torch.no_grad():
        for variable in variables:
            dist.broadcast(variable.value.data, src=src, group=group)


def _weighted_all_reduce(tensors, weight, group):
    """Σ_ranks weight·t for a list of tensors (None entries stay None),
    in one flat all-reduce per dtype."""
    import torch

    dist = _torch_distributed()
    tensors = list(tensors)
    by_dtype = {}
    for index, tensor in enumerate(tensors):
        if tensor is not None:
            by_dtype.setdefault(tensor.dtype, []).append(index)
    for dtype, indices in by_dtype.items():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices]) * weight
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for i in indices:
            size = tensors[i].numel()
            tensors[i] = flat[offset:offset + size].view(tensors[i].shape)
            offset += size
    return tensors


def _batch_size(x):
    return int(next(t for t in tree.flatten(x) if t is not None).shape[0])


def _shard_weight(x, group):
    """This rank's share n_r / N of the global batch (one scalar
    all-reduce), so that Σ_r (n_r/N)·ḡ_r is the global-batch mean."""
    import torch

    dist = _torch_distributed()
    count = torch.tensor([float(_batch_size(x))], dtype=torch.float64)
    total = count.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return float(count.item() / total.item())


def _needs_passes(model):
    return (isinstance(model, TwoPassModel)
            and shared.multi_pass_plan(model.optimizer) is not None)


def train_step(model, x, y=None, sample_weight=None, group=None):
    """One data-parallel training step on this rank's shard.

    The gradients of the step are averaged over the ranks of `group`, each
    weighted by its number of examples, before the optimizer sees them;
    every rank then applies the same update. For a
    `keras_bayes.training.TwoPassModel` whose optimizer needs several
    gradients per step (bSAM, SAM, SOBA with `mc_samples` > 1) every
    gradient of the step is averaged this way, so the perturbation and the
    curvature statistics are those of the global batch.

    The model must be compiled and built (see `fit_data_parallel`), and
    every rank must hold the same variables (`broadcast_variables`).

    Args:
        model: a compiled `keras.Model` (or `TwoPassModel`).
        x, y, sample_weight: this rank's shard of the global batch, as
            tensors or NumPy arrays (no empty shard).
        group: a `torch.distributed` process group, or None.

    Returns:
        The logs of `model.compute_metrics` on this rank: the loss tracker
        and compiled metrics have seen this rank's shards only; use
        `global_metrics_result` for the values over all ranks.

    Example (torch backend; one epoch of a loop of your own, the global
    batch of 32 split over the ranks):

    ```python
    import tempfile
    import keras
    import numpy as np
    import torch.distributed as dist
    import keras_bayes

    # torchrun starts one process per rank and sets the environment; run
    # alone, this script is a group of one.
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tempfile.mkdtemp()}/store")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x), seed=0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    keras_bayes.distributed.broadcast_variables(model)
    rank, world = dist.get_rank(), dist.get_world_size()
    for start in range(0, len(x), 32):
        lo, hi = keras_bayes.distributed.shard_bounds(32, rank, world)
        keras_bayes.distributed.train_step(
            model, x[start + lo:start + hi], y[start + lo:start + hi])
    logs = keras_bayes.distributed.global_metrics_result(model)
    dist.destroy_process_group()
    ```
    """
    import torch

    _torch_distributed()
    x, y, sample_weight = tree.map_structure(
        lambda t: None if t is None else keras.ops.convert_to_tensor(t),
        (x, y, sample_weight))
    weight = _shard_weight(x, group)

    def reducer(grads):
        return _weighted_all_reduce(grads, weight, group)

    if _needs_passes(model):
        return model.multi_pass_step((x, y, sample_weight),
                                     gradient_reducer=reducer)

    # Keras' TorchTrainer.train_step with the all-reduce inserted between
    # backward and apply.
    from keras_bayes.training.torch import loss_and_gradients

    y_pred, grads = loss_and_gradients(model, x, y, sample_weight)
    variables = model.trainable_variables
    grads = reducer(grads)
    with torch.no_grad():
        model.optimizer.apply(grads, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def global_metrics_result(model, group=None):
    """The model's metric results over all ranks (the epoch logs).

    Metric variables declared additive (`aggregation="sum"`, as the loss
    tracker, `Mean`, `Accuracy` and the other Keras metrics built on
    totals and counts) are summed over the ranks, those with
    `aggregation="mean"` averaged, the others taken from this rank; the
    local values are restored afterwards.

    Args:
        model: a compiled `keras.Model` whose metrics have seen this rank's
            shards.
        group: a `torch.distributed` process group, or None.

    Returns:
        A dict name -> float (or array), like `model.get_metrics_result()`.

    Example (torch backend):

    ```python
    import tempfile
    import keras
    import numpy as np
    import torch.distributed as dist
    import keras_bayes

    # torchrun starts one process per rank and sets the environment; run
    # alone, this script is a group of one.
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tempfile.mkdtemp()}/store")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x), seed=0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    keras_bayes.distributed.train_step(model, x, y)
    logs = keras_bayes.distributed.global_metrics_result(model)
    print(logs["loss"], logs["accuracy"])   # over all ranks
    dist.destroy_process_group()
    ```
    """
    import torch

    dist = _torch_distributed()
    world = dist.get_world_size(group)
    variables = list(model.metrics_variables)
    saved = [v.value.detach().clone() for v in variables]
    try:
        with torch.no_grad():
            for variable in variables:
                aggregation = getattr(variable, "aggregation", None)
                if aggregation not in ("sum", "mean"):
                    continue
                value = variable.value.detach().clone()
                dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
                if aggregation == "mean":
                    value = value / world
                variable.assign(value)
        results = {}
        for name, value in model.get_metrics_result().items():
            value = keras.ops.convert_to_numpy(value)
            results[name] = float(value) if np.ndim(value) == 0 else value
        return results
    finally:
        with torch.no_grad():
            for variable, value in zip(variables, saved):
                variable.assign(value)


def shard_bounds(size, rank, world):
    """[lo, hi) of rank `rank`'s contiguous shard of a batch of `size`.

    Args:
        size: int, the examples in the global batch.
        rank: int, this process's rank.
        world: int, the number of processes.

    Returns:
        `(lo, hi)`: the rank takes `batch[lo:hi]`; shards differ in size by
        at most one.

    Example:

    >>> from keras_bayes.distributed import shard_bounds
    >>> [shard_bounds(10, rank, 3) for rank in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return rank * size // world, (rank + 1) * size // world


def fit_data_parallel(model, x, y=None, sample_weight=None, batch_size=32,
                      epochs=1, shuffle=False, seed=0, group=None,
                      finalize=True):
    """Train a compiled Keras model data-parallel over torch processes.

    Like `model.fit(x, y, batch_size=batch_size, epochs=epochs)` on one
    device with the global batch, split over the processes: every rank
    calls it with the *same* full arrays and takes its contiguous shard of
    each global batch. Before the first step it builds the model, the
    compiled loss and metrics and the optimizer, and broadcasts rank 0's
    model and optimizer variables (`broadcast_variables`). At the end, as
    `fit` does, it calls `optimizer.finalize_variable_values`, which writes
    the posterior mean into the model of every rank.

    Args:
        model: a compiled `keras.Model` or `keras_bayes.training.
            TwoPassModel`; every rank builds it the same way.
        x, y, sample_weight: NumPy arrays (or nested structures of them)
            holding the whole training set, identical on every rank.
        batch_size: int, the global batch size (summed over the ranks).
            Every global batch, the last one included, must hold at least
            one example per rank.
        epochs: int.
        shuffle: bool. If True, each epoch visits the examples in the
            order of a permutation drawn from `seed` and the epoch number,
            the same on every rank. Defaults to False (in order, as
            `fit(..., shuffle=False)`).
        seed: int, the seed of that permutation.
        group: a `torch.distributed` process group, or None (the default
            group).
        finalize: bool, write the posterior mean into the model at the
            end (`optimizer.finalize_variable_values`). Defaults to True.

    Returns:
        A dict of lists, one entry per epoch, of the metric results over
        all ranks (`global_metrics_result`), like `History.history`.

    Example (torch backend; start it with `torchrun --nproc-per-node=2
    train.py`, or alone as a group of one):

    ```python
    import tempfile
    import keras
    import numpy as np
    import torch.distributed as dist
    import keras_bayes

    # torchrun starts one process per rank and sets the environment; run
    # alone, this script is a group of one.
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"file://{tempfile.mkdtemp()}/store")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x), seed=0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = keras_bayes.distributed.fit_data_parallel(
        model, x, y, batch_size=32, epochs=2)
    print(history["loss"])   # two epochs
    dist.destroy_process_group()
    ```
    """
    _, rank, world = _world(group)
    size = _batch_size(x)
    steps = -(-size // batch_size)
    last = size - (steps - 1) * batch_size
    if min(batch_size, last) < world:
        raise ValueError(
            f"Every global batch needs at least one example per process: "
            f"batch_size={batch_size} and a last batch of {last} examples "
            f"for {world} processes. Use a larger batch or drop the last "
            "examples."
        )
    if batch_size % world or last % world:
        warnings.warn(
            f"The global batches ({batch_size}, last {last}) do not split "
            f"evenly over {world} processes; the gradients are still "
            "weighted to the global-batch mean, but per-process batch "
            "sizes differ.", stacklevel=2)

    def take(indices):
        return tree.map_structure(
            lambda t: None if t is None else t[indices],
            (x, y, sample_weight))

    first = take(np.arange(min(batch_size, size)))
    # As `fit` does before its loop.
    _keras_compat.symbolic_build(model, first)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    broadcast_variables(model, group=group)
    # As `TwoPassModel.fit`: bSAM's first step runs at a sample. After the
    # broadcast every process holds the same state and seed, so it draws
    # the same sample.
    shared.prepare_training(model)

    history = {}
    for epoch in range(epochs):
        order = np.arange(size)
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(size)
        model.reset_metrics()
        for step in range(steps):
            batch = order[step * batch_size:(step + 1) * batch_size]
            lo, hi = shard_bounds(len(batch), rank, world)
            train_step(model, *take(batch[lo:hi]), group=group)
        for name, value in global_metrics_result(model, group).items():
            history.setdefault(name, []).append(value)
    if finalize:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return history


__all__ = [
    "broadcast_variables",
    "fit_data_parallel",
    "global_metrics_result",
    "shard_bounds",
    "train_step",
]
