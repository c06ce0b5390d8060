"""Offline datasets for demos, tests and benchmarks.

Nothing here downloads: scikit-learn's bundled digits, and the CIFAR-10 copy
stored as an xz-compressed archive of JPEG files (see `load_cifar10`).
"""

import io
import lzma
import os

import numpy as np

DEFAULT_CIFAR10_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir,
    "shared", "data", "cifar10", "cifar10-jpeg.npz.xz",
)


def load_digits(test_fraction=0.3, seed=0):
    """scikit-learn's 8×8 digits (1 797 images, 10 classes), scaled to [0, 1].

    Args:
        test_fraction: float, the share of the examples held out.
        seed: int, the seed of the shuffle before the split.

    Returns:
        `(x_train, y_train), (x_test, y_test)` with x float32 of shape
        (n, 64) and y int64.

    Example:

    >>> from keras_bayes.datasets import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape, float(x_train.max())
    ((1258, 64), (539, 64), 1.0)
    """
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int64")
    n_test = int(round(test_fraction * len(x)))
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def load_mnist1d(num_samples=5000, seed=42):
    """MNIST-1D (Greydanus, 2020), generated locally by the `mnist1d` package.

    40-dimensional 1-D signals of 10 digit templates under random shifts,
    scaling, shear and noise: small, yet hard enough that an MLP overfits,
    which makes it a good calibration benchmark. Standardised with the
    training set's mean and std; 80 % train, 20 % test.

    Args:
        num_samples: int, examples generated (train and test together).
        seed: int, the generator's seed.

    Returns:
        `(x_train, y_train), (x_test, y_test)` with x float32 of shape
        (n, 40) and y int64 in [0, 10).

    Example:

    >>> from keras_bayes.datasets import load_mnist1d
    >>> (x_train, y_train), (x_test, y_test) = load_mnist1d(num_samples=500)
    >>> x_train.shape, x_test.shape
    ((400, 40), (100, 40))
    """
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    config = get_dataset_args()
    config.num_samples = num_samples
    config.seed = seed
    data = make_dataset(config)
    x, xt = data["x"].astype("float32"), data["x_test"].astype("float32")
    mean, std = x.mean(), x.std()
    return (
        ((x - mean) / std, data["y"].astype("int64")),
        ((xt - mean) / std, data["y_test"].astype("int64")),
    )


def _decode_jpegs(blob, offsets, indices):
    from io import BytesIO

    from PIL import Image

    out = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        data = blob[offsets[i]:offsets[i + 1]].tobytes()
        out[row] = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    return out


