"""The CIFAR-10 (and CIFAR-100) benchmark of the report: every method, one
harness.

    python benchmarks/cifar10.py --methods sgd,soba,bsam --epochs 60 \\
        --out benchmarks/results/cifar10_gpu

trains ResNet-20 (FRN by default, `--model resnet20-bn` for BatchNorm, or
`--model cnn` for a quick CPU model) on CIFAR-10 with each method's recipe
(the paper's batch size, learning rate, warmup + cosine schedule and prior),
evaluates at the mean and averaged over posterior samples, and writes
`<out>.json` (one record per run, appended as runs finish) and `<out>.md`.

Data: `--data offline` (default) reads the JPEG archive of
`keras_bayes.datasets.load_cifar10`; `--data tfds` uses `tensorflow_datasets`
(internet or a prepared data directory). `--dataset cifar100` (the report's
second data set) has no offline copy: it needs `--data tfds`. Augmentation (`--augment`, on by
default): random 32×32 crops of the 4-pixel zero-padded image and horizontal
flips, in NumPy, so every backend sees the same pipeline; the methods' `ess`
then counts the augmentation factor as in their papers.

Metrics: accuracy, NLL, ECE (15 bins), Brier, misclassification AUROC, and,
with `--heldout-classes` (the class-split protocol: train on the other
classes, score the held-out test images as out-of-distribution), OOD AUROC;
for posterior methods both at the mean and averaged over `--test-samples`
samples. Seconds per epoch (first epoch, with compilation, reported apart)
and peak memory (device memory on a GPU, peak process RSS on a CPU).

Resuming: a run whose (method, seed, model, epochs) record is in `<out>.json`
is skipped; an interrupted run continues from its last finished epoch
through `keras.callbacks.BackupAndRestore` in `<out>_backup/`.

An experiment, not part of the library: it uses keras_bayes as a user would
(the schedule is `keras_bayes.recipes.warmup_cosine_schedule`).
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

# Run as a script (`python benchmarks/cifar10.py`), the checkout this file is
# in comes first on the path, so its keras_bayes is the one measured.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import keras  # noqa: E402

from keras_bayes import datasets  # noqa: E402
from keras_bayes import models  # noqa: E402
from keras_bayes import optimizers  # noqa: E402
from keras_bayes.metrics import evaluate_probabilities  # noqa: E402
from keras_bayes.per_example import VOGNModel  # noqa: E402
from keras_bayes.predictive import Predictive  # noqa: E402
from keras_bayes.predictive import softmax  # noqa: E402
from keras_bayes.recipes import warmup_cosine_schedule  # noqa: E402
from keras_bayes.training import TwoPassModel  # noqa: E402

CIFAR10_TRAIN_SIZE = 50_000
CHANNEL_MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
CHANNEL_STD = np.array([0.2470, 0.2435, 0.2616], "float32")
# Per data set: (number of classes, channel mean, channel std).
DATASETS = {
    "cifar10": (10, CHANNEL_MEAN, CHANNEL_STD),
    "cifar100": (100, np.array([0.5071, 0.4865, 0.4409], "float32"),
                 np.array([0.2673, 0.2564, 0.2762], "float32")),
}
# The m-sharpness of the bSAM paper's SAM and bSAM rows (official README:
# `--batchsplit 8` for SAM-SGD and bSAM).
MSHARPNESS = 8


# ----------------------------------------------------------------------
# Recipes. Each returns (optimizer, batch_size, wrap): the optimizer with its
# schedule, the paper's batch size, and the training-step wrapper it needs
# (`TwoPassModel`, `VOGNModel`, or None for Keras' own step).

def warmup_cosine_by_epochs(peak, steps_per_epoch, epochs, warmup_epochs=5):
    """`recipes.warmup_cosine_schedule` with the warmup counted in epochs.

    The papers warm up for 5 epochs; a run shorter than 20 epochs warms up
    for a quarter of its epochs, and always ends with at least one step of
    decay.
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, steps_per_epoch * min(warmup_epochs, epochs // 4))
    return warmup_cosine_schedule(peak, total_steps=total,
                                  warmup_steps=warmup)


def _sgd(ctx):
    # The baselines of the IVON scripts: SGD 0.1, momentum 0.9, δ = 2e-4.
    return (keras.optimizers.SGD(ctx.schedule(0.1, 128), momentum=0.9,
                                 weight_decay=2e-4), 128, None)


def _adam(ctx):
    return (keras.optimizers.AdamW(ctx.schedule(2e-3, 128),
                                   weight_decay=2e-4), 128, None)


def _sam_sgd(ctx):
    # bSAM's SAM-SGD baseline (official README, CIFAR-10): ρ = 0.05,
    # heavy-ball SGD, m-sharpness 8 (each eighth of the batch perturbed along
    # its own gradient).
    return (optimizers.SAM(ctx.schedule(0.1, 128), rho=0.05, momentum=0.9,
                           weight_decay=2e-4, batch_split=MSHARPNESS), 128,
            TwoPassModel)


def _sam_adam(ctx):
    # SAM-Adam, the bSAM paper's other SAM row (Möllenhoff & Khan, ICLR 2023,
    # Table 1). The authors' public code has no Adam baseline and the
    # paper's appendix values could not be retrieved here, so: the Adam
    # row's learning rate and batch, SAM-SGD's ρ = 0.05 and m-sharpness 8,
    # δ = 2e-4 as coupled L2 (as in their SAM-SGD). Stated departure.
    return (optimizers.SAM(ctx.schedule(2e-3, 128), rho=0.05, base="adam",
                           weight_decay=2e-4, batch_split=MSHARPNESS), 128,
            TwoPassModel)


def _bsam(ctx):
    # Official README, CIFAR-10: α 0.5, ρ 0.01, priorprec 40, N = 4·50 000
    # (augmentation factor 4), m-sharpness 8, batch 200.
    n = ctx.ess(4)
    return (optimizers.BSAM(ctx.schedule(0.5, 200), ess=n, rho=0.01,
                            weight_decay=40.0 / n, batch_split=8,
                            seed=ctx.seed), 200, TwoPassModel)


def _soba(ctx):
    # ivon-experiments CIFAR-10 ResNet-20: α 0.2, h0 0.5, δ 2e-4, λ 50 000,
    # batch 50, 5-epoch warmup then cosine.
    return (optimizers.SOBA(ctx.schedule(0.2, 50), ess=ctx.ess(1),
                            hess_init=0.5, weight_decay=2e-4,
                            beta2=0.99999, seed=ctx.seed), 50, None)


def _lie_additive(ctx):
    # Lie-group README, ResNet-20: α1 0.5, β1 0.8, Gaussian noise 0.005,
    # priorprec 25, batch 200.
    return (optimizers.LieAdditive(
        ctx.schedule(0.5, 200), beta1=0.8, noise="gaussian",
        noise_scale=0.005, weight_decay=25.0 / ctx.ess(1), seed=ctx.seed),
        200, None)


def _lie_affine(ctx):
    # Lie-group README, ResNet-20: α1 1.0, α2 0.05, β1 0.8, β2 0.999,
    # temperature 1, Gaussian noise 0.005, priorprec 25, batch 200.
    return (optimizers.LieAffine(
        ctx.schedule(1.0, 200), ess=ctx.ess(1), scale_lr_ratio=0.05,
        beta1=0.8, beta2=0.999, temperature=1.0, noise="gaussian",
        noise_scale=0.005, weight_decay=25.0 / ctx.ess(1), seed=ctx.seed),
        200, None)


def _vogn(ctx):
    # The paper's CIFAR-10 recipe (ResNet-18-BN, dl-with-bayes config
    # `resnet18_vogn_bs256_8gpu.json`; see the VOGN docstring): α = 1e-4,
    # β1 = 0.9, curvature rate 0.999 (beta2 = 0.001), damping 1e-3,
    # N = 10 × the training set with augmentation, prior variance 0.02 so
    # δ = 1/(N·0.02), batch 256. Two departures, stated: the harness's
    # warmup + cosine schedule instead of ×0.1 steps at epochs 80/120, and
    # one MC sample per step instead of 5 per process on 8 GPUs. BatchNorm's
    # γ, β are deterministic (`VOGNModel`), as in the paper.
    ess = ctx.ess(10)
    return (optimizers.VOGN(ctx.schedule(1e-4, 256), ess=ess, beta1=0.9,
                            beta2=0.001, damping=1e-3,
                            weight_decay=1.0 / (ess * 0.02), seed=ctx.seed),
            256, VOGNModel)


METHODS = {
    "sgd": _sgd,
    "adam": _adam,
    "sam-sgd": _sam_sgd,
    "sam-adam": _sam_adam,
    "bsam": _bsam,
    "soba": _soba,
    "lie-additive": _lie_additive,
    "lie-affine": _lie_affine,
    "vogn": _vogn,
}


class RecipeContext:
    """What a recipe needs to know about the run."""

    def __init__(self, train_size, epochs, seed, augment,
                 batch_size_override=None):
        self.train_size = train_size
        self.epochs = epochs
        self.seed = seed
        self.augment = augment
        self.batch_size_override = batch_size_override

    def batch_size(self, default):
        return self.batch_size_override or default

    def schedule(self, peak, batch_size):
        steps = math.ceil(self.train_size / self.batch_size(batch_size))
        return warmup_cosine_by_epochs(peak, steps, self.epochs)

    def ess(self, augmentation_factor):
        """The training-set size, times the augmentation factor if used."""
        return float(self.train_size * (augmentation_factor
                                        if self.augment else 1))


def build_method(name, ctx):
    """(optimizer, batch_size, wrap) for method `name`."""
    if name not in METHODS:
        raise ValueError(f"`--methods` entries must be in {sorted(METHODS)}. "
                         f"Received: {name!r}")
    optimizer, batch_size, wrap = METHODS[name](ctx)
    return optimizer, ctx.batch_size(batch_size), wrap


# ----------------------------------------------------------------------
# Data.

def normalize(images, dataset="cifar10"):
    _, mean, std = DATASETS[dataset]
    return ((images.astype("float32") / 255.0) - mean) / std


def load_tfds_or_explain(dataset):
    """`datasets.load_tfds(dataset)`, with an error that says what to do
    when TFDS is missing or cannot reach its data."""
    try:
        return datasets.load_tfds(dataset)
    except ImportError as error:
        raise RuntimeError(
            f"`--data tfds` needs the `tensorflow_datasets` package to load "
            f"{dataset} ({error}).") from error
    except Exception as error:
        raise RuntimeError(
            f"Could not load {dataset} through tensorflow_datasets: "
            f"{type(error).__name__}: {error}. It needs internet access "
            "(first download) or a prepared TFDS data directory "
            "($TFDS_DATA_DIR).") from error


def load_data(source, train_size=None, test_size=None, path=None, seed=0,
              heldout_classes=(), dataset="cifar10"):
    """(x_train, y_train), (x_test, y_test), x_ood (None without held-out
    classes): normalised float32 images, labels renumbered when classes are
    held out."""
    if dataset not in DATASETS:
        raise ValueError(f"`--dataset` must be one of {sorted(DATASETS)}. "
                         f"Received: {dataset!r}")
    if source == "offline" and dataset != "cifar10":
        raise ValueError(
            f"There is no offline copy of {dataset} (the offline archive "
            "holds CIFAR-10 only). Use `--data tfds`, which needs "
            "`tensorflow_datasets` and internet access or a prepared TFDS "
            f"data directory. Received: --dataset {dataset} --data offline")
    if source == "offline":
        (x, y), (xt, yt) = datasets.load_cifar10(
            path=path, train_size=train_size, test_size=test_size, seed=seed)
    elif source == "tfds":
        (x, y), (xt, yt) = load_tfds_or_explain(dataset)
        rng = np.random.default_rng(seed)
        if train_size:
            keep = rng.permutation(len(x))[:train_size]
            x, y = x[keep], y[keep]
        if test_size:
            keep = rng.permutation(len(xt))[:test_size]
            xt, yt = xt[keep], yt[keep]
    else:
        raise ValueError(f"`--data` must be 'offline' or 'tfds'. Received: "
                         f"{source!r}")
    x, xt = normalize(x, dataset), normalize(xt, dataset)
    y, yt = y.astype("int64").ravel(), yt.astype("int64").ravel()
    x_ood = None
    if heldout_classes:
        kept = [c for c in range(DATASETS[dataset][0])
                if c not in heldout_classes]
        (x, y), _ = datasets.class_split(x, y, kept)
        (xt, yt), x_ood = datasets.class_split(xt, yt, kept)
    return (x, y), (xt, yt), x_ood


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled batches with random crops (4-pixel padding) and flips."""

    def __init__(self, x, y, batch_size, seed, augment=True):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1)
                          * self.batch_size]
        x, y = self.x[rows], self.y[rows]
        if not self.augment:
            return x, y
        padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
        out = np.empty_like(x)
        tops = self.rng.integers(0, 9, len(x))
        lefts = self.rng.integers(0, 9, len(x))
        flips = self.rng.random(len(x)) < 0.5
        for i in range(len(x)):
            crop = padded[i, tops[i]:tops[i] + 32, lefts[i]:lefts[i] + 32]
            out[i] = crop[:, ::-1] if flips[i] else crop
        return out, y


# ----------------------------------------------------------------------
# Measurement.

class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


# A GPU's peak memory in bytes and its name, one small function per backend;
# each returns None when the backend runs on the CPU.

def _jax_gpu():
    import jax

    device = jax.devices()[0]
    return device if device.platform == "gpu" else None


def _jax_gpu_peak_memory():
    device = _jax_gpu()
    return None if device is None else device.memory_stats()[
        "peak_bytes_in_use"]


def _jax_gpu_name():
    device = _jax_gpu()
    return None if device is None else device.device_kind


def _torch_gpu_peak_memory():
    import torch

    return torch.cuda.max_memory_allocated() if (
        torch.cuda.is_available()) else None


def _torch_gpu_name():
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _tensorflow_gpu_peak_memory():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _tensorflow_gpu_name():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get(
        "device_name", "GPU")


GPU_PEAK_MEMORY = {"jax": _jax_gpu_peak_memory,
                   "torch": _torch_gpu_peak_memory,
                   "tensorflow": _tensorflow_gpu_peak_memory}
GPU_NAME = {"jax": _jax_gpu_name, "torch": _torch_gpu_name,
            "tensorflow": _tensorflow_gpu_name}


def _ask_backend(functions):
    """`functions[backend]()`, or None when it has none or fails."""
    function = functions.get(keras.backend.backend())
    try:
        return None if function is None else function()
    except Exception:  # pragma: no cover - depends on the device
        return None


def peak_memory_bytes():
    """(bytes, what): device peak on a GPU, else the process' peak RSS."""
    peak = _ask_backend(GPU_PEAK_MEMORY)
    if peak is not None:
        return peak, "gpu peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, (
        "process peak RSS")


