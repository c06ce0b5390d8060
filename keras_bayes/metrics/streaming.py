"""Streaming Keras metrics: ECE and Brier score, backend-neutral.

Use them in `model.compile(metrics=[...])` on TensorFlow, JAX or PyTorch:

    model.compile(..., metrics=[
        keras_bayes.metrics.ExpectedCalibrationError(num_bins=15,
                                                     from_logits=True),
        keras_bayes.metrics.BrierScore(from_logits=True)])

They are written with `keras.ops` only and keep their state in summed
accumulators (`add_variable(..., aggregation="sum")`), so they aggregate
correctly across batches and replicas.

Targets (`y_true`), given predictions `y_pred` of shape (..., k), k >= 2:

- sparse integer labels of shape (...) or (..., 1) (a trailing axis of size
  1 is squeezed); floats holding integers are accepted;
- one-hot (or soft) targets when `y_true` has the rank of `y_pred` and the
  same last dimension k. The ECE uses their argmax as the label (first
  maximal class on ties); the Brier score uses the vectors as given.

The streaming metrics do not validate values (that would need a host sync):
a label outside [0, k) is simply never equal to the prediction; rows of
`y_pred` are used as given when `from_logits=False`.
"""

import keras
import numpy as np
from keras import ops

from keras_bayes._validation import check_positive_integer
from keras_bayes.metrics.calibration import equal_width_edges


def _first_argmax(values):
    """argmax over the last axis, the first maximal index on ties (int32).

    Written with a min over indices rather than `ops.argmax`, whose choice
    among ties is not specified on every backend.
    """
    num_classes = values.shape[-1]
    peak = ops.max(values, axis=-1, keepdims=True)
    index = ops.arange(num_classes, dtype="int32")
    candidates = ops.where(ops.equal(values, peak), index, num_classes)
    return ops.min(candidates, axis=-1)


def _probabilities(y_pred, from_logits, dtype):
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), dtype)
    num_classes = y_pred.shape[-1] if len(y_pred.shape) else None
    if num_classes is None or num_classes < 2:
        raise ValueError(
            "`y_pred` must have a class axis (last) of known size >= 2. "
            f"Received shape {tuple(y_pred.shape)}; for a single sigmoid "
            "output, stack [1 - p, p]"
        )
    return ops.softmax(y_pred, axis=-1) if from_logits else y_pred


def _targets(y_true, probs):
    """("dense", y_true as float) for one-hot/soft targets, else
    ("sparse", int32 labels of shape probs.shape[:-1])."""
    y_true = ops.convert_to_tensor(y_true)
    rank, num_classes = len(probs.shape), probs.shape[-1]
    if len(y_true.shape) == rank and y_true.shape[-1] == num_classes:
        return "dense", ops.cast(y_true, probs.dtype)
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != rank - 1:
        raise ValueError(
            "`y_true` must be integer labels of shape y_pred.shape[:-1] "
            "(optionally with a trailing axis of size 1) or one-hot targets "
            f"of the shape of y_pred. Received y_true shape "
            f"{tuple(y_true.shape)} and y_pred shape {tuple(probs.shape)}"
        )
    return "sparse", ops.cast(y_true, "int32")


def _flat_weights(sample_weight, reference, dtype):
    """Sample weights broadcast to `reference`'s shape and flattened."""
    if sample_weight is None:
        return ops.ones_like(ops.reshape(reference, (-1,)), dtype=dtype)
    weight = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    rank = len(reference.shape)
    while len(weight.shape) > rank and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
    while len(weight.shape) < rank:
        weight = ops.expand_dims(weight, axis=-1)
    weight = ops.broadcast_to(weight, ops.shape(reference))
    return ops.reshape(weight, (-1,))


