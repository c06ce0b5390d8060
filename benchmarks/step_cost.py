"""Training-step cost of keras_bayes optimizers relative to Keras' own.

Measures the seconds per training step of `keras_bayes.optimizers.SOBA`
against `keras.optimizers.Adam` and `keras.optimizers.SGD(momentum=0.9)` on
the same model, in the same process, on the backend selected by the
`KERAS_BACKEND` environment variable, and reports the ratios
median(SOBA) / median(Adam) and median(SOBA) / median(SGD).

Method
------
* One model per optimizer, all with identical initial weights (one reference
  model is built and its weights copied), compiled with Keras' defaults
  (`jit_compile="auto"`: XLA on TensorFlow, `jax.jit` on JAX, eager on torch).
* Synthetic, seeded data (no downloads): `--data-batches` distinct batches of
  CIFAR-like 32x32x3 inputs with 10 random classes, held in memory.
* Warm-up: one short `fit` per optimizer so that tracing and compilation
  are excluded from the timings.
* Timing: every measurement is one `model.fit` call of `--steps` steps
  (`steps / data-batches` epochs over the in-memory batches), timed from
  `on_epoch_begin` of the first epoch to `on_epoch_end` of the last, after a
  barrier that waits for the device (see `DeviceBarrier`). So the per-`fit`
  setup (data adapter, callback list) and the end-of-`fit` work (SOBA writes
  its posterior mean into the model) are left out, while the per-step and
  per-epoch work of a real `fit` loop is in.
* The optimizers are interleaved over `--rounds` rounds (Adam, SGD, SOBA,
  Adam, SGD, SOBA, ...), and the median seconds per step over the rounds is
  reported, so that drifts in machine load affect all optimizers alike.
  The `paired` column (`paired_vs_adam` in the JSON) is the median over
  rounds of each round's ratio to Adam: the steadier of the two on a
  machine whose speed drifts between rounds (see `paired_ratio`).
* `--keep-freed-memory` (Linux, glibc) re-runs the command with glibc told
  to keep freed memory for reuse (`KEEP_FREED_MEMORY`): by default it
  returns large freed buffers to the system, and a torch CNN step then
  spent thousands of page faults (4 000-7 000 a step, measured) re-mapping
  its activations, which moved every optimizer's step time by 10-20 %
  between rounds. It changes nothing for one optimizer against another;
  the result records it (`keep_freed_memory`).
* Optimizer-state memory: the size of the optimizer's floating-point,
  non-scalar variables (its per-parameter slots) over the number of
  trainable parameters (Adam 2, SGD with momentum 1, SOBA 3).

Why `fit` and not `train_on_batch`: `train_on_batch` converts its logs to
NumPy after every call (a forced host sync) and, on JAX, writes the whole
training state back into the Keras variables after every call; neither
happens inside `fit`, which dispatches steps asynchronously and syncs once
per epoch. A `train_on_batch` loop therefore measures extra Python and
synchronisation overhead that a real training run does not pay, and that
overhead is the same for every optimizer, which biases the ratios towards 1.
The timer callback only implements epoch hooks, so Keras keeps its
asynchronous batch-end dispatch.

Usage
-----
    KERAS_BACKEND=jax python benchmarks/step_cost.py                # CNN, CPU
    KERAS_BACKEND=torch python benchmarks/step_cost.py --quick      # smoke run
    KERAS_BACKEND=tensorflow python benchmarks/step_cost.py \\
        --model resnet20 --steps 400 --rounds 7 --json out.json     # GPU

`benchmarks/run_all_backends.sh` runs all three backends and writes
`benchmarks/results/step_cost_cpu.{json,md}`. `--quick` uses tiny sizes; its
numbers are a smoke test, not a measurement.

To add an optimizer, add one entry to `OPTIMIZERS` (name -> factory).
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time

import keras
import numpy as np

import keras_bayes
from keras_bayes import optimizers as kb_optimizers

NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
MLP_INPUT_SHAPE = (40,)
WIDE_MLP_INPUT_SHAPE = (512,)
# Size of the training set the Bayesian optimizers are told about (CIFAR-10).
TRAIN_SET_SIZE = 50_000

# Optimizers are compared against these baselines when they are run.
BASELINES = ("adam", "sgd")

# name -> factory returning a fresh optimizer. Adding an optimizer to the
# benchmark is one line here.
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(learning_rate=1e-3),
    "sgd": lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
    "soba": lambda: kb_optimizers.SOBA(
        learning_rate=0.05, ess=TRAIN_SET_SIZE, hess_init=0.5,
        weight_decay=2e-4, seed=0,
    ),
    # Both update paths, whatever the backend's default.
    "soba-fused": lambda: kb_optimizers.SOBA(
        learning_rate=0.05, ess=TRAIN_SET_SIZE, hess_init=0.5,
        weight_decay=2e-4, seed=0, fused_update=True,
    ),
    "soba-unfused": lambda: kb_optimizers.SOBA(
        learning_rate=0.05, ess=TRAIN_SET_SIZE, hess_init=0.5,
        weight_decay=2e-4, seed=0, fused_update=False,
    ),
    # The Lie-group Bayesian learning rule, the CIFAR-10 recipe's settings.
    "lie-additive": lambda: kb_optimizers.LieAdditive(
        learning_rate=0.5, beta1=0.8, noise_scale=0.005, weight_decay=5e-4,
        seed=0,
    ),
    "lie-affine": lambda: kb_optimizers.LieAffine(
        learning_rate=1.0, ess=TRAIN_SET_SIZE, scale_lr_ratio=0.05,
        beta1=0.8, beta2=0.999, noise_scale=0.005, weight_decay=5e-4,
        seed=0,
    ),
    # Per-example gradients: trained through keras_bayes.per_example.VOGNModel
    # (every backend; on torch through torch.func.vmap).
    "vogn": lambda: kb_optimizers.VOGN(
        learning_rate=1e-3, ess=TRAIN_SET_SIZE, seed=0,
    ),
    # Two gradients per step: trained through keras_bayes.TwoPassModel.
    "sam": lambda: kb_optimizers.SAM(learning_rate=0.01, rho=0.05),
    "bsam": lambda: kb_optimizers.BSAM(
        learning_rate=0.05, ess=TRAIN_SET_SIZE, rho=0.01, seed=0,
    ),
}

QUICK = {"batch_size": 32, "steps": 6, "data_batches": 3, "rounds": 2,
         "warmup": 2}
FULL = {"batch_size": 128, "steps": 100, "data_batches": 25, "rounds": 5,
        "warmup": 5}


# ----------------------------------------------------------------------
# Models.

def build_cnn():
    """A small CIFAR-style CNN (about 29k parameters)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(NUM_CLASSES),
        ],
        name="cnn",
    )