def describe_device():
    return _ask_backend(GPU_NAME) or (
        f"CPU {platform.machine()} ({os.cpu_count()} cores)")


def git_commit():
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=10).stdout.strip() or None
    except Exception:  # pragma: no cover
        return None


def build_model(name, num_classes):
    if name == "resnet20":
        return models.resnet20(num_classes, normalization="frn")
    if name == "resnet20-bn":
        return models.resnet20(num_classes, normalization="batchnorm")
    if name == "cnn":
        return models.small_cnn(num_classes)
    raise ValueError(f"`--model` must be one of ['cnn', 'resnet20', "
                     f"'resnet20-bn']. Received: {name!r}")


def evaluate_model(model, optimizer, x, y, x_ood, test_samples, seed):
    """{"mean": metrics, "bma": metrics or None} of `model` (the network,
    not its training wrapper) trained by `optimizer`."""
    if not isinstance(optimizer, optimizers.PosteriorOptimizer):
        def point(inputs):
            return softmax(np.asarray(model.predict(inputs, batch_size=500,
                                                    verbose=0)))
        probs_ood = None if x_ood is None else point(x_ood)
        return {"mean": evaluate_probabilities(y, point(x), probs_ood),
                "bma": None}
    predictive = Predictive(model, num_samples=test_samples,
                            optimizer=optimizer, from_logits=True, seed=seed,
                            batch_size=500)
    out = {}
    at_mean = predictive.predict_at_mean(x)
    out["mean"] = evaluate_probabilities(
        y, at_mean, None if x_ood is None else
        predictive.predict_at_mean(x_ood))
    out["bma"] = evaluate_probabilities(
        y, predictive.predict(x), None if x_ood is None else
        predictive.predict(x_ood))
    return out


