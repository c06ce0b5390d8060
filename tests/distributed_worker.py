"""Data-parallel runs and their single-device references, for one backend.

Run by `tests/test_distributed.py` in subprocesses, because the number of
devices must be fixed before the backend initialises:

```
XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
    python tests/distributed_worker.py out.npz [METHOD ...]
KERAS_BACKEND=tensorflow python tests/distributed_worker.py out.npz
KERAS_BACKEND=torch python tests/distributed_worker.py out_RANK.npz \
    RANK 2 /tmp/store_file [METHOD ...]          # once per rank, RANK = 0, 1
```

For every method (SOBA through plain `compile/fit`; SOBA with two samples,
bSAM and SAM through `TwoPassModel`) it trains the same tiny model with the
same seeds and the same global batches (`shuffle=False`) once on one device
and once data-parallel over two replicas: JAX `keras.distribution.
DataParallel` over two forced host devices; TensorFlow `tf.distribute.
MirroredStrategy` over two logical CPUs; torch two processes (gloo, file
store) through `keras_bayes.distributed.fit_data_parallel`. At the end of
the epoch (before the posterior mean is written into the model) it records,
per replica, the model's variables (the posterior sample) and every
optimizer variable (posterior mean, curvature/precision, momentum, step
counter, noise-seed state), `posterior_mean()`, `posterior_std()`, the
logged loss and accuracy, and after `fit` the weights it leaves (the mean).
Keys of the `.npz` file: `"{method}/{mode}/{kind}/{index}/{replica}"`
(torch: one file per rank, replica 0 in each).
"""

import contextlib
import os
import sys
import time

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
REPLICAS = 2
STEPS = 4
BATCH = 16
SPLIT = 2  # bSAM's batch_split in the m-sharpness scenario

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPUs, set before TensorFlow creates its devices.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * REPLICAS,
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bayes  # noqa: E402
from keras_bayes.training import TwoPassModel  # noqa: E402


def make_data(method, distributed=True):
    rng = np.random.default_rng(0)
    size = STEPS * BATCH
    if BACKEND == "torch" and method != "bsam_split2":
        # An uneven last batch (13 examples: shards of 6 and 7), which the
        # gradient weighting of `keras_bayes.distributed` must get right.
        size -= 3
    x = rng.normal(size=(size, 8)).astype("float32")
    y = rng.integers(0, 3, size=(size,)).astype("int32")
    if method == "bsam_split2" and BACKEND != "jax" and not distributed:
        # On TensorFlow and torch each replica cuts its own shard into the
        # `batch_split` sub-batches, so sub-batch j of a step is the union
        # of the replicas' j-th parts. The reference sees each global batch
        # reordered so that its contiguous sub-batches are those unions
        # (JAX SPMD cuts the global batch, as on one device).
        order = np.arange(size).reshape(STEPS, REPLICAS, SPLIT, -1)
        order = order.transpose(0, 2, 1, 3).reshape(-1)
        x, y = x[order], y[order]
    return x, y


def make_model():
    init = keras.initializers.GlorotUniform(seed=7)
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="tanh", kernel_initializer=init),
        keras.layers.Dense(3, kernel_initializer=init),
    ])


# Large enough steps (and β2 = 0.9) that the posterior mean and curvature
# move visibly in four steps; the same arguments on one and on two devices.
# JAX and TensorFlow: `fused_update=False`, because the fused path is never
# used under a distribution or strategy and would draw the noise in another
# arrangement (see `PosteriorOptimizer`). torch: the default (fused), which
# every process of `keras_bayes.distributed` uses as on one device.
FUSED = None if BACKEND == "torch" else False
METHODS = {
    "soba": (False, lambda: keras_bayes.optimizers.SOBA(
        0.1, ess=64, hess_init=0.3, beta2=0.9, weight_decay=1e-3, seed=11,
        fused_update=FUSED)),
    "soba_mc2": (True, lambda: keras_bayes.optimizers.SOBA(
        0.1, ess=64, hess_init=0.3, beta2=0.9, weight_decay=1e-3, mc_samples=2,
        seed=11, fused_update=FUSED)),
    "bsam": (True, lambda: keras_bayes.optimizers.BSAM(
        0.05, ess=64, rho=0.05, beta2=0.9, seed=11, fused_update=FUSED)),
    "bsam_split2": (True, lambda: keras_bayes.optimizers.BSAM(
        0.05, ess=64, rho=0.05, beta2=0.9, batch_split=SPLIT, seed=11,
        fused_update=FUSED)),
    "sam": (True, lambda: keras_bayes.optimizers.SAM(
        0.1, rho=0.1, momentum=0.9, weight_decay=1e-3)),
    # torch only: the optimizer's seed left to the global generator, which
    # differs between the ranks.
    "soba_seed_none": (False, lambda: keras_bayes.optimizers.SOBA(
        0.1, ess=64, hess_init=0.3, beta2=0.9, weight_decay=1e-3)),
}
JAX_TF_METHODS = ["soba", "soba_mc2", "bsam", "bsam_split2", "sam"]
TORCH_METHODS = JAX_TF_METHODS + ["soba_seed_none"]


_STRATEGY = []


def mirrored_strategy():
    """One MirroredStrategy for the whole process.

    A second strategy in the same process can reuse the collective instance
    keys of the first, and the replicas' all-reduces then fail with a shape
    mismatch.
    """
    if not _STRATEGY:
        _STRATEGY.append(tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(REPLICAS)]))
    return _STRATEGY[0]