def _conv_bn(x, filters, strides=1, relu=True):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                            use_bias=False,
                            kernel_initializer="he_normal")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x) if relu else x


def _basic_block(x, filters, strides):
    shortcut = x
    y = _conv_bn(x, filters, strides)
    y = _conv_bn(y, filters, relu=False)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=strides,
                                       use_bias=False)(shortcut)
        shortcut = keras.layers.BatchNormalization()(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def build_resnet20():
    """ResNet-20 for CIFAR (He et al. 2016): 3 stages x 3 basic blocks."""
    inputs = keras.Input(INPUT_SHAPE)
    x = _conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES)(x)
    return keras.Model(inputs, outputs, name="resnet20")


def build_mlp():
    """The demo's MLP on MNIST-1D-sized inputs (40 -> 128 -> 128 -> 10).

    Its steps are so cheap that the optimizer's own cost (and its per-op
    dispatch overhead) is a large part of them: the hardest case for a
    ratio.
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(MLP_INPUT_SHAPE),
            layers.Dense(128, activation="relu"),
            layers.Dense(128, activation="relu"),
            layers.Dense(NUM_CLASSES),
        ],
        name="mlp",
    )


def build_wide_mlp():
    """An optimizer-bound MLP (512 -> 1024 -> 1024 -> 10, 2.1 M parameters).

    At batch 32 its matrix products cost about as much as one pass over
    the weights, so the step time measures the optimizer's update itself.
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(WIDE_MLP_INPUT_SHAPE),
            layers.Dense(1024, activation="relu"),
            layers.Dense(1024, activation="relu"),
            layers.Dense(NUM_CLASSES),
        ],
        name="wide_mlp",
    )


def build_deep_mlp():
    """A many-variable model that compiles quickly: 100 Dense(16) layers
    (202 variables, 27 k parameters) on 40 inputs."""
    layers = [keras.Input(MLP_INPUT_SHAPE)]
    layers += [keras.layers.Dense(16, activation="relu") for _ in range(100)]
    layers.append(keras.layers.Dense(NUM_CLASSES))
    return keras.Sequential(layers, name="deep_mlp")


