"""Predictions averaged over posterior samples (Bayesian model averaging)."""

import numbers

import numpy as np

from keras_bayes.optimizers.base import unwrap_optimizer


def logsumexp(values, axis, keepdims=False):
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    out = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True))
    out = out + peak
    return out if keepdims else np.squeeze(out, axis=axis)


class Predictive:
    """Averages a classifier's predictions over posterior samples.

    For S samples θ_s ~ q it returns p(y|x) = (1/S)·Σ_s p(y|x, θ_s),
    computed in log space (logsumexp) for stability. The posterior is the
    one held by the model's keras_bayes optimizer (or `optimizer=`).
    The model's weights are restored on exit, also after an exception.

    Args:
        model: a compiled or uncompiled Keras classifier.
        num_samples: int >= 1, posterior samples per prediction.
        optimizer: the keras_bayes optimizer holding the posterior; defaults
            to `model.optimizer`.
        from_logits: bool, whether the model outputs logits (True) or
            probabilities (False, the default).
        seed: int or None; an int makes the samples reproducible.
        batch_size: batch size of each `model.predict` pass.
    """

    def __init__(self, model, num_samples=32, optimizer=None,
                 from_logits=False, seed=None, batch_size=256):
        if (
            isinstance(num_samples, bool)
            or not isinstance(num_samples, numbers.Integral)
            or num_samples < 1
        ):
            raise ValueError(
                "`num_samples` must be an integer >= 1. "
                f"Received: num_samples={num_samples!r}"
            )
        posterior = unwrap_optimizer(
            optimizer if optimizer is not None
            else getattr(model, "optimizer", None)
        )
        if posterior is None:
            raise ValueError(
                "Predictive needs a keras_bayes optimizer holding a "
                "posterior: compile the model with one, or pass "
                "`optimizer=`."
            )
        self.model = model
        self.num_samples = int(num_samples)
        self.optimizer = posterior
        self.from_logits = bool(from_logits)
        self.seed = seed
        self.batch_size = batch_size

    def _log_probs(self, x):
        out = np.asarray(
            self.model.predict(x, batch_size=self.batch_size, verbose=0),
            dtype=np.float64,
        )
        if self.from_logits:
            return out - logsumexp(out, axis=-1, keepdims=True)
        return np.log(np.maximum(out, np.finfo(np.float64).tiny))

    def predict_at_mean(self, x):
        """Probabilities at the posterior mean (one pass)."""
        with self.optimizer.mean_weights():
            return np.exp(self._log_probs(x))

    def predict_samples_log(self, x):
        """Log-probabilities of every sample, shape (S, n, k)."""
        import keras

        seed = (
            keras.random.SeedGenerator(self.seed)
            if self.seed is not None else None
        )
        optimizer = self.optimizer
        previous = optimizer._read_model()
        try:
            out = []
            for _ in range(self.num_samples):
                optimizer._write_into_model(
                    optimizer.draw_posterior_sample(seed)
                )
                out.append(self._log_probs(x))
            return np.stack(out)
        finally:
            optimizer._write_into_model(previous)

    def predict(self, x):
        """The Bayesian model average of the class probabilities."""
        log_probs = self.predict_samples_log(x)
        averaged = logsumexp(log_probs, axis=0) - np.log(self.num_samples)
        # Renormalise rounding so rows sum to one for the metrics.
        return np.exp(averaged - logsumexp(averaged, axis=-1, keepdims=True))
