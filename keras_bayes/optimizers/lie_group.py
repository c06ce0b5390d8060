"""The Lie-group Bayesian learning rule (Kıral, Möllenhoff & Khan, 2023).

The posterior is the push-forward q_g = g·q0 of a fixed base distribution q0
(Gaussian, uniform, Laplace or Rayleigh noise, `keras_bayes.optimizers.noise`)
by an element g of a Lie group acting on the weights. The rule minimises

    L(g) = E_{θ~q_g}[ℓ̄(θ) + ½·δ·‖θ‖²] − τ·H(q_g),   τ = temperature / N,

with ℓ̄ the mean minibatch loss, δ = `weight_decay` the prior precision per
example and N = `ess` the training-set size. Gradients are taken in the Lie
algebra and g moves along the group's exponential map, so it never leaves the
group (for the affine group: the scale stays positive).

Three groups, one class each:

* `LieAdditive` (Algorithm 1): θ = w + c·ξ, momentum SGD at perturbed weights;
* `LieAffine` (Algorithm 3): θ = b + A·c·ξ with a learned positive scale A;
* `LieMultiplicative` (Algorithm 2): θ = g⁺·c·ξ⁺ − g⁻·c·ξ⁻, ξ± ~ Rayleigh.

`lie_group_blr(group=...)` (alias `LieGroupBLR`) builds any of them by
name.

As for every `PosteriorOptimizer`, the model's variables hold the current
sample θ between steps, the optimizer holds the group element, the gradient
of a step is taken at θ by the ordinary Keras training step, and at the end of
`fit` the variables receive the posterior mean (w, b, or E[θ]).

Differences from the official JAX code (`team-approx-bayes/liegroups`),
which are deliberate (docs/lie_group.md, "Pitfalls of the official code
that are not reproduced"):

* every variable and every step gets fresh, independent noise from the
  optimizer's tracked `SeedGenerator` (the official uniform noise reuses one
  key for all tensors; its Rayleigh noise is drawn with NumPy inside a jitted
  step and is frozen at trace time; the multiplicative rule draws ξ⁺ and ξ⁻
  from the same key and never advances it);
* there is no "SGD = additive with the identity as noise" mode (it evaluates
  the gradient at 2w): `LieAdditive(noise_scale=0)` is exactly momentum SGD
  at a constant learning rate (under a schedule it follows the authors'
  w ← w − α_t·gm, which is not Keras SGD's scheduled momentum);
* φ is evaluated with `expm1`, and its series only where |α1·x| < 1e-4.

The first step of a `fit` (and the first after the mean was written back)
takes its gradient at the mean, since no sample has been drawn yet; the
rules then skip the part of the update that needs the noise of the sample
(the affine scale gradient, the multiplicative algebra gradients).

Only one Monte-Carlo sample per step (`mc_samples=1`) is supported: several
samples on the same minibatch need a multi-pass training step.

Reference:
    E. M. Kıral, T. Möllenhoff and M. E. Khan, "The Lie-Group Bayesian
    Learning Rule", AISTATS 2023, arXiv:2303.04397.
"""

import numbers

import keras
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes._validation import check_choice
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers import base
from keras_bayes.optimizers import noise as noise_lib
from keras_bayes.optimizers.updates import keep_if_finite

# |α1·x| below which φ(x) = expm1(−α1·x)/x is replaced by its series
# −α1 + α1²·x/2 (relative error < (α1·x)²/6 < 2e-9).
PHI_SERIES_THRESHOLD = 1e-4


# ----------------------------------------------------------------------
# The update equations, as small pure functions.

def prior_gradient(gradient, sample, weight_decay, center=None):
    """∇[ℓ̄ + ½δ‖θ − θ₀‖²] at the sample: g + δ·(θ − θ₀) (θ₀ = 0 if None).

    The prior acts at the sample θ, as in the official code.
    """
    if center is None:
        return gradient + weight_decay * sample
    return gradient + weight_decay * (sample - center)


