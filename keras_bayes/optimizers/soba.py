"""SOBA: second-order optimization via Bayes (published as IVON)."""

import math
import warnings

import keras
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes._validation import check_choice
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers import base
from keras_bayes.training.contract import MultiPassOptimizer
from keras_bayes.training.contract import StepPlan
from keras_bayes.training.contract import mean_gradients


def price_hessian_estimate(gradient, perturbation, hessian, weight_decay,
                           ess):
    """Price/Stein estimate of the diagonal Hessian of the mean loss.

    For θ = m + ε with ε ~ N(0, σ²), E[∇²ℓ̄] = E[ε·∇ℓ̄(θ)] / σ², and
    1/σ² = ess·(h + δ) is the precision the sample was drawn with.
    """
    return ess * (hessian + weight_decay) * perturbation * gradient


def gradsq_hessian_estimate(gradient, ess):
    """The squared-gradient surrogate (ivon-opt's `gradsq`, ess included)."""
    return ess * ops.square(gradient)


def iblr_hessian_update(hessian, estimate, weight_decay, beta2):
    """The improved-BLR step of the Hessian, which keeps h + δ > 0.

    h ← β2·h + (1−β2)·ĥ + ½(1−β2)²·(h − ĥ)² / (h + δ)

    (Lin, Schmidt & Khan, 2020): h + δ stays positive for any sign of ĥ.
    """
    rate = 1.0 - beta2
    return (
        beta2 * hessian
        + rate * estimate
        + 0.5 * rate**2 * ops.square(hessian - estimate)
        / (hessian + weight_decay)
    )


def gaussian_posterior_std(hessian, weight_decay, ess):
    """σ = 1 / sqrt(ess·(h + δ))."""
    return ops.rsqrt(ess * (hessian + weight_decay))


