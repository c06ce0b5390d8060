"""VOGN: variational online Gauss-Newton (Osawa et al., 2019)."""

import contextlib

import keras
from keras import ops

from keras_bayes.optimizers import base
# The training step VOGN needs; imported here so that `import keras_bayes`
# registers it for `keras.models.load_model`.
from keras_bayes.per_example import VOGNModel


def vogn_momentum(momentum, gradient, mean, prior, beta1):
    """m ← β1·m + (ĝ + δ̃·μ)  (heavy-ball, as the paper's algorithm)."""
    return beta1 * momentum + gradient + prior * mean


def vogn_precision(precision, squared_gradient, temperature, rate):
    """s ← (1 − τ·(1−β2))·s + (1−β2)·ĥ, ĥ = mean_i g_i²."""
    return (1.0 - temperature * rate) * precision + rate * squared_gradient


def vogn_posterior_std(precision, prior, damping, ess):
    """σ = 1/sqrt(N·(s + δ̃ + γ))."""
    return ops.rsqrt(ess * (precision + prior + damping))


@keras.saving.register_keras_serializable(package="keras_bayes")
class VOGN(base.PosteriorOptimizer):
    """VOGN: natural-gradient VI with a Gauss-Newton diagonal.

    VOGN (Osawa et al., 2019) learns q(θ) = N(μ, diag(σ²)) with
    σ² = 1/(N·(s + δ̃ + γ)), where s is a running average of the mean
    per-example squared gradient (the Gauss-Newton / Fisher diagonal), δ̃ =
    τ·δ the tempered prior precision per example and γ the damping. With
    the gradient taken at a sample θ = μ + σε:

    ```
    ĝ = mean_i ∇ℓ_i(θ),   ĥ = mean_i (∇ℓ_i(θ))²     # per-example gradients
    m = β1·m + (ĝ + δ̃·μ)
    s = (1 − τ·(1−β2))·s + (1−β2)·ĥ
    μ = μ − α·m / (s + δ̃ + γ)
    θ = μ + ε',  ε' ~ N(0, 1/(N·(s + δ̃ + γ)))        # the next sample
    ```

    (algorithms.md §4.2; N = `ess`, δ = `weight_decay` per example,
    τ = `temperature`, γ = `damping`.) ĥ needs per-example gradients, which
    a Keras optimizer does not receive: train through
    `keras_bayes.per_example.VOGNModel`, whose training step computes them
    with the backend's vectorizing map and hands ĥ over with
    `set_squared_gradients`. Used with a plain model, `apply` raises.

    The paper keeps BatchNorm parameters deterministic; per-example
    gradients through BatchNorm are not defined, so `VOGNModel` rejects it
    (use FRN, GroupNormalization or LayerNormalization).

    The paper's ImageNet recipe (ResNet-18, 128 GPUs × batch 32): α = 1.6e-3,
    β1 = 0.9, prior variance 7.5e-3, damping 1e-4, N scaled by 5 for data
    augmentation, 5 warm-up epochs, step decay. The defaults here are a
    small-scale starting point, not a published recipe.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable: α.
        ess: float > 0, N: the training-set size (times the augmentation
            factor).
        beta1: float in [0, 1), the momentum. Defaults to 0.9.
        beta2: float in [0, 1), the decay of the curvature average (its
            rate is 1 − β2). Defaults to 0.999.
        temperature: float >= 0, τ (tempering of the prior and entropy).
            Defaults to 1.
        damping: float >= 0, γ. Defaults to 1e-4.
        precision_init: float >= 0, s0. With β2 close to 1, s stays near s0
            for ~1/(1−β2) steps, so the first steps are SGD with momentum at
            learning rate α/(s0 + δ̃ + γ). Defaults to 1.0.
        weight_decay: float >= 0, the prior precision per example δ.
            Defaults to 1e-4.
        seed: int or None, the seed of the posterior noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor` and `name`. `use_ema` and
            `gradient_accumulation_steps` are rejected.

    Reference:
        Osawa et al., "Practical Deep Learning with Bayesian Principles",
        NeurIPS 2019, arXiv:1906.02506.
    """

    state_names = ("mean", "precision", "momentum", "squared_gradient")
    needs_per_example_gradients = True
    _per_example_active = False

    def __init__(self, learning_rate, ess, beta1=0.9, beta2=0.999,
                 temperature=1.0, damping=1e-4, precision_init=1.0,
                 weight_decay=1e-4, seed=None, name=None, **kwargs):
        ess = base.check_number("ess", ess, low=0.0, low_open=True)
        beta1 = base.check_number("beta1", beta1, low=0.0, high=1.0,
                                  high_open=True)
        beta2 = base.check_number("beta2", beta2, low=0.0, high=1.0,
                                  high_open=True)
        temperature = base.check_number("temperature", temperature, low=0.0)
        damping = base.check_number("damping", damping, low=0.0)
        precision_init = base.check_number("precision_init", precision_init,
                                           low=0.0)
        steps = kwargs.get("gradient_accumulation_steps")
        if steps is not None and steps != 1:
            raise ValueError(
                "`gradient_accumulation_steps` is not supported by VOGN: "
                "the squared gradients of a step would not match the "
                "accumulated gradient. Received: "
                f"gradient_accumulation_steps={steps!r}")
        super().__init__(learning_rate=learning_rate,
                         weight_decay=weight_decay, seed=seed,
                         name=name or "VOGN", **kwargs)
        self.ess = ess
        self.beta1 = beta1
        self.beta2 = beta2
        self.temperature = temperature
        self.damping = damping
        self.precision_init = precision_init

    def _state_initializer(self, name, variable):
        if name == "precision":
            return keras.initializers.Constant(self.precision_init)
        if name == "mean":
            return super()._state_initializer(name, variable)
        return "zeros"

    @contextlib.contextmanager
    def per_example_step(self):
        """Context in which `apply` is allowed (entered by `VOGNModel`)."""
        previous = self._per_example_active
        self._per_example_active = True
        try:
            yield
        finally:
            self._per_example_active = previous

    def set_squared_gradients(self, squared_gradients,
                              trainable_variables=None):
        """Store ĥ = mean_i g_i² for the next `apply` (one per variable)."""
        variables = (list(trainable_variables) if trainable_variables
                     is not None else list(self._trainable_variables))
        if not self.built:
            self.build(variables)
        for value, variable in zip(squared_gradients, variables):
            index = self._get_variable_index(variable)
            slot = self._state["squared_gradient"][index]
            self.assign(slot, ops.cast(value, slot.dtype))

    def apply(self, grads, trainable_variables=None):
        if not self._per_example_active:
            raise ValueError(
                "VOGN needs per-example squared gradients, which a plain "
                "Keras model does not compute. Wrap the model: `model = "
                "keras_bayes.per_example.VOGNModel(model)`, then "
                "`model.compile(optimizer=VOGN(...), loss=...)` and "
                "`model.fit(...)`. (In a custom training step, call "
                "`set_squared_gradients` and then `apply` within "
                "`optimizer.per_example_step()`.)")
        return super().apply(grads, trainable_variables)

    def _prior(self, weight_decay):
        return self.temperature * weight_decay

    def _posterior_std(self, state, weight_decay):
        return vogn_posterior_std(state["precision"],
                                  self._prior(weight_decay), self.damping,
                                  self.ess)

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        prior = self._prior(weight_decay)
        mean = state["mean"]
        momentum = vogn_momentum(state["momentum"], gradient, mean, prior,
                                 self.beta1)
        precision = vogn_precision(state["precision"],
                                   state["squared_gradient"],
                                   self.temperature, 1.0 - self.beta2)
        new_mean = mean - learning_rate * momentum / (
            precision + prior + self.damping)
        new_state = {"mean": new_mean, "precision": precision,
                     "momentum": momentum}
        return new_state, vogn_posterior_std(precision, prior, self.damping,
                                             self.ess)

    def get_config(self):
        config = super().get_config()
        config.update({
            "ess": self.ess,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "temperature": self.temperature,
            "damping": self.damping,
            "precision_init": self.precision_init,
        })
        return config


__all__ = ["VOGN", "VOGNModel"]