def load_cifar10(path=None, train_size=None, test_size=None, seed=0,
                 cache_dir=None):
    """CIFAR-10 from the offline JPEG archive, as uint8 images.

    The archive is an xz-compressed `.npz` with keys `jpeg_train`,
    `offsets_train`, `y_train` and the same for `test`; image i is the JPEG
    `jpeg[offsets[i]:offsets[i + 1]]`. Decoding needs Pillow.

    Args:
        path: the `.npz.xz` file; defaults to `$KERAS_BAYES_CIFAR10`, then
            `../shared/data/cifar10/cifar10-jpeg.npz.xz` beside the checkout.
        train_size, test_size: optional class-balanced random subsets.
            Either way the examples come back in a random order (the
            archive itself is sorted by class).
        seed: seed of the subsets.
        cache_dir: if set, decoded arrays are cached there as `.npz`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, x of shape (n, 32, 32, 3).

    Example (on a stand-in archive of 20 random images, written in the
    format above; with the real archive only the last call is needed):

    ```python
    import io, lzma
    import numpy as np
    from PIL import Image
    from keras_bayes.datasets import load_cifar10

    images = np.random.default_rng(0).integers(
        0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    jpegs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        jpegs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(jpeg) for jpeg in jpegs])
    split = dict(jpeg=np.concatenate(jpegs), offsets=offsets,
                 y=np.repeat(np.arange(10), 2))
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{key}_{part}": value for key, value in split.items()
                        for part in ("train", "test")})
    with lzma.open("cifar10-jpeg.npz.xz", "wb") as f:
        f.write(buffer.getvalue())

    (x_train, y_train), (x_test, y_test) = load_cifar10(
        "cifar10-jpeg.npz.xz", train_size=10, test_size=10)
    assert x_train.shape == (10, 32, 32, 3) and x_train.dtype == np.uint8
    assert sorted(y_train) == list(range(10))   # one image per class
    ```
    """
    path = path or os.environ.get("KERAS_BAYES_CIFAR10") or (
        DEFAULT_CIFAR10_PATH)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"CIFAR-10 archive not found at {path!r}. Pass `path=` or set "
            "KERAS_BAYES_CIFAR10; with internet access use "
            "`keras_bayes.datasets.load_tfds('cifar10')` instead."
        )
    cache = None
    if cache_dir:
        cache = os.path.join(
            cache_dir, f"cifar10_{train_size}_{test_size}_{seed}.npz")
        if os.path.exists(cache):
            with np.load(cache) as f:
                return ((f["x_train"], f["y_train"]),
                        (f["x_test"], f["y_test"]))
    # Decompressed in one read: `np.load` seeks inside the archive, and
    # each backward seek in an xz stream decompresses it again from the
    # start (11 s instead of 2.4 s for the whole set, measured).
    with lzma.open(path) as f:
        archive = dict(np.load(io.BytesIO(f.read())))
    rng = np.random.default_rng(seed)
    splits = []
    for split, size in (("train", train_size), ("test", test_size)):
        labels = archive[f"y_{split}"].astype("int64")
        indices = np.arange(len(labels))
        if size is not None:
            per_class = size // 10
            indices = np.concatenate([
                rng.choice(np.flatnonzero(labels == c), per_class,
                           replace=False) for c in range(10)])
        # The archive is stored class by class: always shuffle.
        indices = rng.permutation(indices)
        x = _decode_jpegs(archive[f"jpeg_{split}"],
                          archive[f"offsets_{split}"], indices)
        splits.append((x, labels[indices]))
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(cache, x_train=splits[0][0], y_train=splits[0][1],
                 x_test=splits[1][0], y_test=splits[1][1])
    return tuple(splits)


def load_tfds(name, split=("train", "test")):
    """A `tensorflow_datasets` image classification set as NumPy arrays.

    For users with internet access (or a prepared TFDS data directory).

    Args:
        name: a TFDS dataset name with `as_supervised` (image, label) pairs,
            e.g. `"cifar100"`.
        split: the two split names.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, y int64.

    Example: `load_tfds("cifar100")` downloads CIFAR-100 on first use.
    Offline, TFDS' mock data stands in for it (random images of the right
    shape):

    ```python
    import tensorflow_datasets as tfds
    from keras_bayes.datasets import load_tfds

    with tfds.testing.mock_data(num_examples=8):
        (x_train, y_train), (x_test, y_test) = load_tfds("cifar100")
    assert x_train.shape == (8, 32, 32, 3) and y_train.dtype == "int64"
    ```
    """
    import tensorflow_datasets as tfds

    out = []
    for part in split:
        # Batched iteration, not `batch_size=-1`: that asks tf.data for one
        # element of unbounded size, which aborts on some TF builds.
        dataset = tfds.load(name, split=part, as_supervised=True,
                            batch_size=1024)
        images, labels = [], []
        for x, y in tfds.as_numpy(dataset):
            images.append(x)
            labels.append(y)
        out.append((np.concatenate(images),
                    np.concatenate(labels).astype("int64")))
    return tuple(out)


# ----------------------------------------------------------------------
# Out-of-distribution protocols.