@keras.saving.register_keras_serializable(package="keras_bayes")
class ExpectedCalibrationError(keras.metrics.Metric):
    """Streaming expected calibration error with equal-width bins.

    ECE = Σ_b (n_b / n)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} w_i·correct_i −
    Σ_{i∈b} w_i·c_i| / Σ_i w_i, where c_i = max_j p_ij is the confidence,
    correct_i = 1[argmax_j p_ij = label_i] and w_i the sample weight (1 by
    default; integer weights act like repeating examples).

    The bins are those of `keras_bayes.metrics.calibration_bins(...,
    binning="width")`: right-closed (b/B, (b+1)/B], with c at or below 1/B
    in bin 0 and c above (B−1)/B in bin B−1, compared in the metric's dtype
    (edges b/B rounded to float32 by default). So on the same float32
    probabilities the per-bin counts agree exactly with the NumPy function
    and the ECE up to float32 summation rounding. Equal-mass binning needs
    all the data at once and is not offered here.

    State: three accumulators of shape (num_bins,), summed across batches
    and replicas: the weighted count, the weighted sum of confidences and
    the weighted sum of correct predictions per bin. `result()` is 0.0
    before any data has been seen.

    Args:
        num_bins: integer B >= 1.
        from_logits: whether `y_pred` holds logits (a softmax is applied) or
            probabilities (used as given).
        name, dtype: as for any Keras metric.

    Example: the NumPy `expected_calibration_error` of the same data, one
    batch at a time (in training: `model.compile(..., metrics=[
    ExpectedCalibrationError(from_logits=True)])`, logged as `ece`):

    >>> import numpy as np
    >>> from keras_bayes.metrics import ExpectedCalibrationError
    >>> ece = ExpectedCalibrationError(num_bins=5)
    >>> ece.update_state([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]))
    >>> ece.update_state([1, 0], np.array([[0.6, 0.4], [0.7, 0.3]]))
    >>> round(float(ece.result()), 4)
    0.3
    """

    def __init__(self, num_bins=15, from_logits=False, name="ece",
                 dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_bins = check_positive_integer("num_bins", num_bins)
        self.from_logits = bool(from_logits)
        self._interior_edges = equal_width_edges(
            self.num_bins, np.dtype(self.dtype))[1:-1]
        shape = (self.num_bins,)
        self.bin_counts = self.add_variable(
            shape=shape, initializer="zeros", dtype=self.dtype,
            aggregation="sum", name="bin_counts")
        self.bin_confidence_sums = self.add_variable(
            shape=shape, initializer="zeros", dtype=self.dtype,
            aggregation="sum", name="bin_confidence_sums")
        self.bin_correct_sums = self.add_variable(
            shape=shape, initializer="zeros", dtype=self.dtype,
            aggregation="sum", name="bin_correct_sums")

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs = _probabilities(y_pred, self.from_logits, self.dtype)
        kind, targets = _targets(y_true, probs)
        labels = _first_argmax(targets) if kind == "dense" else targets
        confidence = ops.max(probs, axis=-1)
        weight = _flat_weights(sample_weight, confidence, self.dtype)
        correct = ops.cast(
            ops.equal(_first_argmax(probs), labels), self.dtype)
        confidence = ops.reshape(confidence, (-1, 1))
        correct = ops.reshape(correct, (-1,))
        # Bin index = number of interior edges strictly below c.
        edges = ops.convert_to_tensor(self._interior_edges, dtype=self.dtype)
        above = ops.cast(ops.greater(confidence, edges[None, :]), "int32")
        index = ops.sum(above, axis=1)
        members = ops.one_hot(index, self.num_bins, dtype=self.dtype)
        weighted = members * weight[:, None]
        self.bin_counts.assign_add(ops.sum(weighted, axis=0))
        self.bin_confidence_sums.assign_add(
            ops.sum(weighted * confidence, axis=0))
        self.bin_correct_sums.assign_add(
            ops.sum(weighted * correct[:, None], axis=0))

    def result(self):
        gaps = ops.abs(self.bin_correct_sums - self.bin_confidence_sums)
        return ops.divide_no_nan(ops.sum(gaps), ops.sum(self.bin_counts))

    def reset_state(self):
        for variable in (self.bin_counts, self.bin_confidence_sums,
                         self.bin_correct_sums):
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_bayes")
class BrierScore(keras.metrics.Metric):
    """Streaming Brier score: weighted mean of Σ_j (p_ij − y_ij)².

    y_i is the one-hot vector of the label (or the given one-hot/soft target
    vector); range [0, 2]. Matches `keras_bayes.metrics.brier_score` on
    integer labels. `result()` is 0.0 before any data has been seen.

    Args:
        from_logits: whether `y_pred` holds logits or probabilities.
        name, dtype: as for any Keras metric.

    Example (in training: `model.compile(..., metrics=[BrierScore()])`,
    logged as `brier`):

    >>> import numpy as np
    >>> from keras_bayes.metrics import BrierScore
    >>> brier = BrierScore()
    >>> brier.update_state([0, 1], np.array([[1.0, 0.0], [0.5, 0.5]]))
    >>> round(float(brier.result()), 4)  # (0 + 0.25 + 0.25) / 2
    0.25
    """

    def __init__(self, from_logits=False, name="brier", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.total = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype,
            aggregation="sum", name="total")
        self.weight = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype,
            aggregation="sum", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs = _probabilities(y_pred, self.from_logits, self.dtype)
        kind, targets = _targets(y_true, probs)
        if kind == "sparse":
            targets = ops.one_hot(targets, probs.shape[-1], dtype=self.dtype)
        per_example = ops.sum(ops.square(probs - targets), axis=-1)
        weight = _flat_weights(sample_weight, per_example, self.dtype)
        self.total.assign_add(
            ops.sum(ops.reshape(per_example, (-1,)) * weight))
        self.weight.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.total, self.weight)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}