def run_one(method, args, data, seed):
    (x, y), (xt, yt), x_ood = data
    num_classes = DATASETS[args.dataset][0] - len(args.heldout_classes)
    keras.utils.set_random_seed(seed)
    ctx = RecipeContext(len(x), args.epochs, seed, args.augment,
                        args.batch_size)
    optimizer, batch_size, wrap = build_method(method, ctx)
    network = build_model(args.model, num_classes)
    model = network if wrap is None else wrap(network)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  metrics=["accuracy"])
    timer = EpochTimer()
    callbacks = [timer]
    if args.out:
        backup = f"{args.out}_backup/{method}-{args.model}-seed{seed}"
        callbacks.append(keras.callbacks.BackupAndRestore(backup))
    batches = AugmentedBatches(x, y, batch_size, seed, args.augment)
    start = time.perf_counter()
    model.fit(batches, epochs=args.epochs, callbacks=callbacks,
              verbose=args.verbose)
    wall = time.perf_counter() - start
    metrics = evaluate_model(network, optimizer, xt, yt, x_ood,
                             args.test_samples, seed)
    memory, memory_kind = peak_memory_bytes()
    steady = timer.seconds[1:] or timer.seconds
    return {
        "method": method,
        "dataset": args.dataset,
        "seed": seed,
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "train_size": len(x),
        "test_size": len(xt),
        "heldout_classes": list(args.heldout_classes),
        "augment": args.augment,
        "test_samples": args.test_samples,
        "seconds_per_epoch": float(np.median(steady)) if steady else None,
        "first_epoch_seconds": timer.seconds[0] if timer.seconds else None,
        "wall_seconds": wall,
        "peak_memory_mb": memory / 2**20,
        "peak_memory_kind": memory_kind,
        "mean": metrics["mean"],
        "bma": metrics["bma"],
    }