def class_split(x, y, in_classes):
    """Split a labelled set into in-distribution classes and held-out ones.

    The examples of `in_classes` keep their inputs and get labels
    0..len(in_classes)-1 in the order given; the rest are the
    out-of-distribution set (OOD is the positive class in
    `keras_bayes.metrics`' OOD scores).

    Args:
        x: inputs, n examples.
        y: integer labels (n,).
        in_classes: the labels kept in distribution, in their new order.

    Returns:
        `(x_in, y_in), x_out`.

    Example: train on digits 0-4, use 5-9 as out-of-distribution inputs:

    >>> import numpy as np
    >>> from keras_bayes.datasets import class_split
    >>> x, y = np.arange(6)[:, None], np.array([0, 1, 2, 0, 1, 2])
    >>> (x_in, y_in), x_out = class_split(x, y, in_classes=[2, 0])
    >>> x_in.ravel(), y_in, x_out.ravel()
    (array([0, 2, 3, 5]), array([1, 0, 1, 0]), array([1, 4]))
    """
    y = np.asarray(y).reshape(-1)
    in_classes = [int(c) for c in in_classes]
    if len(set(in_classes)) != len(in_classes) or not in_classes:
        raise ValueError(
            "`in_classes` must be a non-empty list of distinct labels. "
            f"Received: {in_classes}")
    missing = [c for c in in_classes if not np.any(y == c)]
    if missing:
        raise ValueError(f"`in_classes` {missing} do not occur in `y`")
    mask = np.isin(y, in_classes)
    if mask.all():
        raise ValueError("`in_classes` holds every class: nothing is left "
                         "out of distribution")
    relabel = {c: i for i, c in enumerate(in_classes)}
    y_in = np.array([relabel[int(c)] for c in y[mask]], dtype="int64")
    return (np.asarray(x)[mask], y_in), np.asarray(x)[~mask]


SHIFTS = ("gaussian_noise", "contrast", "uniform_noise", "flip")
"""The kinds of covariate shift that `synthetic_shift` applies."""


def synthetic_shift(x, kind="gaussian_noise", severity=1.0, seed=0):
    """A covariate-shifted copy of `x` (float inputs, any shape).

    Kinds:
        `gaussian_noise`: x + severity·std(x)·N(0, 1).
        `uniform_noise`: inputs replaced by U(min(x), max(x)) noise (far
            OOD; `severity` is unused).
        `contrast`: mean(x) + (x − mean(x))·(1 − severity/2), clipped at
            severity 2 to a constant input.
        `flip`: each input reversed along its first non-batch axis (an image
            turned upside down, a 1-D signal played backwards).

    Args:
        x: float inputs, examples on the first axis.
        kind: one of `SHIFTS`.
        severity: float >= 0, the strength of the shift.
        seed: int, the seed of the noise.

    Returns:
        A float32 array of the shape of `x`.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.datasets import synthetic_shift
    >>> x = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]])
    >>> synthetic_shift(x, "contrast", severity=1.0)
    array([[1. , 1.5, 2. ],
           [2. , 2.5, 3. ]], dtype=float32)
    >>> synthetic_shift(x, "flip")
    array([[2., 1., 0.],
           [4., 3., 2.]], dtype=float32)
    >>> synthetic_shift(x, "gaussian_noise", severity=0.5).shape
    (2, 3)
    """
    if kind not in SHIFTS:
        raise ValueError(f"`kind` must be one of {list(SHIFTS)}. "
                         f"Received: kind={kind!r}")
    if not np.isfinite(severity) or severity < 0:
        raise ValueError(f"`severity` must be >= 0. Received: {severity!r}")
    x = np.asarray(x, dtype="float32")
    rng = np.random.default_rng(seed)
    if kind == "gaussian_noise":
        noise = rng.standard_normal(x.shape).astype("float32")
        return x + severity * x.std() * noise
    if kind == "uniform_noise":
        return rng.uniform(x.min(), x.max(), size=x.shape).astype("float32")
    if kind == "contrast":
        factor = max(0.0, 1.0 - severity / 2.0)
        return (x.mean() + (x - x.mean()) * factor).astype("float32")
    return np.ascontiguousarray(np.flip(x, axis=1))


__all__ = ["SHIFTS", "class_split", "load_cifar10", "load_digits",
           "load_mnist1d", "load_tfds", "synthetic_shift"]
