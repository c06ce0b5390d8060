"""Predictions averaged over posterior samples (Bayesian model averaging)."""

import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes._validation import SUM_TOLERANCE
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers.base import unwrap_optimizer

METHODS = ("posterior", "dropout")

#: Layers that are random in training mode, and the config entries that
#: must be positive for them to be (`rate` of the dropout layers, `stddev`
#: of GaussianNoise). SpatialDropout1D/2D/3D subclass Dropout.
DROPOUT_LAYERS = (keras.layers.Dropout, keras.layers.AlphaDropout,
                  keras.layers.GaussianDropout, keras.layers.GaussianNoise)
_DROPOUT_LAYER_RATES = ("rate", "stddev")
#: Config entries of other layers that drop inside the layer: recurrent
#: layers and cells (`dropout`, `recurrent_dropout`), `Attention`.
_BUILT_IN_DROPOUT_RATES = ("dropout", "recurrent_dropout")

#: Upper bound of the row-sum tolerance for low-precision outputs.
_MAX_SUM_TOLERANCE = 1e-2


def logsumexp(values, axis, keepdims=False):
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True))
    out = out + peak
    return out if keepdims else np.squeeze(out, axis=axis)


def average_log_probs(log_probs):
    """log((1/S)·Σ_s p_s) from per-sample log-probabilities (S, n, k).

    The model average in log space (logsumexp), exact where averaging
    `exp(log_probs)` would underflow.

    Args:
        log_probs: NumPy array (S, n, k) of per-sample log-probabilities.

    Returns:
        A NumPy array (n, k).

    Example:

    >>> import numpy as np
    >>> from keras_bayes.predictive import average_log_probs
    >>> samples = np.log([[[0.9, 0.1]], [[0.5, 0.5]]])  # S=2, n=1, k=2
    >>> np.exp(average_log_probs(samples)).round(4)
    array([[0.7, 0.3]])
    >>> average_log_probs(np.array([[[-1000.0]], [[-1001.0]]])).round(4)
    array([[-1000.3799]])
    """
    return logsumexp(log_probs, axis=0) - np.log(log_probs.shape[0])


