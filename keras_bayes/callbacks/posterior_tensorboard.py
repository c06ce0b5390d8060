"""The posterior standard deviation in TensorBoard, next to Keras' logs."""

import os

import keras
import numpy as np

from keras_bayes._validation import check_boolean
from keras_bayes._validation import check_path
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers.base import require_posterior_optimizer

#: The run folder under `log_dir`, beside Keras' `train/` and `validation/`.
RUN_NAME = "posterior"
#: Tag prefixes: TensorBoard groups the charts by the part before the "/".
MEDIAN_TAG = "posterior_std_median"
HISTOGRAM_TAG = "posterior_std"
#: Buckets of a histogram, as in `tf.summary.histogram`.
HISTOGRAM_BUCKETS = 30

# `SummaryMetadata.data_class` (tensorflow/core/framework/summary.proto):
# how TensorBoard's data layer reads a summary.
_DATA_CLASS_SCALAR = 1
_DATA_CLASS_TENSOR = 2


def _import_tensorflow():
    """TensorFlow, whose `tf.summary` writers `keras.callbacks.TensorBoard`
    uses too."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "PosteriorTensorBoard writes its event files with TensorFlow's "
            "`tf.summary`, as keras.callbacks.TensorBoard does, on every "
            "Keras backend. Install TensorFlow next to your backend: "
            "`pip install tensorflow-cpu` (or `tensorflow`)."
        ) from error
    return tf


def histogram_buckets(values, bucket_count=HISTOGRAM_BUCKETS):
    """TensorBoard's histogram of `values`: a float64 array (k, 3) of rows
    (left edge, right edge, count).

    `bucket_count` equal-width buckets from min to max (the last one closed
    on the right), the layout of `tf.summary.histogram`; values that are
    all equal give one bucket (v, v, n).
    """
    values = np.ravel(np.asarray(values, dtype=np.float64))
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.array([[low, high, values.size]], dtype=np.float64)
    counts, edges = np.histogram(values, bins=bucket_count, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts], axis=1).astype(
        np.float64)


def layer_path(variable_path):
    """The layer a variable belongs to: its path without the last part
    (`"dense_1/kernel"` -> `"dense_1"`, `"block/conv/bias"` -> `"block/conv"`).
    """
    head, _, _ = variable_path.rpartition("/")
    return head or variable_path


def median_std_per_layer(paths, stds):
    """{layer path: median of the std of all the layer's weights}.

    The median is taken over the layer's variables together (kernel and
    bias), in the order the layers first appear in `paths`.
    """
    grouped = {}
    for path, std in zip(paths, stds):
        grouped.setdefault(layer_path(path), []).append(
            np.ravel(np.asarray(std)))
    return {layer: float(np.median(np.concatenate(parts)))
            for layer, parts in grouped.items()}


@keras.saving.register_keras_serializable(package="keras_bayes")
class PosteriorTensorBoard(keras.callbacks.Callback):
    """Writes the posterior standard deviation to TensorBoard during `fit`.

    For a model trained by a keras_bayes posterior optimizer (SOBA/IVON,
    BSAM, the Lie-group rules, VOGN; also inside a
    `keras.optimizers.LossScaleOptimizer`, and with the `TwoPassModel` and
    `VOGNModel` steps), every `every_n_epochs` epochs (epochs 0, n, 2n, ...,
    counted as `fit` counts them, like the `histogram_freq` of
    `keras.callbacks.TensorBoard`) it writes, from `optimizer.posterior_std()`:

    - a scalar `posterior_std_median/<layer>` per layer: the median of σ_i
      over the weights i of the layer (kernel and bias together);

    - with `histograms=True`, a histogram `posterior_std/<variable path>`
      of σ per trainable variable (Keras' own weight histograms are per
      variable too: a kernel and its bias often differ in scale).

    The step of every summary is the epoch, as for Keras' `epoch_loss`.
    The events go to the run folder `log_dir/posterior/`, beside the
    `train/` and `validation/` runs that `keras.callbacks.TensorBoard`
    writes under the same `log_dir`, so one
    `tensorboard --logdir <log_dir>` shows the losses, the weights and the
    posterior side by side (the run selector filters them).

    The medians show the posterior move during training, layer by layer:
    σ starts at the optimizer's initial scale (SOBA: σ² = 1/(ess·(h₀ + δ))
    with h₀ = `hess_init`) and goes where the curvature of the data puts
    it.

    TensorBoard's event files are written by TensorFlow's `tf.summary`,
    as in `keras.callbacks.TensorBoard`, on every backend: TensorFlow must
    be installed (with JAX and torch too); without it the constructor
    raises `ImportError` naming the package to install. The `tensorboard`
    package is needed only to view the logs.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.rand(32, 4).astype("float32")
    y = np.random.randint(0, 2, size=32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras_bayes.optimizers.SOBA(0.1, ess=len(x)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        # keras.callbacks.TensorBoard("logs/run1"),  # train/, validation/
        keras_bayes.callbacks.PosteriorTensorBoard("logs/run1"),
    ])
    # logs/run1/posterior/ now holds the events; view them, and Keras'
    # own, with: tensorboard --logdir logs
    ```

    Args:
        log_dir: the `log_dir` of the `keras.callbacks.TensorBoard` it
            stands next to (a str or `os.PathLike`); the events go to
            `log_dir/posterior/`. Defaults to `"logs"`, as in Keras.
        every_n_epochs: int >= 1, write at epochs 0, n, 2n, ...
            Defaults to 1 (every epoch).
        histograms: bool, also write the histograms of σ. Defaults to
            True.
    """

    def __init__(self, log_dir="logs", every_n_epochs=1, histograms=True):
        super().__init__()
        self.log_dir = check_path("log_dir", log_dir)
        self.every_n_epochs = check_positive_integer("every_n_epochs",
                                                     every_n_epochs)
        self.histograms = check_boolean("histograms", histograms)
        # Imported now, so a missing TensorFlow fails before training.
        self._tf = _import_tensorflow()
        self._writer = None

    @property
    def run_dir(self):
        """The folder the event files go to: `log_dir/posterior`."""
        return os.path.join(self.log_dir, RUN_NAME)

    def _optimizer(self):
        # `self.model` (not a stored reference) syncs the JAX state.
        return require_posterior_optimizer(self.model.optimizer,
                                           "PosteriorTensorBoard")

    def on_train_begin(self, logs=None):
        # Fail before the first epoch, not after it.
        self._optimizer()

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every_n_epochs:
            return
        optimizer = self._optimizer()
        if not optimizer.built:  # no step taken yet (an empty epoch)
            return
        self.write(optimizer, step=epoch)

    def write(self, optimizer, step):
        """Write the summaries of `optimizer`'s posterior at `step` now."""
        paths = [v.path for v in optimizer.posterior_variables()]
        stds = optimizer.posterior_std()
        # Created at the first write (as Keras' writers are), so a run
        # that writes nothing leaves no empty event file.
        if self._writer is None:
            self._writer = self._tf.summary.create_file_writer(self.run_dir)
        with self._writer.as_default():
            for layer, median in median_std_per_layer(paths, stds).items():
                self._write(f"{MEDIAN_TAG}/{layer}",
                            np.float32(median), "scalars",
                            _DATA_CLASS_SCALAR, step)
            if self.histograms:
                for path, std in zip(paths, stds):
                    self._write(f"{HISTOGRAM_TAG}/{path}",
                                histogram_buckets(std), "histograms",
                                _DATA_CLASS_TENSOR, step)
        self._writer.flush()

    def _write(self, tag, tensor, plugin_name, data_class, step):
        # The summaries `tf.summary.scalar` and `tf.summary.histogram`
        # write, built here: those two need the `tensorboard` package,
        # `tf.summary.write` only TensorFlow, so training does not need
        # TensorBoard installed (viewing does).
        metadata = self._tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = plugin_name
        metadata.data_class = data_class
        self._tf.summary.write(tag=tag, tensor=tensor, step=step,
                               metadata=metadata)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {"log_dir": self.log_dir,
                "every_n_epochs": self.every_n_epochs,
                "histograms": self.histograms}