def exponential_average(average, value, beta):
    """β·m + (1−β)·v."""
    return beta * average + (1.0 - beta) * value


def additive_location_step(location, momentum, learning_rate):
    """w ← w − α·gm."""
    return location - learning_rate * momentum


def affine_scale_gradient(perturbation, gradient, tau):
    """The scale part of the affine algebra gradient, A·ε·g − τ.

    A·ε = θ − b is the perturbation of the sample, so no noise is stored.
    """
    return perturbation * gradient - tau


def affine_translation_gradient(scale, gradient):
    """The translation part of the affine algebra gradient, A·g."""
    return scale * gradient


def affine_phi(x, rate):
    """φ(x) = (exp(−a·x) − 1)/x with a = `rate`, exact at x = 0.

    Evaluated as expm1(−a·x)/x; where |a·x| < `PHI_SERIES_THRESHOLD` the
    series −a + a²·x/2 is used instead (φ(0) = −a).
    """
    small = ops.abs(rate * x) < PHI_SERIES_THRESHOLD
    safe_x = ops.where(small, ops.ones_like(x), x)
    exact = ops.expm1(-rate * safe_x) / safe_x
    series = -rate + 0.5 * rate * rate * x
    return ops.where(small, series, exact)


def affine_location_step(location, scale, translation_momentum,
                         scale_momentum, rate):
    """b ← b + A·MV·φ(MU) (the OLD scale A), the affine exponential map.

    For MU → 0 this is b − α1·A·MV: a step preconditioned by A².
    """
    return location + scale * translation_momentum * affine_phi(
        scale_momentum, rate)


def group_scale_step(scale, momentum, rate):
    """A ← A·exp(−a·M): multiplicative, so A > 0 stays positive."""
    return scale * ops.exp(-rate * momentum)


def multiplicative_algebra_gradients(positive_term, negative_term, gradient,
                                     tau):
    """(g⁺ξ⁺·g − τ, −g⁻ξ⁻·g − τ) for θ = g⁺ξ⁺ − g⁻ξ⁻."""
    return (positive_term * gradient - tau,
            -negative_term * gradient - tau)


# ----------------------------------------------------------------------
# Shared machinery.

def _generator(seed):
    """An int seed becomes a fresh generator: a reproducible draw in which
    variables of equal shape (and ξ⁺, ξ⁻) still get different noise."""
    if isinstance(seed, numbers.Integral):
        return keras.random.SeedGenerator(int(seed))
    return seed