def build_mobilenetv2():
    """`keras.applications.MobileNetV2` at 32x32 (weights=None, 10
    classes): 158 trainable variables, the many-variable case."""
    return keras.applications.MobileNetV2(
        weights=None, input_shape=INPUT_SHAPE, classes=NUM_CLASSES,
        classifier_activation=None)


MODELS = {"cnn": build_cnn, "resnet20": build_resnet20, "mlp": build_mlp,
          "wide_mlp": build_wide_mlp, "deep_mlp": build_deep_mlp,
          "mobilenetv2": build_mobilenetv2}
#: Input shape per model (the others take 32x32x3 images).


def synthetic_data(batch_size, num_batches, seed=0, model="cnn"):
    """Seeded random inputs and labels, `num_batches` full batches."""
    rng = np.random.default_rng(seed)
    n = batch_size * num_batches
    shape = {"mlp": MLP_INPUT_SHAPE, "deep_mlp": MLP_INPUT_SHAPE,
             "wide_mlp": WIDE_MLP_INPUT_SHAPE}.get(model, INPUT_SHAPE)
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(n,)).astype("int32")
    return x, y


# ----------------------------------------------------------------------
# Synchronisation and timing.

def device_barrier(model):
    """Block until all work queued for `model` has finished.

    Reads a trainable variable back to the host: its value is written by the
    last optimizer update, so on every backend the read waits for that
    update (on JAX `fit` writes its state back into the variables at each
    epoch end). On CUDA torch the stream is synchronised as well.
    """
    keras.ops.convert_to_numpy(model.trainable_variables[-1])
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class EpochTimer(keras.callbacks.Callback):
    """Wall time from the first epoch's start to the last epoch's end.

    Only epoch hooks are implemented, so Keras keeps dispatching the batch
    callbacks asynchronously, as in an ordinary `fit`. Keras reads the
    epoch's logs (a sync on the last step's loss) before `on_epoch_end`;
    `device_barrier` makes the end point exact.
    """

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        device_barrier(self.model)
        self.elapsed = time.perf_counter() - self.start
        self.loss = (logs or {}).get("loss")