@keras.saving.register_keras_serializable(package="keras_bayes")
class SOBA(MultiPassOptimizer, base.PosteriorOptimizer):
    """SOBA: variational learning of a diagonal Gaussian posterior.

    SOBA ("second-order optimization via Bayes") is the improved variational
    online Newton method, published as IVON (Shen et al., 2024). It fits
    q(θ) = N(m, diag(σ²)) with σ² = 1 / (λ·(h + δ)), where λ is `ess`, h
    a running estimate of the diagonal Hessian of the mean training loss and
    δ = `weight_decay` the prior precision per example (the prior is
    N(0, 1/(λδ))). Each step costs one forward/backward pass, at a sample
    θ = m + ε, ε ~ N(0, σ²), like an Adam step:

    ```
    g     = ∇ℓ̄(θ)                                  # the minibatch gradient
    ĥ     = λ·(h + δ)·ε·g                            # 'price' (or λ·g²)
    g_mom = β1·g_mom + (1−β1)·g
    h     = β2·h + (1−β2)·ĥ + ½(1−β2)²·(h − ĥ)²/(h + δ)
    m     = m − α·(h0 + δ)·clip((g_mom/(1−β1^t) + δ·m)/(h + δ), ±ξ)
    θ     = m + ε',  ε' ~ N(0, 1/(λ·(h + δ)))       # the next sample
    ```

    The Hessian is updated before the mean and the mean step uses the new h,
    as in the official `ivon-opt` package; the factor (h0 + δ) is its
    `rescale_lr`, which makes the first step an SGD step with learning rate
    α; only the momentum is debiased. A coordinate whose sample equals its
    mean exactly (the first step of a `fit`, whose gradient is taken at the
    weights as they are, and the first step after the mean was written back)
    carries no curvature information, so its h is kept for that step.

    Between steps the model's variables hold the sample θ and this optimizer
    holds m, h and g_mom; at the end of `fit` the variables receive m. See
    `keras_bayes.optimizers.PosteriorOptimizer` for the posterior API
    (`posterior_mean`, `posterior_std`, `sampled_weights`, `mean_weights`).

    Setting the hyperparameters: `ess` is the training-set size (times the
    data-augmentation factor), by default read from `fit`'s data (below);
    `learning_rate` is on an SGD scale but can be pushed higher; `hess_init`
    between 0.01 and 1 (too small gives noisy, unstable samples, too large a
    near-deterministic network); `beta2` must stay close to 1. The CIFAR-10
    ResNet-20 recipe of the paper: α = 0.2, h0 = 0.5, δ = 2e-4, β1 = 0.9,
    β2 = 0.99999, λ = 50 000, batch 50, warmup then cosine decay.

    `beta2` and the length of the run: h moves from `hess_init` towards the
    loss's curvature with time constant 1/(1−β2) steps (1−β2^t of the way
    after t steps): 100 000 steps for the default 0.99999, which suits runs
    of tens of thousands of steps or more. In a shorter run h, and with it
    σ = 1/sqrt(λ·(h + δ)), stays near its initial value, so σ reflects
    `hess_init` rather than the data; take β2 ≈ 1 − 10/steps (e.g. 0.999
    for 10 000 steps) to let it move, or read the posterior as a prior-like
    one. `fit` warns at its end when h has gone less than 10 % of the way
    (1 − β2^t < 0.1 after t steps in all, about t < 0.1/(1−β2)).

    `ess=None` (the default): Keras never hands the data to an optimizer,
    but `model.fit` knows its size. When this optimizer is built (by `fit`,
    before the first step) or first steps, it reads the number of training
    examples per epoch from the running `fit`'s data adapter (batches ×
    batch size, the last batch partial; after `validation_split`) and
    stores it as `ess`; it is then part of the config, so a saved and
    reloaded optimizer keeps it. This works for NumPy arrays, tensors,
    `tf.data` datasets of known cardinality, sized `PyDataset`s and torch
    `DataLoader`s, on every backend. It cannot work for a generator or a
    dataset of unknown size, nor outside `fit` (`train_on_batch`, a custom
    loop); there the first step raises a `ValueError` that asks for
    `ess=len(x_train)`. It reads the size once: a later `fit` on more data
    keeps the first `ess`. A given `ess` that differs from `fit`'s examples
    per epoch by more than 10x warns. Augmented data: pass `ess` = examples
    × augmentation factor yourself.

    Example (logistic regression on scikit-learn's digits; 20 epochs reach
    about 0.95 held-out accuracy, 2 are run here):

    >>> import keras, keras_bayes
    >>> from sklearn.datasets import load_digits
    >>> x, y = load_digits(return_X_y=True)
    >>> x = (x / 16.0).astype("float32")
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    >>> model.compile(
    ...     optimizer=keras_bayes.optimizers.SOBA(),
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"])
    >>> history = model.fit(x[:1400], y[:1400], epochs=2, batch_size=128,
    ...                     verbose=0)
    >>> model.optimizer.ess
    1400.0
    >>> std = model.optimizer.posterior_std()  # one array per variable

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable.
            Defaults to 0.2, the paper's CIFAR-10 value: with `rescale_lr`
            the first step is an SGD step of this size. It trains logistic
            regression on digits (a random 80/20 split, batch 32, 20 epochs)
            to about 0.95 test accuracy on every backend; 0.1 trains more
            slowly (0.89 on the harder last-600-digits split, against 0.91
            for 0.2).
        ess: float > 0 or None, the effective sample size λ (the
            training-set size). Defaults to None: the training examples per
            epoch of the first `fit`, see above.
        hess_init: float > 0, the initial Hessian h0. Defaults to 1.0.
        beta1: float in [0, 1), the momentum rate. Defaults to 0.9.
        beta2: float in (0, 1], the Hessian rate. Defaults to 0.99999.
        weight_decay: float >= 0, the prior precision δ. Unlike Keras'
            decoupled `weight_decay` it enters the update at the mean and sets
            the prior. `exclude_from_weight_decay` gives δ = 0 to variables.
            Defaults to 1e-4.
        mc_samples: int, S, posterior samples per step, each one
            forward/backward pass on the same minibatch. With S > 1 the
            model must be wrapped in `keras_bayes.training.TwoPassModel`
            (which takes the first sample from the model's variables and
            draws S − 1 more), `g` above is the mean gradient over the
            samples and ĥ uses mean_k(ε_k·g_k) (for `gradsq`, the mean
            g_k²), as in ivon-opt. A coordinate's samples equal to the mean
            are left out of that mean. Defaults to 1.
        hess_approx: `"price"` (default, the paper's estimator) or
            `"gradsq"` (λ·g², experimental: it estimates a squared mean
            gradient, not the Hessian).
        clip_radius: float > 0 or `inf`, an elementwise clip of the
            preconditioned step ξ. Defaults to `inf` (no clipping).
        rescale_lr: bool, multiply the learning rate by (h0 + δ).
            Defaults to True.
        debias: bool, debias the momentum. Defaults to True.
        seed: int or None, the seed of the posterior noise. Set it for
            reproducible runs and for multi-process training.
        prior: None or a `keras_bayes.Posterior`, typically
            `optimizer.posterior()` of an earlier task (continual learning).
            It replaces the isotropic prior N(0, 1/(λδ)) by
            N(m₀, diag(1/(τ·P₀))). Derivation: the objective per example is
            E_q[ℓ̄(θ)] + KL(q ‖ prior)/λ, whose prior part has gradient
            (τ·P₀/λ)·(m − m₀) in m and curvature τ·P₀/λ; so δ becomes the
            vector δ₀ = τ·P₀/λ everywhere it appears above (the Hessian
            update, σ, and the mean step, whose prior term becomes
            δ₀·(m − m₀)), except in `rescale_lr`, which keeps the scalar
            `weight_decay`. The new posterior precision λ·(h + δ₀) =
            λ·h + τ·P₀ adds this task's curvature to the old precision.
            Variables the prior does not match keep the δ prior. See
            `PosteriorOptimizer`.
        prior_strength: float > 0, τ. Defaults to 1 (exact sequential
            updating).
        nonfinite_gradients: `"skip"` (default) or `"raise"`: a step with
            a NaN or Inf gradient leaves the posterior unchanged and is
            counted in `nonfinite_steps`, or raises. See
            `PosteriorOptimizer`.
        fused_update: bool or None, on a single device update all
            variables in one flat pass with one noise draw. Defaults to
            None: on torch True for models of many small variables, else
            False; see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`,
            `loss_scale_factor`, `gradient_accumulation_steps` and `name`,
            as for every `keras.optimizers.Optimizer`. `use_ema` is
            rejected (the variables hold samples between steps).

    Reference:
        Shen et al., "Variational Learning is Effective for Large Deep
        Networks", ICML 2024, arXiv:2402.17641.
    """

    state_names = ("mean", "hessian", "momentum")

    def __init__(
        self,
        learning_rate=0.2,
        ess=None,
        hess_init=1.0,
        beta1=0.9,
        beta2=0.99999,
        weight_decay=1e-4,
        mc_samples=1,
        hess_approx="price",
        clip_radius=math.inf,
        rescale_lr=True,
        debias=True,
        seed=None,
        name=None,
        **kwargs,
    ):
        if ess is not None:
            ess = check_number("ess", ess, low=0.0, low_open=True)
        hess_init = check_number(
            "hess_init", hess_init, low=0.0, low_open=True
        )
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        beta2 = check_number("beta2", beta2, low=0.0, high=1.0,
                             low_open=True)
        check_choice("hess_approx", hess_approx, ("price", "gradsq"))
        clip_radius = math.inf if clip_radius is None else clip_radius
        clip_radius = check_number(
            "clip_radius", clip_radius, low=0.0, low_open=True, allow_inf=True
        )
        mc_samples = check_positive_integer("mc_samples", mc_samples)
        steps = kwargs.get("gradient_accumulation_steps")
        if mc_samples > 1 and steps not in (None, 1):
            raise ValueError(
                "`gradient_accumulation_steps` cannot be combined with "
                "`mc_samples` > 1: the curvature statistic of the samples is "
                "per step. Received: gradient_accumulation_steps="
                f"{steps!r}, mc_samples={mc_samples}"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            seed=seed,
            name=name,
            **kwargs,
        )
        self.ess = ess
        self.hess_init = hess_init
        self.beta1 = beta1
        self.beta2 = beta2
        self.mc_samples = mc_samples
        self.hess_approx = hess_approx
        self.clip_radius = clip_radius
        self.rescale_lr = bool(rescale_lr)
        self.debias = bool(debias)

    def build(self, var_list):
        if self.built:
            return
        # `fit` builds the optimizer before its first step; the prior's
        # slots need λ already.
        self._resolve_ess(required=self.prior is not None)
        super().build(var_list)
        if self.mc_samples > 1:
            # mean_k(ε_k·g_k) (or mean_k g_k²) of the step's samples, written
            # by `combine_passes` and read by the update; in `_state` so
            # both update paths see it, never returned by the update.
            self._state["sample_statistic"] = [
                self.add_variable_from_reference(
                    v, name="soba_sample_statistic", initializer="zeros")
                for v in var_list
            ]

    def _resolve_ess(self, required):
        """Set `ess=None` to the examples per epoch of the running `fit`;
        warn when a given `ess` is an order of magnitude off them."""
        examples = _keras_compat.fit_examples_per_epoch()
        if self.ess is None:
            if examples is None:
                if required:
                    raise ValueError(_UNKNOWN_ESS_MESSAGE)
                return
            self.ess = float(examples)
        elif examples is not None and not (
                examples / ESS_MISMATCH_FACTOR <= self.ess
                <= examples * ESS_MISMATCH_FACTOR):
            warnings.warn(
                f"SOBA's `ess` ({self.ess:g}) differs from the number of "
                f"training examples per epoch ({examples}) by more than "
                f"{ESS_MISMATCH_FACTOR:g}x. `ess` is the training-set size "
                "(times the augmentation factor): too small a value gives "
                "a posterior too wide to train (σ ∝ 1/sqrt(ess)), too large "
                "one a near-deterministic network. Pass "
                f"ess={examples} (or leave `ess=None`), unless the mismatch "
                "is deliberate.", stacklevel=3)

    def _resolved_ess(self):
        if self.ess is None:
            raise ValueError(_UNKNOWN_ESS_MESSAGE)
        return self.ess

    def apply(self, grads, trainable_variables=None):
        if self.ess is None:
            self._resolve_ess(required=True)
        return super().apply(grads, trainable_variables)

    def _report_fit(self, steps, skipped):
        super()._report_fit(steps, skipped)
        total = int(ops.convert_to_numpy(self.iterations))
        moved = 1.0 - self.beta2 ** total
        if total and moved < HESSIAN_MOVED_AT_LEAST:
            warnings.warn(
                f"SOBA ran {total} steps with beta2={self.beta2:g}: the "
                "Hessian moves from `hess_init` with time constant "
                f"1/(1-beta2) = {1.0 / (1.0 - self.beta2):.0f} steps, so it "
                f"has gone {moved:.1%} of the way and the posterior std "
                "still reflects `hess_init`, not the data. For a run of "
                f"this length take beta2 <= {max(1.0 - 10.0 / total, 0.5):.6g} "
                "(about 1 - 10/steps), or train longer.", stacklevel=3)

    def step_plan(self):
        return StepPlan(samples=self.mc_samples)

    # The samples after the first are fresh posterior samples.
    draw_training_point = base.PosteriorOptimizer.draw_training_point

    def outside_step_message(self):
        return (
            f"SOBA with mc_samples={self.mc_samples} takes several "
            "gradients on the same minibatch, which a plain Keras model "
            "cannot provide. Wrap the model: `model = keras_bayes."
            "training.TwoPassModel(model)`, then `model.compile(...)` "
            "and `model.fit(...)`; or use mc_samples=1."
        )

    def combine_passes(self, records, context):
        """Writes the samples' curvature statistic; returns the mean g."""
        # A bad gradient skips the whole step: keep the old statistic too.
        # (Unscaling by a finite scale cannot change finiteness.)
        finite = base.all_finite([r.grads for r in records])
        for position, variable in enumerate(context.variables):
            index = _keras_compat.variable_index(self, variable)
            sample = ops.convert_to_tensor(variable)
            mean = self._current_mean(self._state["mean"][index], sample)
            total = ops.zeros(tuple(variable.shape), variable.dtype)
            count = ops.zeros(tuple(variable.shape), variable.dtype)
            for record in records:
                gradient = context.unscale(record.grads)[position]
                if gradient is None:
                    gradient = ops.zeros(tuple(variable.shape),
                                         variable.dtype)
                gradient = ops.cast(gradient, variable.dtype)
                if self.hess_approx == "gradsq":
                    total = total + ops.square(gradient)
                    count = count + 1.0
                    continue
                point = (sample if record.point is None
                         else record.point[position])
                perturbation = point - mean
                total = total + perturbation * gradient
                count = count + ops.cast(
                    ops.not_equal(perturbation, 0.0), variable.dtype)
            slot = self._state["sample_statistic"][index]
            self.assign(slot, ops.where(
                finite, total / ops.maximum(count, 1.0),
                ops.convert_to_tensor(slot)))
        return mean_gradients([r.grads for r in records])

    def _state_initializer(self, name, variable):
        if name == "hessian":
            return keras.initializers.Constant(self.hess_init)
        return super()._state_initializer(name, variable)

    def _posterior_std(self, state, weight_decay):
        return gaussian_posterior_std(state["hessian"], weight_decay,
                                      self._resolved_ess())

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        mean, hessian, momentum = (
            state["mean"], state["hessian"], state["momentum"]
        )
        step = ops.cast(self.iterations + 1, gradient.dtype)
        perturbation = sample - mean

        if self.mc_samples > 1:
            # mean_k(ε_k·g_k) or mean_k g_k², from `combine_passes`.
            statistic = state["sample_statistic"]
            if self.hess_approx == "price":
                estimate = price_hessian_estimate(
                    statistic, 1.0, hessian, weight_decay, self.ess)
            else:
                estimate = self.ess * statistic
            new_hessian = iblr_hessian_update(
                hessian, estimate, weight_decay, self.beta2
            )
        elif self.hess_approx == "price":
            estimate = price_hessian_estimate(
                gradient, perturbation, hessian, weight_decay, self.ess
            )
            new_hessian = iblr_hessian_update(
                hessian, estimate, weight_decay, self.beta2
            )
            # A sample equal to the mean carries no curvature information.
            new_hessian = ops.where(
                ops.equal(perturbation, 0.0), hessian, new_hessian
            )
        else:
            estimate = gradsq_hessian_estimate(gradient, self.ess)
            new_hessian = iblr_hessian_update(
                hessian, estimate, weight_decay, self.beta2
            )

        new_momentum = self.beta1 * momentum + (1.0 - self.beta1) * gradient
        direction = new_momentum
        if self.debias:
            direction = direction / (1.0 - ops.power(self.beta1, step))
        direction = (direction + weight_decay * mean) / (
            new_hessian + weight_decay
        )
        if math.isfinite(self.clip_radius):
            direction = ops.clip(direction, -self.clip_radius,
                                 self.clip_radius)
        if self.rescale_lr:
            # A prior makes δ vary per weight (see `prior`); the step size
            # keeps the scalar δ, so a sharp prior cannot inflate it.
            rescale_delta = (
                self.weight_decay if self._prior_slots is not None
                else weight_decay
            )
            learning_rate = learning_rate * (self.hess_init + rescale_delta)
        new_mean = mean - learning_rate * direction

        new_state = {
            "mean": new_mean,
            "hessian": new_hessian,
            "momentum": new_momentum,
        }
        std = gaussian_posterior_std(new_hessian, weight_decay, self.ess)
        return new_state, std

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "ess": self.ess,
                "hess_init": self.hess_init,
                "beta1": self.beta1,
                "beta2": self.beta2,
                "mc_samples": self.mc_samples,
                "hess_approx": self.hess_approx,
                "clip_radius": self.clip_radius,
                "rescale_lr": self.rescale_lr,
                "debias": self.debias,
            }
        )
        return config


# `fit` warns when the Hessian has gone less than this fraction of the way
# from `hess_init` (1 − β2^t after t steps).
HESSIAN_MOVED_AT_LEAST = 0.1

# A given `ess` further than this factor from the examples per epoch warns.
ESS_MISMATCH_FACTOR = 10.0

_UNKNOWN_ESS_MESSAGE = (
    "SOBA(ess=None) takes `ess` from the training data, whose size is not "
    "known here: `model.fit` on a generator or a dataset of unknown "
    "cardinality, `train_on_batch`, or a custom training loop. Pass the "
    "training-set size explicitly: `SOBA(ess=len(x_train))` (times the "
    "data-augmentation factor, if any). Received: ess=None")

# IVON is the published name of the same optimizer.
IVON = SOBA
"""`IVON`, the published name of this optimizer: the same class as `SOBA`."""