class _LieGroupOptimizer(base.PosteriorOptimizer):
    """Common arguments, noise drawing and configuration of the three rules.

    A subclass's `_posterior_update` returns the new state and the
    per-weight multiplier of the unit base noise (c for the additive group,
    A·c for the affine group); `update_step` writes mean + multiplier·ξ.
    """

    noise_families = ("gaussian", "uniform", "laplace")
    default_name = "LieGroupBLR"

    def __init__(self, learning_rate, noise, noise_scale, weight_decay,
                 mc_samples, seed, name, **kwargs):
        check_choice("noise", noise, self.noise_families)
        noise_scale = check_number("noise_scale", noise_scale, low=0.0)
        mc_samples = check_positive_integer("mc_samples", mc_samples)
        if mc_samples > 1:
            raise ValueError(
                "`mc_samples` > 1 needs several forward/backward passes on "
                "the same minibatch, which the plain Keras training step "
                "cannot do; only mc_samples=1 is supported so far. "
                f"Received: mc_samples={mc_samples}"
            )
        if kwargs.pop("fused_update", None):
            raise ValueError(
                f"`fused_update=True` is not supported by "
                f"{type(self).__name__}: it updates variable by variable. "
                "Received: fused_update=True"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            seed=seed,
            fused_update=False,
            name=name or self.default_name,
            **kwargs,
        )
        self.noise = noise
        self.noise_scale = noise_scale
        self.mc_samples = mc_samples

    # Its noise families are drawn with Keras' random ops (see
    # `PosteriorOptimizer._draws_backend_noise`).
    _draws_backend_noise = False

    def _training_noise(self, shape, dtype, seed=None):
        # The rule's own family; the base class scales it by the multiplier
        # `_posterior_update` returns and adds the mean.
        return noise_lib.draw_noise(
            self.noise, shape, dtype,
            self._seed_generator if seed is None else seed)

    def _draw(self, variable, seed=None):
        return self._training_noise(tuple(variable.shape), variable.dtype,
                                    seed)

    def _noise_multiplier(self, state):
        raise NotImplementedError

    def _posterior_std(self, state, weight_decay):
        return self._noise_multiplier(state) * noise_lib.NOISE_STD[
            self.noise]

    def _sample_tensors(self, mean_and_std, seed):
        # Draw from the rule's own family, not a Gaussian of equal std.
        seed = _generator(seed)
        scale = 1.0 / noise_lib.NOISE_STD[self.noise]
        return [
            mean + (std * scale) * self._draw(variable, seed)
            for (mean, std), variable in zip(mean_and_std,
                                             self._model_variables())
        ]

    def get_config(self):
        config = super().get_config()
        config.pop("fused_update", None)
        config.update({
            "noise": self.noise,
            "noise_scale": self.noise_scale,
            "mc_samples": self.mc_samples,
        })
        return config


# ----------------------------------------------------------------------
# The additive group.

@keras.saving.register_keras_serializable(package="keras_bayes")
class LieAdditive(_LieGroupOptimizer):
    """The additive-group Bayesian learning rule (Algorithm 1).

    The posterior is the base noise shifted to a learned location w:
    θ = w + c·ξ, ξ ~ q0 at the fixed scale c = `noise_scale`. The entropy
    does not depend on w, so the rule is momentum SGD on the expected loss,
    each gradient taken at a perturbed weight:

    ```
    g  = ∇ℓ̄(θ) + δ·θ                  # θ = w + c·ξ, the current sample
    gm = β1·gm + (1−β1)·g
    w  = w − α·gm
    θ  = w + c·ξ',  ξ' ~ q0            # the next sample
    ```

    With `noise_scale=0` and a constant learning rate it is momentum SGD
    exactly (Keras' `SGD(learning_rate=α·(1−β1), momentum=β1)` up to float
    rounding). Under a learning-rate schedule it is not: this rule follows
    the authors' w ← w − α_t·gm, which scales the whole momentum by the
    current rate, while Keras SGD accumulates v ← β1·v − α_t·(1−β1)·g, each
    gradient scaled by the rate of its own step.

    Recipe of the official README (ResNet-20-FRN on CIFAR-10 with data
    augmentation, batch 200, 180 epochs, linear warmup over 5 epochs then
    cosine decay of α): α = 0.5, β1 = 0.8, Gaussian noise with c = 0.005,
    priorprec 25, i.e. δ = 25/50 000 = 5e-4, one sample per step.
    Prediction: at w (`posterior_mean`), or averaged over samples w + c·ξ
    (32 in the paper).

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable:
            α (times the schedule's factor).
        beta1: float in [0, 1), the momentum β1. Defaults to 0.8.
        noise: `"gaussian"` (default), `"uniform"` or `"laplace"`.
        noise_scale: float >= 0, c. Defaults to 0.005.
        weight_decay: float >= 0, the prior precision per example δ; the
            prior's gradient δ·θ is added at the sample (coupled L2), never
            Keras' decoupled decay. Defaults to 5e-4.
        mc_samples: only 1 is supported.
        seed: int or None, the seed of the noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        prior: not supported (the rule has no `ess` to scale a prior by).
        nonfinite_gradients: `"skip"` (default) or `"raise"`: a step with a
            NaN/Inf gradient leaves the posterior unchanged (and raises in
            `"raise"` mode), see `PosteriorOptimizer`.
        no_decay_names: regular expressions of variable names that get
            δ = 0 (kept in the config), see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor`, `gradient_accumulation_steps`, `name`.
            `use_ema` is rejected.

    State: w and gm (2 buffers per weight).

    Example (the README's recipe, scaled to a small model):

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras_bayes.optimizers.LieAdditive(
            learning_rate=0.1, noise="gaussian", noise_scale=0.005),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)   # ends with w in the model
    probs = keras_bayes.Predictive(model, num_samples=8,
                                   from_logits=True).predict(x)
    ```
    """

    state_names = ("mean", "momentum")
    default_name = "LieAdditive"

    def __init__(self, learning_rate, beta1=0.8, noise="gaussian",
                 noise_scale=0.005, weight_decay=5e-4, mc_samples=1,
                 seed=None, name=None, **kwargs):
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        super().__init__(learning_rate, noise, noise_scale, weight_decay,
                         mc_samples, seed, name, **kwargs)
        self.beta1 = beta1

    def _noise_multiplier(self, state):
        return ops.full_like(state["mean"], self.noise_scale)

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        gradient = prior_gradient(gradient, sample, weight_decay)
        momentum = exponential_average(state["momentum"], gradient,
                                       self.beta1)
        mean = additive_location_step(state["mean"], momentum,
                                      learning_rate)
        return {"mean": mean, "momentum": momentum}, self.noise_scale

    def get_config(self):
        config = super().get_config()
        config["beta1"] = self.beta1
        return config