COLUMNS = (("accuracy", "acc", "{:.4f}"), ("nll", "NLL", "{:.3f}"),
           ("ece", "ECE", "{:.4f}"), ("brier", "Brier", "{:.4f}"),
           ("misclassification_auroc", "misclass. AUROC", "{:.3f}"),
           ("ood_auroc", "OOD AUROC", "{:.3f}"))


def markdown(payload):
    records = payload["records"]
    header = ["method", "prediction"] + [c[1] for c in COLUMNS] + [
        "s/epoch", "peak MB", "seeds"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2))
             + "|"]
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        for kind in ("mean", "bma"):
            if runs[0][kind] is None:
                continue
            cells = []
            for key, _, fmt in COLUMNS:
                values = [r[kind].get(key) for r in runs
                          if r[kind].get(key) is not None]
                if not values:
                    cells.append("–")
                elif len(values) == 1:
                    cells.append(fmt.format(values[0]))
                else:
                    cells.append(fmt.format(np.mean(values)) + " ± "
                                 + fmt.format(np.std(values)))
            label = ("at the mean" if kind == "mean" and runs[0]["bma"]
                     else "point" if kind == "mean"
                     else f"{runs[0]['test_samples']}-sample average")
            lines.append("| " + " | ".join(
                [method, label] + cells + [
                    f"{np.mean([r['seconds_per_epoch'] for r in runs]):.2f}",
                    f"{max(r['peak_memory_mb'] for r in runs):.0f}",
                    ",".join(str(r["seed"]) for r in runs)]) + " |")
    first = records[0] if records else {}
    quick = (" **small setting (subset/epochs): a smoke run, not a "
             "reproduction**") if payload.get("small") else ""
    notes = [
        "",
        f"Backend {payload['backend']} on {payload['device']}; keras "
        f"{payload['keras_version']}; commit {payload['commit']}; "
        f"{payload['date']}.",
        f"Model {first.get('model')}, {first.get('epochs')} epochs, train "
        f"{first.get('train_size')} / test {first.get('test_size')} images, "
        f"augmentation {first.get('augment')}, held-out (OOD) classes "
        f"{first.get('heldout_classes') or 'none'}; peak memory: "
        f"{first.get('peak_memory_kind')}.",
        f"Command: `{payload['command']}`{quick}",
    ]
    title = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(
        first.get("dataset", "cifar10"), first.get("dataset"))
    return "\n".join([f"# {title} benchmark", ""] + lines + notes) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/cifar10.py",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="sgd,soba,bsam",
                        help=f"comma-separated, from {sorted(METHODS)}")
    parser.add_argument("--model", default="resnet20",
                        help="resnet20 (FRN), resnet20-bn or cnn")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds")
    parser.add_argument("--subset", type=int, default=None,
                        help="class-balanced training subset size")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override every method's batch size")
    parser.add_argument("--test-samples", type=int, default=32)
    parser.add_argument("--heldout-classes", default="",
                        help="e.g. 8,9: class-split OOD protocol")
    parser.add_argument("--no-augment", dest="augment",
                        action="store_false")
    parser.add_argument("--data", default="offline",
                        help="offline (the JPEG archive) or tfds")
    parser.add_argument("--dataset", default="cifar10",
                        choices=sorted(DATASETS),
                        help="cifar10, or cifar100 (needs --data tfds)")
    parser.add_argument("--data-path", default=None,
                        help="the offline archive (default: see "
                        "keras_bayes.datasets.load_cifar10)")
    parser.add_argument("--out", default=None,
                        help="output path without extension ('' = none; "
                        "default benchmarks/results/<dataset>)")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in args.methods:
        if method not in METHODS:
            parser.error(f"--methods: {method!r} is not one of "
                         f"{sorted(METHODS)}")
    if args.out is None:
        args.out = f"benchmarks/results/{args.dataset}"
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.heldout_classes = tuple(
        int(c) for c in args.heldout_classes.split(",") if c.strip())
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    data = load_data(args.data, args.subset, args.test_subset,
                     args.data_path, heldout_classes=args.heldout_classes,
                     dataset=args.dataset)
    payload = {"records": []}
    json_path = f"{args.out}.json" if args.out else None
    if json_path and os.path.exists(json_path):
        with open(json_path) as f:
            payload = json.load(f)
    payload.update({
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/cifar10.py " + " ".join(argv),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "device": describe_device(),
        "commit": git_commit(),
        "small": bool(args.subset or args.test_subset),
    })
    done = {(r["method"], r["seed"], r["model"], r["epochs"],
             r.get("dataset", "cifar10")) for r in payload["records"]}
    for method in args.methods:
        for seed in args.seeds:
            if (method, seed, args.model, args.epochs,
                    args.dataset) in done:
                print(f"{method} seed {seed}: already in {json_path}, "
                      "skipped")
                continue
            print(f"== {method}, seed {seed}", flush=True)
            record = run_one(method, args, data, seed)
            payload["records"].append(record)
            summary = record["bma"] or record["mean"]
            print(f"{method} seed {seed}: acc {summary['accuracy']:.4f} "
                  f"NLL {summary['nll']:.3f} ECE {summary['ece']:.4f} "
                  f"({record['seconds_per_epoch']:.2f} s/epoch)", flush=True)
            if json_path:
                os.makedirs(os.path.dirname(os.path.abspath(json_path)),
                            exist_ok=True)
                with open(json_path, "w") as f:
                    json.dump(payload, f, indent=1)
    table = markdown(payload)
    if args.out:
        with open(f"{args.out}.md", "w") as f:
            f.write(table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