def softmax(logits):
    """Probabilities from logits or unnormalised log-probabilities (last
    axis); also renormalises log-probabilities that rounding moved.

    Args:
        logits: NumPy array, classes on the last axis.

    Returns:
        A NumPy array of the same shape, rows summing to 1.

    Example:

    >>> import numpy as np
    >>> from keras_bayes.predictive import softmax
    >>> softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])).round(4)
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    return np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))


def _positive_entries(config, keys):
    return [key for key in keys
            if isinstance(config.get(key), numbers.Real)
            and not isinstance(config.get(key), bool) and config[key] > 0]


def dropout_layers(model):
    """`(random, inactive)`: the sublayers of `model` that are random in
    training mode, and the dropout layers whose rate is 0.

    Random: a `Dropout` (and its subclasses `SpatialDropout1D/2D/3D`),
    `AlphaDropout`, `GaussianDropout` with `rate > 0`, a `GaussianNoise` with
    `stddev > 0`, or any layer whose config has `dropout > 0` or
    `recurrent_dropout > 0` (`LSTM`, `GRU`, `SimpleRNN` and their cells,
    `Attention`; `MultiHeadAttention` holds a `Dropout`). Layers are found
    recursively, inside nested models and custom layers.

    Args:
        model: a Keras model or layer.

    Returns:
        Two lists of layers, `(random, inactive)`. `Predictive(method=
        "dropout")` needs `random` to be non-empty.

    Example:

    >>> import keras
    >>> from keras_bayes.predictive import dropout_layers
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8), keras.layers.Dropout(0.5, name="drop"),
    ...     keras.layers.Dense(2), keras.layers.Dropout(0.0, name="off")])
    >>> random, inactive = dropout_layers(model)
    >>> [layer.name for layer in random], [layer.name for layer in inactive]
    (['drop'], ['off'])
    """
    random, inactive = [], []
    for layer in _keras_compat.flatten_layers(model):
        dropout_type = isinstance(layer, DROPOUT_LAYERS)
        try:
            config = layer.get_config()
        except NotImplementedError:  # a custom layer without a config
            continue
        keys = _DROPOUT_LAYER_RATES if dropout_type else (
            _BUILT_IN_DROPOUT_RATES)
        if _positive_entries(config, keys):
            random.append(layer)
        elif dropout_type:
            inactive.append(layer)
    return random, inactive


def check_dropout_model(model):
    """`ValueError` unless `model` has a layer that is random in training
    mode (`dropout_layers`), naming what is missing."""
    random, inactive = dropout_layers(model)
    if random:
        return
    name = model.name
    if inactive:
        rates = ", ".join(
            f"{layer.name} ({type(layer).__name__}, rate 0)"
            for layer in inactive)
        raise ValueError(
            "Predictive(method='dropout') needs a Dropout layer with a "
            f"positive rate, but every dropout layer of model '{name}' has "
            f"rate 0: {rates}. Its stochastic passes would all be the same. "
            "Give a layer a rate > 0, or use method='posterior' with a "
            "keras_bayes optimizer."
        )
    raise ValueError(
        "Predictive(method='dropout') needs a model with a Dropout layer, "
        f"but model '{name}' has none (looked for Dropout, "
        "SpatialDropout1D/2D/3D, AlphaDropout, GaussianDropout, "
        "GaussianNoise and layers with `dropout` or `recurrent_dropout` > 0, "
        "such as LSTM). Without one every stochastic pass gives the same "
        "output. Add a `keras.layers.Dropout`, or use method='posterior' "
        "with a keras_bayes optimizer."
    )


def _sum_tolerance(outputs):
    """`SUM_TOLERANCE`, widened for low-precision outputs with many classes
    (k·eps of the dtype, at most 1e-2), where rounding alone moves sums."""
    try:
        eps = float(np.finfo(outputs.dtype).eps)
    except (TypeError, ValueError):  # e.g. bfloat16 without NumPy finfo
        eps = 2.0 ** -7
    return min(max(SUM_TOLERANCE, outputs.shape[-1] * eps),
               _MAX_SUM_TOLERANCE)


def check_model_outputs(outputs, from_logits):
    """Checks that a model's outputs agree with `from_logits`.

    With `from_logits=False` the outputs must be probabilities, else
    `ValueError` naming `from_logits`: every value in [0, 1] and, with
    more than one class, every row (last axis) summing to 1 within
    `SUM_TOLERANCE` (up to 1e-2 for float16 outputs with many classes).
    A single output column is the probability of class 1 (sigmoid).

    With `from_logits=True`, outputs that look like probabilities (every
    value in [0, 1] and, with more than one class, every row summing to 1)
    give a `UserWarning`: a softmax (or sigmoid) applied to probabilities
    flattens them. Not an error, because logits can lie in [0, 1] (and
    Keras' losses warn, not fail, on the same mix-up).
    """
    low, high = float(np.min(outputs)), float(np.max(outputs))
    in_unit_interval = low >= 0.0 and high <= 1.0
    multiclass = outputs.shape[-1] > 1
    if multiclass:
        sums = np.sum(outputs, axis=-1, dtype=np.float64)
        worst = float(np.max(np.abs(sums - 1.0)))
        rows_sum_to_one = worst <= _sum_tolerance(outputs)
    else:
        worst, rows_sum_to_one = 0.0, True
    if not from_logits and not (in_unit_interval and rows_sum_to_one):
        found = (
            f"values in [{low:.4g}, {high:.4g}]" if not in_unit_interval
            else f"rows whose sums differ from 1 by up to {worst:.3g}")
        raise ValueError(
            "`from_logits=False`, but the model's outputs are not "
            f"probabilities: {found}. If the model outputs logits (no "
            "softmax or sigmoid at the end), pass `from_logits=True`. "
            f"Received: from_logits={from_logits}"
        )
    if from_logits and in_unit_interval and rows_sum_to_one:
        kind = ("every row lies in [0, 1] and sums to 1" if multiclass
                else "every value lies in [0, 1]")
        warnings.warn(
            "`from_logits=True`, but the model's outputs look like "
            f"probabilities ({kind}); a softmax (sigmoid) is applied to "
            "them again, which flattens the predictions. If the model ends "
            "in a softmax or sigmoid, pass `from_logits=False`. Received: "
            f"from_logits={from_logits}",
            stacklevel=2,
        )


def _log_probs(outputs, from_logits):
    """Log-probabilities (classes on the last axis) from model outputs.

    A single output column (a sigmoid binary classifier) becomes two
    classes, [p(y=0), p(y=1)]: log σ(−z), log σ(z) from a logit z, or
    log(1 − p), log p from a probability p.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    tiny = np.finfo(np.float64).tiny
    if outputs.shape[-1] == 1:
        if from_logits:
            # log σ(z) = −log(1 + e^{−z}), log σ(−z) = −log(1 + e^{z}).
            return np.concatenate(
                [-np.logaddexp(0.0, outputs), -np.logaddexp(0.0, -outputs)],
                axis=-1)
        return np.log(np.maximum(
            np.concatenate([1.0 - outputs, outputs], axis=-1), tiny))
    if from_logits:
        return outputs - logsumexp(outputs, axis=-1, keepdims=True)
    return np.log(np.maximum(outputs, tiny))


def _num_examples(x):
    """The number of examples of array inputs (or a structure of arrays),
    None for anything else (a dataset, a generator)."""
    leaves = keras.tree.flatten(x)
    if not leaves or not all(isinstance(leaf, np.ndarray)
                             or keras.ops.is_tensor(leaf)
                             for leaf in leaves):
        return None
    shape = tuple(leaves[0].shape)
    return shape[0] if shape else None


def check_inputs(x, name="x"):
    """`ValueError` for inputs with no examples (Keras' `predict` fails on
    them with an `UnboundLocalError`)."""
    if isinstance(x, (list, tuple)) and not x:
        raise ValueError(f"`{name}` is empty. Received: {name}={x!r}")
    if _num_examples(x) == 0:
        shapes = [tuple(leaf.shape) for leaf in keras.tree.flatten(x)]
        shape = shapes[0] if len(shapes) == 1 else shapes
        raise ValueError(
            f"`{name}` has no examples (shape {shape}); Predictive needs at "
            "least one input to predict on."
        )


class Predictive:
    """Averages a classifier's predictions over posterior samples.

    For S samples θ_s ~ q it returns p(y|x) = (1/S)·Σ_s p(y|x, θ_s),
    computed in log space (logsumexp) for stability.

    Two sources of samples:

    - `method="posterior"` (default): the posterior of the model's
      keras_bayes optimizer (or `optimizer=`). Each sample is written into
      the model's weights and evaluated with `model.predict`; the weights are
      restored afterwards, also after an exception. The mean and standard
      deviation are computed once per call; the noise is drawn with NumPy
      (seeded by `seed`).
    - `method="dropout"`: S stochastic forward passes with `training=True`
      (MC dropout), for comparison with models trained without a posterior.
      They run through `model.stateless_call`, so no variable of the model
      changes: the dropout noise state is carried from pass to pass, and
      BatchNorm statistics are not updated (but, in training mode, BatchNorm
      layers normalise with the statistics of each batch). The masks follow
      the dropout layers' own seed state, which the model keeps, so repeated
      calls give the same samples; `seed` does not apply. The model must
      have a layer that is random in training mode (a `Dropout` with a
      positive rate, see `dropout_layers`), else the first sampling call
      raises `ValueError` before any pass; a warning
      says when all S passes still came out identical.

    Outputs: classes on the last axis, probabilities (`from_logits=False`)
    or logits (`from_logits=True`). A single output column is a binary
    classifier ending in a sigmoid (or its logit) and becomes two classes,
    [p(y=0), p(y=1)]. Every output is checked against `from_logits`
    (`check_model_outputs`): outputs that are not probabilities with
    `from_logits=False` (a value outside [0, 1], or a row not summing to 1
    within 1e-3) raise `ValueError`; outputs that look like probabilities
    with `from_logits=True` give a `UserWarning`. Inputs with no examples
    raise `ValueError`.

    Cost: S passes over the data. `batch_size` sets the batch of each pass;
    `predict_at_mean` is the one-pass fast path.

    Args:
        model: a Keras classifier.
        num_samples: int >= 1, samples per prediction.
        optimizer: the keras_bayes optimizer holding the posterior; defaults
            to `model.optimizer`. With `method="dropout"` it is optional and
            only sets where `predict_at_mean` evaluates.
        from_logits: bool, whether the model outputs logits (True) or
            probabilities (False, the default). Checked against the outputs
            (see above).
        seed: int or None; an int makes the samples reproducible.
        batch_size: int, the batch size of each pass. Defaults to 256.
        method: `"posterior"` or `"dropout"`.

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
    model.fit(x, y, epochs=2, verbose=0)
    pred = keras_bayes.Predictive(model, num_samples=8, from_logits=True)
    probs = pred.predict(x)                # (64, 2), rows sum to 1
    samples = pred.predict_samples(x)      # (8, 64, 2)
    at_mean = pred.predict_at_mean(x)      # one pass at the mean
    ```
    """

    def __init__(self, model, num_samples=32, optimizer=None,
                 from_logits=False, seed=None, batch_size=256,
                 method="posterior"):
        num_samples = check_positive_integer("num_samples", num_samples)
        if method not in METHODS:
            raise ValueError(
                f"`method` must be one of {list(METHODS)}. "
                f"Received: method={method!r}"
            )
        batch_size = check_positive_integer("batch_size", batch_size)
        posterior = unwrap_optimizer(
            optimizer if optimizer is not None
            else getattr(model, "optimizer", None)
        )
        if method == "posterior" and posterior is None:
            raise ValueError(
                "Predictive(method='posterior') needs a keras_bayes "
                "optimizer holding a posterior: compile the model with "
                "one, pass `optimizer=`, or use method='dropout'."
            )
        self.model = model
        self.num_samples = int(num_samples)
        self.optimizer = posterior
        self.from_logits = bool(from_logits)
        self.seed = seed
        self.batch_size = int(batch_size)
        self.method = method

    def _to_log_probs(self, out):
        out = np.asarray(out)
        if out.ndim == 1:  # one sigmoid output per example
            out = out[:, None]
        check_model_outputs(out, self.from_logits)
        return _log_probs(out, self.from_logits)

    def _predict_log(self, x):
        return self._to_log_probs(
            self.model.predict(x, batch_size=self.batch_size, verbose=0))

    def predict_at_mean(self, x):
        """Probabilities at the posterior mean (one pass); without a
        posterior, at the weights as they are."""
        check_inputs(x)
        if self.optimizer is None:
            return np.exp(self._predict_log(x))
        with self.optimizer.mean_weights():
            return np.exp(self._predict_log(x))

    def predict_log_samples(self, x):
        """Log-probabilities of every sample, shape (S, n, k)."""
        check_inputs(x)
        if self.method == "dropout":
            return self._dropout_log_samples(x)
        optimizer = self.optimizer
        # Host-side NumPy noise: one cheap draw per variable and sample, where
        # eager backend ops would cost a dispatch each (a large share of a
        # small model's predict).
        rng = np.random.default_rng(self.seed)
        mean_and_std = [
            (ops.convert_to_numpy(mean), ops.convert_to_numpy(std))
            for mean, std in optimizer.posterior_mean_and_std()
        ]
        previous = optimizer.model_weights()
        try:
            out = []
            variables = optimizer.posterior_variables()
            for _ in range(self.num_samples):
                for variable, (mean, std) in zip(variables, mean_and_std):
                    # A freshly drawn host array: no aliasing to guard.
                    variable.assign(
                        (mean + std * rng.standard_normal(mean.shape)
                         ).astype(mean.dtype))
                out.append(self._predict_log(x))
            return np.stack(out)
        finally:
            optimizer.set_model_weights(previous)

    def _dropout_log_samples(self, x):
        model = self.model
        # Checked here, before the first pass, not in the constructor: a
        # dropout-mode Predictive also serves `predict_at_mean` alone (the
        # callback's plain-model case), which needs no dropout.
        check_dropout_model(model)
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        x = np.asarray(x)
        rows = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start:start + self.batch_size]
            per_sample = []
            for _ in range(self.num_samples):
                y, non_trainable = model.stateless_call(
                    trainable, non_trainable, batch, training=True)
                per_sample.append(self._to_log_probs(ops.convert_to_numpy(y)))
            rows.append(np.stack(per_sample))
        samples = np.concatenate(rows, axis=1)
        if self.num_samples > 1 and np.all(samples == samples[:1]):
            warnings.warn(
                f"Predictive(method='dropout'): all {self.num_samples} "
                "stochastic passes gave identical outputs, so the average "
                "carries no uncertainty. Check that the model's dropout "
                "layers are used in its call.", stacklevel=2)
        return samples

    def predict_samples(self, x):
        """Probabilities of every sample, shape (S, n, k)."""
        return np.exp(self.predict_log_samples(x))

    def predict(self, x):
        """The model average of the class probabilities, shape (n, k)."""
        # Renormalised so that rows sum to one for the metrics.
        return softmax(average_log_probs(self.predict_log_samples(x)))


__all__ = ["Predictive", "average_log_probs", "dropout_layers", "softmax"]