# ----------------------------------------------------------------------
# The affine group.

@keras.saving.register_keras_serializable(package="keras_bayes")
class LieAffine(_LieGroupOptimizer):
    """The affine-group Bayesian learning rule (Algorithm 3).

    The posterior is the base noise scaled and shifted: θ = b + A·c·ξ,
    ξ ~ q0, with a learned location b and a learned positive scale A (one
    per weight). Its entropy is H(q0) + Σ log A, so the temperature
    τ = `temperature`/N acts on the scale only. One step, with the gradient
    g taken at the current sample θ:

    ```
    g  = ∇ℓ̄(θ) + δ·θ
    MU = β2·MU + (1−β2)·((θ − b)·g − τ)      # (θ−b)·g = A·ε·g
    MV = β1·MV + (1−β1)·A·g
    b  = b + A·MV·φ(MU),  φ(x) = (exp(−α1·x) − 1)/x      # the OLD A
    A  = A·exp(−α2·MU)
    θ  = b + A·c·ξ',  ξ' ~ q0                          # the next sample
    ```

    (b, A) moves along the closed-form exponential map of the affine group,
    exp(t(u, v)) = (e^{tu}, v(e^{tu} − 1)/u), with separate step sizes α1
    (`learning_rate`) for b and α2 = `scale_lr_ratio`·α1 for A, as in the
    official code; a learning-rate schedule scales both. A stays positive
    because of the exp. For MU → 0, φ → −α1 and the mean step is
    b − α1·A²·MV. At the fixed point E[A·ε·g] = τ, which for Gaussian noise
    and a quadratic loss of curvature H gives the Bayesian posterior
    variance A²c² = τ/H = temperature/(N·H).

    Recipe of the official README (ResNet-20-FRN on CIFAR-10 with data
    augmentation, batch 200, 180 epochs, linear warmup over 5 epochs then
    cosine decay): α1 = 1.0, α2 = 0.05 (scale_lr_ratio 0.05), β1 = 0.8,
    β2 = 0.999, temperature 1, Gaussian noise with c = 0.005, A0 = 1,
    priorprec 25 (δ = 5e-4, N = 50 000), one sample per step. Prediction: at
    b (`posterior_mean`), or averaged over samples b + A·c·ξ (32 in the
    paper).

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable:
            α1, the step size of the location.
        ess: float > 0, N: the training-set size (times the augmentation
            factor).
        scale_lr_ratio: float >= 0, α2/α1: the scale's step size relative
            to the location's. Defaults to 0.05.
        beta1: float in [0, 1), the momentum of the translation part.
            Defaults to 0.8.
        beta2: float in [0, 1), the momentum of the scale part. Defaults
            to 0.999.
        temperature: float >= 0; τ = temperature / ess. Defaults to 1.
        scale_init: float > 0, A0. Defaults to 1.0.
        noise: `"gaussian"` (default), `"uniform"` or `"laplace"`.
        noise_scale: float >= 0, the base scale c. Defaults to 0.005.
        weight_decay: float >= 0, the prior precision per example δ (added
            as δ·θ at the sample). Defaults to 5e-4.
        mc_samples: only 1 is supported.
        seed: int or None, the seed of the noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        prior, prior_strength: a `keras_bayes.Posterior` as the prior and
            its tempering τ (continual learning), see `PosteriorOptimizer`.
        nonfinite_gradients: `"skip"` (default) or `"raise"`: a step with a
            NaN/Inf gradient leaves the posterior unchanged (and raises in
            `"raise"` mode), see `PosteriorOptimizer`.
        no_decay_names: regular expressions of variable names that get
            δ = 0 (kept in the config), see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor`, `gradient_accumulation_steps`, `name`.
            `use_ema` is rejected.

    State: b, A, MU and MV (4 buffers per weight).

    Example (the paper's recipe, scaled to a small model):

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras_bayes.optimizers.LieAffine(
            learning_rate=1.0, ess=len(x), scale_lr_ratio=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    std = model.optimizer.posterior_std()  # |A|·c·(std of noise) per weight
    ```
    """

    state_names = ("mean", "scale", "scale_momentum", "momentum")
    default_name = "LieAffine"

    def __init__(self, learning_rate, ess, scale_lr_ratio=0.05, beta1=0.8,
                 beta2=0.999, temperature=1.0, scale_init=1.0,
                 noise="gaussian", noise_scale=0.005, weight_decay=5e-4,
                 mc_samples=1, seed=None, name=None, **kwargs):
        ess = check_number("ess", ess, low=0.0, low_open=True)
        scale_lr_ratio = check_number("scale_lr_ratio", scale_lr_ratio,
                                      low=0.0)
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        beta2 = check_number("beta2", beta2, low=0.0, high=1.0,
                             high_open=True)
        temperature = check_number("temperature", temperature, low=0.0)
        scale_init = check_number("scale_init", scale_init, low=0.0,
                                  low_open=True)
        super().__init__(learning_rate, noise, noise_scale, weight_decay,
                         mc_samples, seed, name, **kwargs)
        self.ess = ess
        self.scale_lr_ratio = scale_lr_ratio
        self.beta1 = beta1
        self.beta2 = beta2
        self.temperature = temperature
        self.scale_init = scale_init

    @property
    def tau(self):
        """τ = temperature / N, the weight of the entropy per example."""
        return self.temperature / self.ess

    def _state_initializer(self, name, variable):
        if name == "scale":
            return keras.initializers.Constant(self.scale_init)
        return super()._state_initializer(name, variable)

    def _noise_multiplier(self, state):
        return state["scale"] * self.noise_scale

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        mean, scale = state["mean"], state["scale"]
        gradient = prior_gradient(gradient, sample, weight_decay)
        perturbation = sample - mean
        scale_momentum = exponential_average(
            state["scale_momentum"],
            affine_scale_gradient(perturbation, gradient, self.tau),
            self.beta2,
        )
        # A gradient taken at the mean itself (no sample drawn yet) says
        # nothing about the scale.
        scale_momentum = ops.where(ops.equal(perturbation, 0.0),
                                   state["scale_momentum"], scale_momentum)
        momentum = exponential_average(
            state["momentum"], affine_translation_gradient(scale, gradient),
            self.beta1)
        new_mean = affine_location_step(mean, scale, momentum,
                                        scale_momentum, learning_rate)
        new_scale = group_scale_step(
            scale, scale_momentum, self.scale_lr_ratio * learning_rate)
        new_state = {"mean": new_mean, "scale": new_scale,
                     "scale_momentum": scale_momentum, "momentum": momentum}
        return new_state, new_scale * self.noise_scale

    def posterior_scale(self):
        """The learned scale A, one NumPy array per trainable variable."""
        self._check_built()
        return [ops.convert_to_numpy(a) for a in self._state["scale"]]

    def get_config(self):
        config = super().get_config()
        config.update({
            "ess": self.ess,
            "scale_lr_ratio": self.scale_lr_ratio,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "temperature": self.temperature,
            "scale_init": self.scale_init,
        })
        return config


