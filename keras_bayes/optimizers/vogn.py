"""VOGN: variational online Gauss-Newton (Osawa et al., 2019)."""

import re

import keras
import numpy as np
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes._validation import check_number
from keras_bayes.optimizers import base
from keras_bayes.posterior import Posterior
from keras_bayes.training.contract import PerExampleOptimizer


def vogn_momentum(momentum, gradient, mean, prior, beta1):
    """m ← β1·m + (ĝ + δ̃·μ)  (heavy-ball, as the paper's algorithm)."""
    return beta1 * momentum + gradient + prior * mean


def vogn_precision(precision, squared_gradient, temperature, rate):
    """s ← (1 − τ·(1−β2))·s + (1−β2)·ĥ, ĥ = mean_i g_i²."""
    return (1.0 - temperature * rate) * precision + rate * squared_gradient


def vogn_posterior_std(precision, prior, damping, ess):
    """σ = 1/sqrt(N·(s + δ̃ + γ))."""
    return ops.rsqrt(ess * (precision + prior + damping))


def only_where_bayesian(value, bayesian):
    """`value` on Bayesian weights (b = 1), 0 on deterministic ones (b = 0).

    A `where`, not a product: a deterministic weight's σ may be inf (s = 0
    with no prior and no damping), and inf·0 is NaN.
    """
    return ops.where(bayesian > 0.5, value, ops.zeros_like(value))