def per_replica(variable):
    """The value of `variable` on every replica (one entry on one device)."""
    value = variable.value
    if BACKEND == "tensorflow" and hasattr(value, "values"):
        return [np.asarray(v.numpy()) for v in value.values]
    if BACKEND == "jax":
        shards = getattr(value, "addressable_shards", None)
        if shards:
            return [np.asarray(s.data) for s in shards]
    return [keras.ops.convert_to_numpy(value)]


class Recorder(keras.callbacks.Callback):
    """Records the training state at the end of the (only) epoch."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        optimizer = model.optimizer
        for index, variable in enumerate(model.trainable_variables):
            self.record[f"sample/{index}"] = per_replica(variable)
        for index, variable in enumerate(optimizer.variables):
            self.record[f"optimizer/{index}"] = per_replica(variable)
        if hasattr(optimizer, "posterior_mean"):
            for index, value in enumerate(optimizer.posterior_mean()):
                self.record[f"mean/{index}"] = [value]
            for index, value in enumerate(optimizer.posterior_std()):
                self.record[f"std/{index}"] = [value]
        for name in ("loss", "accuracy"):
            self.record[f"{name}/0"] = [np.asarray(logs[name], "float64")]


def compile_model(method):
    two_pass, make_optimizer = METHODS[method]
    model = make_model()
    if two_pass:
        model = TwoPassModel(model)
    model.compile(
        optimizer=make_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def record_final(model, record):
    """After `fit`: the model holds the posterior mean (finalize)."""
    for index, variable in enumerate(model.trainable_variables):
        record[f"final/{index}"] = per_replica(variable)


def train(method, distributed):
    """`fit` on one device or under the backend's data-parallel engine."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    x, y = make_data(method, distributed)
    if BACKEND == "jax":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices("cpu")[:REPLICAS])
            if distributed else None)
        scope = contextlib.nullcontext()
    elif distributed:
        scope = mirrored_strategy().scope()
    else:
        scope = contextlib.nullcontext()
    with scope:
        model = compile_model(method)
    record = {f"initial/{index}": [keras.ops.convert_to_numpy(v)]
              for index, v in enumerate(model.trainable_variables)}
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[Recorder(record)])
    record_final(model, record)
    if BACKEND == "jax":
        keras.distribution.set_distribution(None)
    return record


def train_torch_ddp(method, rank):
    """`keras_bayes.distributed.fit_data_parallel` on this process."""
    from keras_bayes import distributed

    keras.backend.clear_session()
    # Different global seeds per rank: the optimizer's noise must still be
    # replica-identical (its seed state is broadcast from rank 0).
    keras.utils.set_random_seed(100 + rank if method == "soba_seed_none"
                                else 0)
    x, y = make_data(method)
    model = compile_model(method)
    history = distributed.fit_data_parallel(
        model, x, y, batch_size=BATCH, epochs=1, finalize=False)
    record = {}
    recorder = Recorder(record)
    recorder.set_model(model)
    recorder.on_epoch_end(0, history_logs(history))
    model.optimizer.finalize_variable_values(model.trainable_variables)
    record_final(model, record)
    return record


def history_logs(history):
    return {name: values[-1] for name, values in history.items()}


def two_pass_guard_message():
    """What a multi-pass `fit` says under torch.distributed without the
    data-parallel step (it must refuse rather than let replicas drift)."""
    keras.backend.clear_session()
    x, y = make_data("bsam")
    model = compile_model("bsam")
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    except NotImplementedError as error:
        return str(error)
    return ""


def run_and_store(arrays, method, mode, function, *args):
    start = time.perf_counter()
    record = function(*args)
    seconds = time.perf_counter() - start
    print(f"{method}/{mode}: {seconds:.2f} s", flush=True)
    for key, values in record.items():
        for replica, value in enumerate(values):
            arrays[f"{method}/{mode}/{key}/{replica}"] = value


def main(path, methods):
    arrays = {}
    for method in methods:
        run_and_store(arrays, method, "single", train, method, False)
        run_and_store(arrays, method, "distributed", train, method, True)
    np.savez(path, **arrays)


def main_torch(path, methods, rank, world, store):
    """First the single-process references (plain `fit` in one process on
    the global batch, shared out between the ranks, before any process
    group exists), then every rank joins the group and trains
    data-parallel. Each rank writes its own file."""
    from datetime import timedelta

    import torch.distributed as dist

    arrays = {}
    references = [m for m in methods if m != "soba_seed_none"]
    for method in references[rank::world]:
        run_and_store(arrays, method, "single", train, method, False)
    dist.init_process_group("gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        for method in methods:
            run_and_store(arrays, method, "distributed", train_torch_ddp,
                          method, rank)
        arrays["guard"] = np.asarray(two_pass_guard_message())
    finally:
        dist.destroy_process_group()
    np.savez(path, **arrays)


if __name__ == "__main__":
    if BACKEND == "torch":
        # distributed_worker.py OUT.npz RANK WORLD STORE [METHOD ...]
        rank, world, store = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        main_torch(sys.argv[1], sys.argv[5:] or TORCH_METHODS, rank, world,
                   store)
    else:
        main(sys.argv[1], sys.argv[2:] or JAX_TF_METHODS)
