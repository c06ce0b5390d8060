"""Calibration and OOD metrics at epoch end, written into Keras' `logs`."""

import keras
import numpy as np

from keras_bayes._validation import check_positive_integer
from keras_bayes._validation import one_hot_to_indices
from keras_bayes.metrics.report import evaluate_uncertainty
from keras_bayes.optimizers.base import unwrap_optimizer
from keras_bayes.predictive import Predictive
from keras_bayes.predictive import check_dropout_model


@keras.saving.register_keras_serializable(package="keras_bayes")
class UncertaintyMetrics(keras.callbacks.Callback):
    """Evaluates calibration (and OOD detection) at the end of epochs.

    At the end of the first epoch, every `frequency`-th epoch after it and
    the last, it predicts on
    `validation_data` (and `ood_data`) at the posterior mean and averaged
    over `num_samples` posterior samples, and writes into `logs`:

    - `{prefix}mean_{m}` and `{prefix}bma_{m}` for m in accuracy, nll, ece,
      mce, brier, misclassification_auroc;
    - with `ood_data`: `{prefix}mean_ood_auroc`, `..._ood_aupr_in`,
      `..._ood_aupr_out`, `..._ood_fpr_at_95_tpr` (OOD is the positive
      class, scored by `ood_score`), and the same with `bma`.

    History, TensorBoard, CSVLogger, EarlyStopping and ModelCheckpoint see
    these keys when they come *after* this callback in the list (Keras adds
    History last, so it always does).

    For a model trained by a plain Keras optimizer, `mean` means the
    weights as they are, and `bma` is computed only with `method="dropout"`
    (MC dropout). The model's weights are restored after every evaluation,
    so training continues exactly as without the callback.

    Inputs are checked when the callback is made, before any training:
    `ood_data` must have the feature shape of the validation inputs
    (`x.shape[1:]`), and labels of shape (n, k > 1) must be one-hot.
    With `method="dropout"` the model must have a dropout layer (checked
    at the start of `fit`).

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras_bayes.optimizers.SOBA(ess=len(x)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x[:48], y[:48], epochs=2, verbose=0, callbacks=[
        keras_bayes.callbacks.UncertaintyMetrics(
            (x[48:], y[48:]), ood_data=10 * x[48:], num_samples=4,
            from_logits=True),
        keras.callbacks.CSVLogger("log.csv"),   # sees val_bma_ece, ...
    ])
    print(history.history["val_bma_ece"],
          history.history["val_mean_ood_auroc"])
    ```

    Args:
        validation_data: `(x, y)`, with integer labels of shape (n,) or
            (n, 1), or one-hot labels of shape (n, num_classes) (exactly
            one 1 per row).
        ood_data: optional out-of-distribution inputs, shaped like the
            validation inputs except for the number of examples.
        num_samples: int >= 1, posterior samples of the average.
        frequency: evaluate every this many epochs (epochs 0, f, 2f, ...,
            and the last). On other epochs the keys are absent, as with
            Keras' `validation_freq`.
        from_logits: whether the model outputs logits. Defaults to False.
        method: `"posterior"` (default) or `"dropout"`.
        ood_score: `"entropy"` (default), `"max_prob"` or
            `"mutual_information"`.
        num_bins: equal-width bins of ECE and MCE.
        batch_size: batch size of the prediction passes.
        seed: seed of the posterior samples (the same every epoch, so that
            epochs are comparable).
        prefix: prefix of the log keys. Defaults to `"val_"`.
    """

    def __init__(self, validation_data, ood_data=None, num_samples=16,
                 frequency=1, from_logits=False, method="posterior",
                 ood_score="entropy", num_bins=15, batch_size=256, seed=0,
                 prefix="val_"):
        super().__init__()
        if (not isinstance(validation_data, (tuple, list))
                or len(validation_data) != 2):
            raise ValueError(
                "`validation_data` must be a tuple (x, y). Received: "
                f"{type(validation_data).__name__}")
        frequency = check_positive_integer("frequency", frequency)
        num_samples = check_positive_integer("num_samples", num_samples)
        x, y = validation_data
        if len(x) != len(y):
            raise ValueError(
                "`validation_data` inputs and labels differ in length: "
                f"{len(x)} and {len(y)}")
        x, y = np.asarray(x), np.asarray(y)
        if len(x) == 0:
            raise ValueError(
                "`validation_data` has no examples. Received inputs of "
                f"shape {x.shape}")
        if y.ndim == 2 and y.shape[1] > 1:
            # Checked now; the class count is checked against the model's
            # outputs at the first evaluation.
            one_hot_to_indices(y, name="validation_data labels")
        else:
            y = y.reshape(-1)
        if ood_data is not None:
            ood_data = np.asarray(ood_data)
            if len(ood_data) == 0:
                raise ValueError("`ood_data` is empty")
            if ood_data.shape[1:] != x.shape[1:]:
                raise ValueError(
                    "`ood_data` must have the feature shape of the "
                    f"validation inputs, {x.shape[1:]} (validation inputs "
                    f"of shape {x.shape}). Received: ood_data of shape "
                    f"{ood_data.shape}")
        self.validation_data = (x, y)
        self.ood_data = ood_data
        self.num_samples = num_samples
        self.frequency = frequency
        self.from_logits = bool(from_logits)
        self.method = method
        self.ood_score = ood_score
        self.num_bins = num_bins
        self.batch_size = batch_size
        self.seed = seed
        self.prefix = prefix

    def evaluate(self):
        """The metrics dict (flat, prefixed), computed now."""
        model = self.model  # syncs the JAX training state
        x, y = self.validation_data
        has_posterior = unwrap_optimizer(model.optimizer) is not None
        averaged = has_posterior or self.method == "dropout"
        # Without a posterior and without dropout sampling there is nothing
        # to average: a dropout-mode Predictive then only serves the
        # prediction at the weights as they are.
        predictive = Predictive(
            model, num_samples=self.num_samples,
            from_logits=self.from_logits, seed=self.seed,
            batch_size=self.batch_size,
            method=self.method if averaged else "dropout",
        )
        report = evaluate_uncertainty(
            predictive, x, y, x_ood=self.ood_data, num_bins=self.num_bins,
            ood_score=self.ood_score, averaged=averaged)
        return {
            f"{self.prefix}{kind}_{name}": float(value)
            for kind, block in report.items()
            for name, value in block.items()
        }

    def on_train_begin(self, logs=None):
        # Fail before the first epoch, not after it.
        if self.method == "dropout":
            check_dropout_model(self.model)

    def on_epoch_end(self, epoch, logs=None):
        # The first epoch always, so loggers that fix their columns at the
        # first epoch (CSVLogger) see every key.
        last = bool(self.params) and epoch + 1 == self.params.get("epochs")
        if epoch % self.frequency and not last:
            return
        if logs is not None:
            logs.update(self.evaluate())

    def get_config(self):
        return {
            "num_samples": self.num_samples, "frequency": self.frequency,
            "from_logits": self.from_logits, "method": self.method,
            "ood_score": self.ood_score, "num_bins": self.num_bins,
            "batch_size": self.batch_size, "seed": self.seed,
            "prefix": self.prefix,
        }