class Contender:
    """One optimizer with its own copy of the model."""

    def __init__(self, name, build_model, initial_weights):
        self.name = name
        self.model = build_model()
        self.model.set_weights(initial_weights)
        self.optimizer = OPTIMIZERS[name]()
        if kb_optimizers.TwoPassOptimizer in type(self.optimizer).__mro__:
            self.model = keras_bayes.TwoPassModel(self.model)
        elif isinstance(self.optimizer, kb_optimizers.VOGN):
            from keras_bayes.per_example import VOGNModel

            self.model = VOGNModel(self.model)
        self.model.compile(
            optimizer=self.optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.seconds_per_step = []
        self.last_loss = None

    def warm_up(self, x, y, batch_size, steps):
        """Trace and compile: a short `fit`, whose wall time (trace,
        compile and `steps` steps, what a user waits for before the first
        epoch gets going) is recorded as `first_fit_s`."""
        start = time.perf_counter()
        self.model.fit(x, y, batch_size=batch_size, epochs=1,
                       steps_per_epoch=steps, shuffle=False, verbose=0)
        device_barrier(self.model)
        self.first_fit_s = time.perf_counter() - start

    def time_steps(self, x, y, batch_size, epochs):
        """One timed `fit` of `epochs` passes over (x, y)."""
        timer = EpochTimer()
        self.model.fit(x, y, batch_size=batch_size, epochs=epochs,
                       shuffle=False, verbose=0, callbacks=[timer])
        device_barrier(self.model)
        steps = epochs * (len(x) // batch_size)
        self.seconds_per_step.append(timer.elapsed / steps)
        self.last_loss = timer.loss

    def state_per_param(self):
        """Per-parameter optimizer slots, as a multiple of the parameters.

        Counts the optimizer's floating-point, non-scalar variables: this
        leaves out the step counter, the learning rate and the integer state
        of random seed generators.
        """
        slots = sum(
            math.prod(v.shape)
            for v in self.optimizer.variables
            if len(v.shape) > 0 and "float" in str(v.dtype)
        )
        return slots / count_params(self.model)


def count_params(model):
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def run_benchmark(args):
    """Warm up, then time the optimizers interleaved; return a result dict."""
    keras.utils.set_random_seed(args.seed)
    build_model = MODELS[args.model]
    x, y = synthetic_data(args.batch_size, args.data_batches, args.seed,
                          args.model)
    initial_weights = build_model().get_weights()
    contenders = [Contender(name, build_model, initial_weights)
                  for name in args.optimizers]
    for contender in contenders:
        contender.warm_up(x, y, args.batch_size, args.warmup)

    epochs = math.ceil(args.steps / args.data_batches)
    for _ in range(args.rounds):
        for contender in contenders:
            contender.time_steps(x, y, args.batch_size, epochs)

    return make_result(args, contenders, epochs * args.data_batches)


# ----------------------------------------------------------------------
# Environment description.

def _git_commit():
    """The checkout's commit (None outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def backend_version():
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch",
              "numpy": "numpy"}.get(backend)
    if module is None:
        return None
    return __import__(module).__version__


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description():
    """The accelerator the backend uses, or the CPU; no host names."""
    backend = keras.backend.backend()
    gpu = None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            gpu = details.get("device_name", gpus[0].name)
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            gpu = device.device_kind
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    if gpu is not None:
        return {"kind": "gpu", "name": gpu}
    return {"kind": "cpu", "name": _cpu_name(), "cores": os.cpu_count()}


def device_label(device):
    if device["kind"] == "gpu":
        return f"gpu: {device['name']}"
    return f"cpu: {device['name']} ({device['cores']} cores)"


# ----------------------------------------------------------------------
# Results.

def paired_ratio(seconds, base_seconds):
    """Median over rounds of one optimizer's time over the baseline's time
    in the same round.

    The machine's speed drifts between rounds (the same command swings by
    10-30 % on a shared 2-core machine); a round's two measurements are
    seconds apart, so their ratio cancels most of the drift that the ratio
    of the two medians still carries.
    """
    if len(seconds) != len(base_seconds):
        raise ValueError(
            f"paired_ratio needs one time per round for both optimizers, "
            f"got {len(seconds)} and {len(base_seconds)}.")
    return statistics.median(t / b for t, b in zip(seconds, base_seconds))


def make_result(args, contenders, timed_steps):
    medians = {c.name: statistics.median(c.seconds_per_step)
               for c in contenders}
    optimizers = {
        c.name: {
            "median_s_per_step": medians[c.name],
            "min_s_per_step": min(c.seconds_per_step),
            "s_per_step": c.seconds_per_step,
            "state_per_param": c.state_per_param(),
            "final_loss": c.last_loss,
            "first_fit_s": c.first_fit_s,
        }
        for c in contenders
    }
    minima = {c.name: min(c.seconds_per_step) for c in contenders}
    first_fit = {c.name: c.first_fit_s for c in contenders}
    rounds = {c.name: c.seconds_per_step for c in contenders}
    ratios = {
        name: {
            **{f"vs_{base}": medians[name] / medians[base]
               for base in BASELINES if base in medians},
            **{f"min_vs_{base}": minima[name] / minima[base]
               for base in BASELINES if base in medians},
            **{f"paired_vs_{base}": paired_ratio(rounds[name], rounds[base])
               for base in BASELINES if base in medians},
            **{f"first_fit_vs_{base}": first_fit[name] / first_fit[base]
               for base in BASELINES if base in medians},
        }
        for name in medians if name not in BASELINES
    }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _git_commit(),
        "backend": keras.backend.backend(),
        "backend_version": backend_version(),
        "keras_version": keras.__version__,
        "keras_bayes_version": getattr(keras_bayes, "__version__", None),
        "python_version": platform.python_version(),
        "device": device_description(),
        "jit_compile": bool(contenders[0].model.jit_compile),
        "model": args.model,
        "params": count_params(contenders[0].model),
        "batch_size": args.batch_size,
        "timed_steps": timed_steps,
        "data_batches": args.data_batches,
        "rounds": args.rounds,
        "quick": args.quick,
        # Other processes share the machine: the 1-minute load average at
        # the end of the run (absolute times are inflated by it, ratios of
        # interleaved runs much less).
        "load_average": os.getloadavg()[0],
        "keep_freed_memory": keeps_freed_memory(),
        "optimizers": optimizers,
        "ratios": ratios,
    }


def format_table(result):
    """The result as a small plain-text table."""
    lines = [
        f"backend   {result['backend']} {result['backend_version']} "
        f"(keras {result['keras_version']}, jit_compile="
        f"{result['jit_compile']})",
        f"device    {device_label(result['device'])}",
        f"model     {result['model']}, {result['params']:,} params, "
        f"batch {result['batch_size']}, {result['timed_steps']} steps x "
        f"{result['rounds']} rounds",
        "",
        f"load      {result['load_average']:.1f} (1-minute average)",
        "",
        f"{'optimizer':<12} {'ms/step':>9} {'vs adam':>8} {'vs sgd':>8} "
        f"{'min vs adam':>11} {'paired':>8} {'first fit s':>11} "
        f"{'vs adam':>8} "
        f"{'state/param':>12}",
    ]
    medians = {name: entry["median_s_per_step"]
               for name, entry in result["optimizers"].items()}
    for name, entry in result["optimizers"].items():
        ratios = [
            f"{medians[name] / medians[base]:8.3f}" if base in medians
            else f"{'-':>8}"
            for base in BASELINES
        ]
        minima = {n: e["min_s_per_step"]
                  for n, e in result["optimizers"].items()}
        first = {n: e["first_fit_s"] for n, e in result["optimizers"].items()}
        rounds = {n: e["s_per_step"] for n, e in result["optimizers"].items()}
        base = BASELINES[0] if BASELINES[0] in medians else None
        min_ratio = (f"{minima[name] / minima[base]:11.3f}" if base
                     else f"{'-':>11}")
        paired = (f"{paired_ratio(entry['s_per_step'], rounds[base]):8.3f}"
                  if base else f"{'-':>8}")
        first_ratio = (f"{first[name] / first[base]:8.2f}" if base
                       else f"{'-':>8}")
        lines.append(
            f"{name:<12} {1e3 * medians[name]:9.2f} {' '.join(ratios)} "
            f"{min_ratio} {paired} {first[name]:11.1f} {first_ratio} "
            f"{entry['state_per_param']:12.2f}"
        )
    if result["quick"]:
        lines.append("")
        lines.append("(--quick: tiny sizes, the timings are not meaningful)")
    return "\n".join(lines)


def append_json(path, result):
    """Append `result` to the JSON list in `path` (created if missing)."""
    results = []
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path) as f:
            results = json.load(f)
        if isinstance(results, dict):
            results = [results]
    results.append(result)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------
# Command line.

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--optimizers", default="adam,sgd,soba",
                        help="comma-separated names from: "
                        + ", ".join(OPTIMIZERS)
                        + " (default: all)")
    parser.add_argument("--steps", type=int,
                        help=f"timed steps per measurement, rounded up to a "
                        f"multiple of --data-batches (default "
                        f"{FULL['steps']})")
    parser.add_argument("--rounds", type=int,
                        help=f"interleaved rounds (default {FULL['rounds']})")
    parser.add_argument("--batch-size", type=int,
                        help=f"default {FULL['batch_size']}")
    parser.add_argument("--data-batches", type=int,
                        help="distinct in-memory batches, one epoch "
                        f"(default {FULL['data_batches']})")
    parser.add_argument("--warmup", type=int,
                        help="untimed warm-up steps per optimizer "
                        f"(default {FULL['warmup']})")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test: "
                        + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="run with glibc keeping freed memory "
                        "(KEEP_FREED_MEMORY), for steadier timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH",
                        help="append the result to this JSON list")
    args = parser.parse_args(argv)

    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.data_batches = min(args.data_batches, args.steps)
    args.warmup = min(args.warmup, args.data_batches)
    args.optimizers = [n.strip() for n in args.optimizers.split(",")
                       if n.strip()]
    unknown = [n for n in args.optimizers if n not in OPTIMIZERS]
    if unknown or not args.optimizers:
        parser.error(f"unknown optimizers {unknown}; "
                     f"choose from {list(OPTIMIZERS)}")
    for key in ("steps", "rounds", "batch_size", "data_batches", "warmup"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


#: glibc settings that keep freed memory in the process for reuse instead
#: of returning it to the system: large buffers (activations) are then not
#: re-mapped, and page-faulted, every step. Read by glibc at start-up only.
KEEP_FREED_MEMORY = {
    "MALLOC_MMAP_THRESHOLD_": str(256 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
    "MALLOC_TOP_PAD_": str(256 * 2**20),
}


def keeps_freed_memory():
    return all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY.items())


def main(argv=None):
    args = parse_args(argv)
    if args.keep_freed_memory and not keeps_freed_memory():
        # glibc reads these only when the process starts.
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  {**os.environ, **KEEP_FREED_MEMORY})
    result = run_benchmark(args)
    print(format_table(result))
    if args.json:
        append_json(args.json, result)
        print(f"\nappended to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