@keras.saving.register_keras_serializable(package="keras_bayes")
class VOGN(PerExampleOptimizer, base.PosteriorOptimizer):
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

    (the VOGN update with momentum of Osawa et al., 2019; docs/lie_group.md,
    "VOGN". N = `ess`, δ = `weight_decay` per example, τ = `temperature`,
    γ = `damping`.) ĥ needs per-example gradients, which a Keras optimizer
    does not receive: VOGN is a
    `keras_bayes.training.contract.PerExampleOptimizer`, trained through
    `keras_bayes.per_example.VOGNModel`, whose training step computes them
    with the backend's vectorizing map and hands ĥ over with
    `set_squared_gradients`. Used with a plain model, `apply` raises.

    **Deterministic weights** (the paper's BatchNorm treatment). Variables
    marked with `mark_deterministic` or matched by `deterministic_names`
    are point estimates: no noise (θ = μ always, σ reported as 0), no prior
    (δ̃ = 0) and no entropy term, and otherwise the same step with their own
    curvature, momentum and learning rate:

    ```
    m = β1·m + ĝ,   s = β2·s + (1−β2)·ĥ,   μ = μ − α·m / (s + γ),   θ = μ
    ```

    This is what the reference code does to BN's γ and β
    (`cybertronai/pytorch-sso` `torchsso/optim/secondorder.py` and
    `vi.py`, option `non_reg_for_bn=True` in every VOGN config of
    `team-approx-bayes/dl-with-bayes`): their group gets `l2_reg = 0`,
    hence `std_scale = 0` (the parameters are copied from the mean, never
    sampled), while the curvature (`curv_shapes` "BatchNorm2d": "Diag"),
    momentum, damping and learning rate are those of the other layers. It
    is neither plain SGD nor Adam. `VOGNModel` marks the γ, β of trainable
    BatchNormalization layers itself (see `keras_bayes.per_example` for how
    the per-example gradients of the other weights treat BN's batch
    statistics). `posterior()` leaves deterministic variables out.

    **The paper's recipes** (configs in `team-approx-bayes/dl-with-bayes`,
    `distributed/classification/configs/`; the paper has no ResNet-20 run:
    its CIFAR-10/100 ResNet is ResNet-18 with BatchNorm, `models/resnet_b.py`):

    * CIFAR-10 ResNet-18 (`cifar10/resnet18_vogn_bs256_8gpu.json`):
      8 processes × batch 32 (256), 161 epochs, α = 1e-4 divided by 10 at
      epochs 80 and 120, β1 = 0.9, prior variance 0.02, damping γ = 1e-3,
      curvature `ema_decay` 0.999, N = 10 × 50 000 (random crop + flip),
      τ = 1 (`kl_weighting`), 5 MC samples per process and step (each
      process its own sample, `num_mc_groups` 8), 20 MC samples for
      validation, BN without prior or noise.
    * ImageNet ResNet-18 (`imagenet/resnet18_vogn_bs4k_128gpu.json`):
      128 × 32 (4096), 91 epochs, α = 1.6e-3 with 5 warm-up epochs and ×0.1
      at 30, 60, 80, β1 = 0.9, prior variance 7.5e-3, γ = 1e-4,
      `ema_decay` 0.9, N = 5 × the training set, 1 MC sample per process,
      10 for validation, BN without prior or noise.

    Translating to the arguments here: pytorch-sso's `ema_decay` is the
    weight of the *new* ĥ (`ema = ema_decay·ĥ + (1 − ema_decay)·ema`), so
    `ema_decay` 0.999 is `beta2=0.001` and 0.9 is `beta2=0.1`; its L2 term
    is `kl_weighting/(N·prior_variance)` on the mean-loss gradient, so
    `weight_decay` = 1/(N·prior variance): 1/(5e5·0.02) = 1e-4 for CIFAR-10
    and 1/(6.4e6·7.5e-3) ≈ 2.1e-5 for ImageNet. The reference starts s at
    the first ĥ (no `init_precision`) and takes its first gradient at the
    mean; its momentum and damping match β1 and γ here. The defaults here
    are a small-scale starting point, not a published recipe.

    Example (softmax regression on scikit-learn's digits):

    >>> import keras
    >>> from sklearn.datasets import load_digits
    >>> from keras_bayes.optimizers import VOGN
    >>> from keras_bayes.per_example import VOGNModel
    >>> x, y = load_digits(return_X_y=True)
    >>> x = (x / 16.0).astype("float32")
    >>> model = VOGNModel(
    ...     keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]))
    >>> x, y = x[:256], y[:256]  # a small part, to run fast
    >>> model.compile(
    ...     optimizer=VOGN(0.05, ess=len(x), beta2=0.99),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    >>> std = model.optimizer.posterior_std()  # one array per variable

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
        deterministic_names: list of regular expressions or None. Variables
            whose `path` matches one (`re.search`) are deterministic (see
            above), e.g. `["batch_normalization"]`. Saved in the config;
            `mark_deterministic` adds variables or names later.
        seed: int or None, the seed of the posterior noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        nonfinite_gradients: `"skip"` (default) or `"raise"`, see
            `PosteriorOptimizer`.
        no_decay_names: regular expressions or None, variables without a
            prior (δ = 0), see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor` and `name`. `use_ema` and
            `gradient_accumulation_steps` are rejected.

    Reference:
        Osawa et al., "Practical Deep Learning with Bayesian Principles",
        NeurIPS 2019, arXiv:1906.02506.
    """

    # "bayesian": 1 on weights with a posterior, 0 on deterministic ones. A
    # slot (not a Python set) so that every update path of the base class,
    # fused or per variable, handles both kinds, and so that it is saved.
    state_names = ("mean", "precision", "momentum", "squared_gradient",
                   "bayesian")

    def __init__(self, learning_rate, ess, beta1=0.9, beta2=0.999,
                 temperature=1.0, damping=1e-4, precision_init=1.0,
                 weight_decay=1e-4, deterministic_names=None, seed=None,
                 name=None, **kwargs):
        ess = check_number("ess", ess, low=0.0, low_open=True)
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        beta2 = check_number("beta2", beta2, low=0.0, high=1.0,
                             high_open=True)
        temperature = check_number("temperature", temperature, low=0.0)
        damping = check_number("damping", damping, low=0.0)
        precision_init = check_number("precision_init", precision_init,
                                      low=0.0)
        deterministic_names = _check_patterns(deterministic_names)
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
        self.deterministic_names = deterministic_names
        self._deterministic_keys = set()

    def _state_initializer(self, name, variable):
        if name == "precision":
            return keras.initializers.Constant(self.precision_init)
        if name == "bayesian":
            return keras.initializers.Constant(
                0.0 if self._is_deterministic(variable) else 1.0)
        if name == "mean":
            return super()._state_initializer(name, variable)
        return "zeros"

    # ------------------------------------------------------------------
    # Deterministic variables.

    def _is_deterministic(self, variable):
        if (_keras_compat.variable_key(self, variable)
                in self._deterministic_keys):
            return True
        return any(re.search(pattern, variable.path)
                   for pattern in self.deterministic_names)

    def mark_deterministic(self, var_list=None, var_names=None):
        """Keep these variables deterministic: no noise, no prior.

        Like Keras' `exclude_from_weight_decay`, but it may also be called
        after `build` and inside a training step (`VOGNModel` calls it in
        every step for BatchNorm's γ and β): the `bayesian` slots of the
        matching variables are then set to 0.

        Args:
            var_list: variables to keep deterministic.
            var_names: regular expressions; variables whose `path` matches
                one are deterministic. Added to `deterministic_names`.
        """
        if var_list:
            self._deterministic_keys.update(
                _keras_compat.variable_key(self, v) for v in var_list)
        if var_names:
            self.deterministic_names = (self.deterministic_names + [
                p for p in _check_patterns(var_names)
                if p not in self.deterministic_names])
        if not self.built:
            return
        for index, variable in enumerate(self._model_variables()):
            if self._is_deterministic(variable):
                slot = self._state["bayesian"][index]
                self.assign(slot, ops.zeros(tuple(slot.shape), slot.dtype))

    def _deterministic_indices(self):
        """Indices of the variables whose `bayesian` slot is 0 (eager)."""
        return {index for index, slot in enumerate(self._state["bayesian"])
                if not np.any(ops.convert_to_numpy(slot) > 0.5)}

    # ------------------------------------------------------------------
    # Per-example curvature.

    def set_squared_gradients(self, squared_gradients,
                              trainable_variables=None):
        """Store ĥ = mean_i g_i² for the next `apply` (one per variable)."""
        variables = (list(trainable_variables) if trainable_variables
                     is not None
                     else _keras_compat.optimizer_variables_built_for(self))
        if not self.built:
            self.build(variables)
        # Called before `apply`: refuse another model's variables here too.
        self._check_fit_model()
        # A bad gradient skips the step (`nonfinite_gradients`); the old ĥ
        # is kept too, so a skipped step leaves no NaN in the state.
        finite = base.all_finite(squared_gradients)
        for value, variable in zip(squared_gradients, variables):
            index = _keras_compat.variable_index(self, variable)
            slot = self._state["squared_gradient"][index]
            self.assign(slot, ops.where(finite, ops.cast(value, slot.dtype),
                                        ops.convert_to_tensor(slot)))

    # ------------------------------------------------------------------
    # The update.

    def _prior(self, weight_decay, bayesian):
        """δ̃ = τ·δ on Bayesian weights, 0 on deterministic ones."""
        return bayesian * (self.temperature * weight_decay)

    def _posterior_std(self, state, weight_decay):
        bayesian = state["bayesian"]
        std = vogn_posterior_std(state["precision"],
                                 self._prior(weight_decay, bayesian),
                                 self.damping, self.ess)
        return only_where_bayesian(std, bayesian)

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        bayesian = state["bayesian"]
        prior = self._prior(weight_decay, bayesian)
        # A deterministic weight has no entropy term to temper: its s is a
        # plain running average, as pytorch-sso's curvature EMA.
        temperature = bayesian * self.temperature + (1.0 - bayesian)
        mean = state["mean"]
        momentum = vogn_momentum(state["momentum"], gradient, mean, prior,
                                 self.beta1)
        precision = vogn_precision(state["precision"],
                                   state["squared_gradient"],
                                   temperature, 1.0 - self.beta2)
        new_mean = mean - learning_rate * momentum / (
            precision + prior + self.damping)
        new_state = {"mean": new_mean, "precision": precision,
                     "momentum": momentum}
        std = vogn_posterior_std(precision, prior, self.damping, self.ess)
        return new_state, only_where_bayesian(std, bayesian)

    # ------------------------------------------------------------------
    # Posterior API.

    def posterior(self):
        """The posterior of the Bayesian variables as a `Posterior`.

        Deterministic variables have no posterior and are left out; as the
        `prior=` of a next task they fall back to the weight-decay prior
        (and, if still deterministic there, to no prior).
        """
        self._check_built()
        skipped = self._deterministic_indices()
        means, precisions, paths = [], [], []
        for index, ((mean, std), variable) in enumerate(zip(
                self._mean_and_std_tensors(), self._model_variables())):
            if index in skipped:
                continue
            means.append(ops.convert_to_numpy(mean))
            precisions.append(1.0 / np.square(ops.convert_to_numpy(std)))
            paths.append(variable.path)
        return Posterior(means, precisions, paths)

    def get_config(self):
        config = super().get_config()
        config.update({
            "ess": self.ess,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "temperature": self.temperature,
            "damping": self.damping,
            "precision_init": self.precision_init,
            "deterministic_names": list(self.deterministic_names),
        })
        return config


def _check_patterns(names):
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise ValueError(
                "`deterministic_names` must be a list of strings (regular "
                f"expressions). Received an entry {name!r}")
        re.compile(name)
    return names


__all__ = ["VOGN"]
