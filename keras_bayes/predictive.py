"""Predictions averaged over posterior samples (Bayesian model averaging)."""

import numpy as np
from keras import ops

from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers.base import unwrap_optimizer

METHODS = ("posterior", "dropout")


def logsumexp(values, axis, keepdims=False):
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True))
    out = out + peak
    return out if keepdims else np.squeeze(out, axis=axis)


def average_log_probs(log_probs):
    """log((1/S)·Σ_s p_s) from per-sample log-probabilities (S, n, k)."""
    return logsumexp(log_probs, axis=0) - np.log(log_probs.shape[0])


def softmax(logits):
    """Probabilities from logits or unnormalised log-probabilities (last
    axis); also renormalises log-probabilities that rounding moved."""
    return np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))


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
      calls give the same samples; `seed` does not apply.

    Cost: S passes over the data. `batch_size` sets the batch of each pass;
    `predict_at_mean` is the one-pass fast path.

    Args:
        model: a Keras classifier.
        num_samples: int >= 1, samples per prediction.
        optimizer: the keras_bayes optimizer holding the posterior; defaults
            to `model.optimizer`. With `method="dropout"` it is optional and
            only sets where `predict_at_mean` evaluates.
        from_logits: bool, whether the model outputs logits (True) or
            probabilities (False, the default).
        seed: int or None; an int makes the samples reproducible.
        batch_size: int, the batch size of each pass. Defaults to 256.
        method: `"posterior"` or `"dropout"`.
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
        out = np.asarray(out, dtype=np.float64)
        if self.from_logits:
            return out - logsumexp(out, axis=-1, keepdims=True)
        return np.log(np.maximum(out, np.finfo(np.float64).tiny))

    def _predict_log(self, x):
        return self._to_log_probs(
            self.model.predict(x, batch_size=self.batch_size, verbose=0))

    def predict_at_mean(self, x):
        """Probabilities at the posterior mean (one pass); without a
        posterior, at the weights as they are."""
        if self.optimizer is None:
            return np.exp(self._predict_log(x))
        with self.optimizer.mean_weights():
            return np.exp(self._predict_log(x))

    def predict_log_samples(self, x):
        """Log-probabilities of every sample, shape (S, n, k)."""
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
        return np.concatenate(rows, axis=1)

    def predict_samples(self, x):
        """Probabilities of every sample, shape (S, n, k)."""
        return np.exp(self.predict_log_samples(x))

    def predict(self, x):
        """The model average of the class probabilities, shape (n, k)."""
        # Renormalised so that rows sum to one for the metrics.
        return softmax(average_log_probs(self.predict_log_samples(x)))