# ----------------------------------------------------------------------
# The multiplicative group.

@keras.saving.register_keras_serializable(package="keras_bayes")
class LieMultiplicative(_LieGroupOptimizer):
    """The multiplicative-group Bayesian learning rule (Algorithm 2).

    Each weight is the difference of an excitatory and an inhibitory part,
    θ = g⁺·c·ξ⁺ − g⁻·c·ξ⁻ with ξ± ~ Rayleigh(1) independent and learned
    scales g± > 0 that move multiplicatively (the group of positive reals):

    ```
    g   = ∇ℓ̄(θ) + δ·θ,   p = g⁺·c·ξ⁺,  n = g⁻·c·ξ⁻   (θ = p − n)
    gm⁺ = β1·gm⁺ + (1−β1)·(p·g − τ)
    gm⁻ = β1·gm⁻ + (1−β1)·(−n·g − τ)
    g±  = g±·exp(−α·gm±)
    θ   = g⁺·c·ξ⁺' − g⁻·c·ξ⁻'               # the next sample
    ```

    It learns sparse excitatory/inhibitory features. `posterior_mean` (and
    the weights after `fit`) is E[θ] = c·√(π/2)·(g⁺ − g⁻); the official code
    predicts "at g" with g⁺ − g⁻, i.e. E[θ]/(c·√(π/2)).

    Initialisation (at the first step, from the weights the model holds
    then): g⁺ = |w| + offset and g⁻ = |w̃| + offset, where w̃ is w flattened
    and reversed. For an i.i.d. initializer w̃ is an independent second
    initialisation, which the official code draws from the network's
    initializer. `posterior_mean` is zero until the first step.

    Recipes of the official README: MNIST tanh-MLP: α = 50, β1 = 0.9,
    temperature 0.006, batch 50, 32 samples per step, priorprec 0;
    CIFAR-10 LeNet-like CNN: α = 100, β1 = 0.9, temperature 0.001, batch
    100, 10 samples, priorprec 1, offset 0.001, N = 4·50 000. (Only one
    sample per step is available here.)

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable: α.
        ess: float > 0, N: the training-set size (times the augmentation
            factor).
        beta1: float in [0, 1), the momentum. Defaults to 0.9.
        temperature: float >= 0; τ = temperature / ess. Defaults to 1.
        init_offset: float > 0, added to |w| at initialisation. Defaults
            to 1e-5.
        noise: only `"rayleigh"`.
        noise_scale: float > 0, c. Defaults to 1.0.
        weight_decay: float >= 0, the prior precision per example δ.
            Defaults to 0.
        mc_samples: only 1 is supported.
        seed: int or None, the seed of the noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        prior, prior_strength: a `keras_bayes.Posterior` as the prior and
            its tempering τ (placed by this rule itself, which is not
            shift-equivariant), see `PosteriorOptimizer`.
        nonfinite_gradients: `"skip"` (default) or `"raise"`: a step with a
            NaN/Inf gradient leaves the posterior unchanged (and raises in
            `"raise"` mode), see `PosteriorOptimizer`.
        no_decay_names: regular expressions of variable names that get
            δ = 0 (kept in the config), see `PosteriorOptimizer`.
        **kwargs: as for `LieAdditive`.

    State: E[θ], g⁺, g⁻, gm⁺, gm⁻ and the sample's two parts p, n
    (7 buffers per weight).

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras_bayes.optimizers.LieMultiplicative(
            learning_rate=1.0, ess=len(x), temperature=0.001),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0)
    ```
    """

    noise_families = ("rayleigh",)
    state_names = ("mean", "positive", "negative", "positive_momentum",
                   "negative_momentum", "positive_part", "negative_part")
    default_name = "LieMultiplicative"

    def __init__(self, learning_rate, ess, beta1=0.9, temperature=1.0,
                 init_offset=1e-5, noise="rayleigh", noise_scale=1.0,
                 weight_decay=0.0, mc_samples=1, seed=None, name=None,
                 **kwargs):
        ess = check_number("ess", ess, low=0.0, low_open=True)
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        temperature = check_number("temperature", temperature, low=0.0)
        init_offset = check_number("init_offset", init_offset, low=0.0,
                                   low_open=True)
        check_number("noise_scale", noise_scale, low=0.0, low_open=True)
        super().__init__(learning_rate, noise, noise_scale, weight_decay,
                         mc_samples, seed, name, **kwargs)
        self.ess = ess
        self.beta1 = beta1
        self.temperature = temperature
        self.init_offset = init_offset

    @property
    def tau(self):
        """τ = temperature / N."""
        return self.temperature / self.ess

    @property
    def _rayleigh_mean(self):
        return self.noise_scale * noise_lib.NOISE_MEAN["rayleigh"]

    def _initial_scales(self, sample):
        """(|w| + offset, |w̃| + offset), w̃ = w flattened and reversed."""
        reversed_sample = ops.reshape(
            ops.flip(ops.reshape(sample, (-1,)), axis=0), ops.shape(sample))
        return (ops.abs(sample) + self.init_offset,
                ops.abs(reversed_sample) + self.init_offset)

    def _noise_multiplier(self, state):
        return self.noise_scale * ops.sqrt(
            ops.square(state["positive"]) + ops.square(state["negative"]))

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay, center=None):
        # `center`: the centre of a `prior=` Posterior (None: 0). This rule
        # is not shift-equivariant (its parts are positive), so the base's
        # `centred_update` cannot place the prior for it: the prior
        # gradient δ·(θ − θ₀) is formed here.
        positive_part = state["positive_part"]
        negative_part = state["negative_part"]
        gradient = prior_gradient(gradient, sample, weight_decay, center)
        # The stored parts belong to the sample only if the variable still
        # holds p − n (not at the first step, nor after the mean was
        # written back). Not an exact equality: a compiler may form the
        # written p − n from unrounded parts (fused multiply-add), one ulp
        # away from the difference of the stored ones; a written-back mean
        # is off by the noise itself, orders of magnitude more.
        drawn = ops.logical_and(
            ops.logical_and(positive_part > 0.0, negative_part > 0.0),
            ops.abs(sample - (positive_part - negative_part))
            <= 1e-5 * (positive_part + negative_part))
        grad_positive, grad_negative = multiplicative_algebra_gradients(
            positive_part, negative_part, gradient, self.tau)
        positive_momentum = ops.where(
            drawn,
            exponential_average(state["positive_momentum"], grad_positive,
                                self.beta1),
            state["positive_momentum"])
        negative_momentum = ops.where(
            drawn,
            exponential_average(state["negative_momentum"], grad_negative,
                                self.beta1),
            state["negative_momentum"])
        positive = group_scale_step(state["positive"], positive_momentum,
                                    learning_rate)
        negative = group_scale_step(state["negative"], negative_momentum,
                                    learning_rate)
        new_state = {
            "mean": self._rayleigh_mean * (positive - negative),
            "positive": positive,
            "negative": negative,
            "positive_momentum": positive_momentum,
            "negative_momentum": negative_momentum,
        }
        return new_state, None

    def _parts(self, state, variable, seed):
        positive = state["positive"] * self.noise_scale * self._draw(
            variable, seed)
        negative = state["negative"] * self.noise_scale * self._draw(
            variable, seed)
        return positive, negative

    def _update_variable(self, gradient, variable, learning_rate, finite):
        index = _keras_compat.variable_index(self, variable)
        dtype = variable.dtype
        sample = ops.convert_to_tensor(variable)
        state = self._read_state(index, sample)
        # Before the first step g± follow the variable, so weights loaded
        # after `build` count.
        first = self._before_first_update()
        positive, negative = self._initial_scales(sample)
        state["positive"] = ops.where(first, positive, state["positive"])
        state["negative"] = ops.where(first, negative, state["negative"])
        weight_decay, center = self._prior_terms(index, variable)
        new_state, _ = self._posterior_update(
            ops.cast(gradient, dtype), sample, state,
            ops.cast(learning_rate, dtype), weight_decay, center=center)
        positive_part, negative_part = self._parts(new_state, variable,
                                                   self._seed_generator)
        new_state["positive_part"] = positive_part
        new_state["negative_part"] = negative_part
        new_state, new_sample = keep_if_finite(
            finite, new_state, positive_part - negative_part, state, sample)
        for name, value in new_state.items():
            self.assign(self._state[name][index], value)
        self.assign(variable, new_sample)

    def _sample_tensors(self, mean_and_std, seed):
        seed = _generator(seed)
        samples = []
        for index, variable in enumerate(self._model_variables()):
            state = {name: ops.convert_to_tensor(slots[index])
                     for name, slots in self._state.items()}
            positive, negative = self._parts(state, variable, seed)
            samples.append(positive - negative)
        return samples

    def posterior_scales(self):
        """(g⁺, g⁻): two lists of NumPy arrays, one per variable."""
        self._check_built()
        return ([ops.convert_to_numpy(g) for g in self._state["positive"]],
                [ops.convert_to_numpy(g) for g in self._state["negative"]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "ess": self.ess,
            "beta1": self.beta1,
            "temperature": self.temperature,
            "init_offset": self.init_offset,
        })
        return config


GROUPS = {
    "additive": LieAdditive,
    "affine": LieAffine,
    "multiplicative": LieMultiplicative,
}


def lie_group_blr(learning_rate, group="affine", **kwargs):
    """The Lie-group Bayesian learning rule for the group named `group`.

    A factory, not a class: it returns an instance of `LieAdditive`
    (`group="additive"`), `LieAffine` (`"affine"`, the default) or
    `LieMultiplicative` (`"multiplicative"`), built with the other
    arguments, which are those of that class. The instance is what is saved
    and restored. `LieGroupBLR` is the same function.

    Args:
        learning_rate: the learning rate of the class chosen.
        group: `"additive"`, `"affine"` (default) or `"multiplicative"`.
        **kwargs: the other arguments of that class.

    Returns:
        A `LieAdditive`, `LieAffine` or `LieMultiplicative` instance.

    Example:

    >>> from keras_bayes.optimizers import lie_group_blr
    >>> optimizer = lie_group_blr(1.0, group="multiplicative", ess=1000,
    ...                           temperature=0.001)
    >>> type(optimizer).__name__
    'LieMultiplicative'
    """
    check_choice("group", group, GROUPS)
    return GROUPS[group](learning_rate, **kwargs)


#: The name `lie_group_blr` had first, kept so that existing code keeps
#: working; it is the same factory function, not a class (no `isinstance`).
LieGroupBLR = lie_group_blr
"""The earlier name of `lie_group_blr`: the same factory function."""


__all__ = ["LieAdditive", "LieAffine", "LieGroupBLR", "LieMultiplicative",
           "affine_phi", "lie_group_blr"]
