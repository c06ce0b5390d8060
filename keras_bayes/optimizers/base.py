"""Shared machinery for optimizers whose state is a posterior over the weights.

The optimizers of this package learn a distribution q(θ) over the weights
instead of a single point. The distribution lives in the optimizer's slots
(its mean and a scale or precision per weight), so it is saved with the model
and restored by `keras.models.load_model`.

During `fit`, the model's variables hold a *sample* θ ~ q, so the ordinary
Keras training step computes the gradient at a posterior sample with one
forward/backward pass. `update_step` reads that sample back, updates the
posterior, and writes the next sample into the variables. At the end of `fit`
(`finalize_variable_values`) the variables receive the posterior mean, so
`evaluate`, `predict` and `save` after `fit` see the mean. During `fit`,
`keras_bayes.callbacks.SwapMeanWeights` makes validation run at the mean.

Keras private API used here (present in Keras 3.15, the minimum version pinned
in `pyproject.toml`): `BaseOptimizer._track_variable`,
`_get_variable_index`, `_use_weight_decay`, `_apply_weight_decay`,
`_backend_update_step` and `_trainable_variables`.
"""

import contextlib
import math
import os
import numbers

import keras
import numpy as np
from keras import ops

from keras_bayes.posterior import Posterior
from keras_bayes.posterior import PriorSpec


def check_number(name, value, low=None, high=None, low_open=False,
                 high_open=False, allow_inf=False):
    """Raise a `ValueError` naming `name` unless `value` lies in the range.

    Returns the value as a Python float.
    """
    def describe():
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else repr(low)
        hi = "inf" if high is None else repr(high)
        return f"{left}{lo}, {hi}{right}"

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a real number in {describe()}. "
            f"Received: {name}={value!r}"
        )
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(
            f"`{name}` must be a finite number in {describe()}. "
            f"Received: {name}={value!r}"
        )
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (
        value >= high if high_open else value > high
    )
    if too_low or too_high:
        raise ValueError(
            f"`{name}` must be in {describe()}. Received: {name}={value!r}"
        )
    return value


def check_positive_integer(name, value):
    """Raise a `ValueError` naming `name` unless `value` is an int >= 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. "
            f"Received: {name}={value!r}"
        )
    return value


def check_learning_rate(learning_rate):
    """Numbers must be >= 0; schedules and callables pass through."""
    if isinstance(learning_rate, numbers.Real):
        check_number("learning_rate", learning_rate, low=0.0)
    return learning_rate


def _size(variable):
    return int(np.prod(tuple(variable.shape), dtype=np.int64))


def _flatten(tensors):
    return ops.concatenate(
        [ops.reshape(ops.convert_to_tensor(t), (-1,)) for t in tensors], 0
    )


def _single_device():
    """True unless a tf.distribute strategy or keras.distribution is set."""
    if keras.distribution.distribution() is not None:
        return False
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return not tf.distribute.has_strategy()
    return True


NONFINITE_CHOICES = ("skip", "raise")


def all_finite(grads):
    """A boolean scalar: every entry of every (non-None) gradient is finite.

    `grads` may be nested (e.g. one gradient list per pass of a step).
    """
    checks = [ops.all(ops.isfinite(g)) for g in keras.tree.flatten(grads)
              if g is not None]
    if not checks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(checks))


def _agree_across_replicas(finite):
    """On a tf.distribute replica, False if any replica saw a bad gradient.

    Keras all-reduces the gradients after this check runs, so one replica's
    NaN reaches every replica's update: every replica must skip.
    """
    if keras.backend.backend() != "tensorflow":
        return finite
    import tensorflow as tf

    if (not tf.distribute.has_strategy()
            or tf.distribute.in_cross_replica_context()):
        return finite
    bad = ops.cast(ops.logical_not(finite), "float32")
    bad = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, bad)
    return ops.equal(bad, 0.0)


def _raise_unless(finite, message):
    """Raise FloatingPointError from inside a (compiled) step if not finite.

    The update has already been skipped when this runs, so the posterior is
    intact whichever backend raises and however late.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        # One host sync per step; only in the opt-in "raise" mode.
        if not bool(finite):
            raise FloatingPointError(message)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.debugging.Assert(finite, [message])
    elif backend == "jax":
        import jax

        if isinstance(finite, jax.core.Tracer):
            # An error raised while a jitted step runs leaves the model and
            # optimizer state donated to it deleted: the posterior would be
            # lost, which is what this option exists to prevent.
            raise ValueError(
                "nonfinite_gradients='raise' cannot raise from inside a "
                "compiled JAX training step without losing the training "
                "state. Use nonfinite_gradients='skip' (and read "
                "`optimizer.nonfinite_steps`), or `run_eagerly=True`.")
        if not bool(finite):
            raise FloatingPointError(message)


def _as_prior(prior):
    if prior is None or isinstance(prior, (Posterior, PriorSpec)):
        return prior
    if isinstance(prior, dict):
        return PriorSpec(**prior)
    if isinstance(prior, str):
        if not (prior.endswith(".npz") and os.path.isfile(prior)):
            raise ValueError(
                "`prior` given as a path must name an existing .npz file "
                f"written by `Posterior.save`. Received: prior={prior!r}"
            )
        return Posterior.load(prior)
    raise ValueError(
        "`prior` must be a keras_bayes.Posterior (e.g. "
        "`optimizer.posterior()` of an earlier task), the path of a "
        f"Posterior saved as .npz, or None. Received: prior={prior!r}"
    )


def centred_update(update, center, gradient, sample, state, learning_rate,
                   weight_decay):
    """`update` with the prior centred on `center` instead of 0.

    Every keras_bayes update is equivariant under a shift of the weights
    except for its prior term δ·m; running it on θ − c and m − c and shifting
    the new mean back turns that term into δ·(m − c), the gradient of the
    prior N(c, 1/(λδ)), and leaves the rest unchanged.
    """
    if center is None:
        return update(gradient, sample, state, learning_rate, weight_decay)
    state = dict(state)
    state["mean"] = state["mean"] - center
    new_state, std = update(gradient, sample - center, state, learning_rate,
                            weight_decay)
    new_state = dict(new_state)
    new_state["mean"] = new_state["mean"] + center
    return new_state, std


def mean_gradients(gradient_lists):
    """The elementwise mean of several gradient lists (None stays None)."""
    out = []
    for grads in zip(*gradient_lists):
        present = [g for g in grads if g is not None]
        if not present:
            out.append(None)
            continue
        total = present[0]
        for g in present[1:]:
            total = total + g
        out.append(total / float(len(grads)))
    return out


class PassStepContext:
    """The flag `keras_bayes.training.TwoPassModel` sets around its step.

    Optimizers that need more than the one gradient Keras' own training step
    gives (SAM, bSAM, SOBA with `mc_samples` > 1) refuse `apply` outside
    `two_pass_step()`, so that without the wrapper they raise instead of
    silently training something else.
    """

    _two_pass_active = False

    @contextlib.contextmanager
    def two_pass_step(self):
        """Context in which `apply` is allowed (entered by `TwoPassModel`).

        It is a Python flag, set while the training step is traced or run.
        Enter it yourself only if you write your own multi-pass step.
        """
        previous = self._two_pass_active
        self._two_pass_active = True
        try:
            yield
        finally:
            self._two_pass_active = previous


def unwrap_optimizer(optimizer):
    """The keras_bayes optimizer inside a `LossScaleOptimizer`, or None."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if isinstance(optimizer, PosteriorOptimizer) else None


class PosteriorOptimizer(keras.optimizers.Optimizer):
    """Base class for keras_bayes optimizers that hold a posterior.

    A subclass names its per-weight state in `state_names` (the first entry is
    always `"mean"`), creates the non-mean slots in `_init_state` and
    implements two pure functions of tensors:

    - `_posterior_update(gradient, sample, state, learning_rate,
      weight_decay)` returns the new state (a dict) and the standard
      deviation used to draw the next sample;
    - `_posterior_std(state, weight_decay)` returns the standard deviation
      of the current posterior.

    Everything Keras-facing lives here: slot bookkeeping, the lazy
    initialisation of the mean, drawing the next sample, writing the mean back
    at the end of `fit`, the public posterior API, and a fused update path on
    the torch backend that runs the same `_posterior_update` once over all
    weights instead of once per variable.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable.
        weight_decay: float >= 0. The prior precision δ per example; it acts
            inside the update (a coupled L2 term at the mean), never as
            Keras' decoupled decay of the sampled weights. Variables excluded
            with `exclude_from_weight_decay` get δ = 0.
        seed: int or None. Seed of the posterior noise. Set it explicitly
            for multi-process training: every replica must draw the same
            noise.
        fused_update: bool. On a single device, update all variables of
            equal dtype and weight decay in one flat pass with one noise
            draw, instead of variable by variable. The per-variable path is
            always used under a `tf.distribute` strategy or a
            `keras.distribution` (sharded variables must not be
            concatenated). Both paths compute the same update; only the
            arrangement of the random draws differs. Defaults to None: True
            on the torch backend, False on the others.
        prior: None, a `keras_bayes.Posterior` (typically
            `optimizer.posterior()` after an earlier task) or the path of
            one saved with `Posterior.save`. None (the default) is the
            isotropic prior N(0, 1/(λδ)) set by `weight_decay`. A Posterior
            replaces it by the diagonal Gaussian N(m₀, diag(1/(τ·P₀))) on
            the variables it matches (by path): in the update, δ becomes the
            per-weight τ·P₀/λ and the prior term δ·m becomes δ·(m − m₀), with
            λ = `ess`. Variables it does not match (a new head) keep the
            weight-decay prior. The prior is saved with the optimizer.
        prior_strength: float > 0, τ, the tempering factor of the prior's
            precision. 1 (the default) is exact sequential Bayesian
            updating; below 1 the old tasks weigh less.
        no_decay_names: regular expressions searched in variable names
            (Keras' `exclude_from_weight_decay(var_names=...)`); matching
            variables get δ = 0. Unlike Keras, kept in the config.
        nonfinite_gradients: `"skip"` (the default) or `"raise"`. What a
            step does when any gradient holds a NaN or an infinity. Either
            way the update is not applied: the posterior state and the
            model's sample stay as they were (the step still counts in
            `iterations`, so learning-rate schedules and the noise seed
            advance) and `nonfinite_steps` counts it. `"raise"` then raises
            `FloatingPointError` (torch; JAX with `run_eagerly=True`) or
            TensorFlow's `InvalidArgumentError` carrying the same message
            (TensorFlow drops the check under XLA, `jit_compile=True`).
            A compiled JAX step cannot raise without losing the state it
            was given, so there `"raise"` is refused when the step is
            traced. Under a `LossScaleOptimizer` (`mixed_float16`) the
            wrapper skips such steps before this optimizer sees them.
    """

    state_names = ("mean",)

    def __init__(self, learning_rate, weight_decay=0.0, seed=None,
                 fused_update=None, prior=None, prior_strength=1.0,
                 nonfinite_gradients="skip", no_decay_names=None, name=None,
                 **kwargs):
        if kwargs.get("use_ema"):
            raise ValueError(
                f"`use_ema=True` is not supported by {type(self).__name__}: "
                "between steps the model variables hold posterior samples, so "
                "an average of them is not the posterior mean. The posterior "
                "mean is written into the model at the end of `fit`; use "
                "`keras_bayes.callbacks.SwapMeanWeights` to evaluate at it "
                "during training. Received: use_ema=True"
            )
        weight_decay = 0.0 if weight_decay is None else weight_decay
        check_number("weight_decay", weight_decay, low=0.0)
        check_choice("nonfinite_gradients", nonfinite_gradients,
                     NONFINITE_CHOICES)
        check_learning_rate(learning_rate)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(
                f"`seed` must be an integer or None. Received: seed={seed!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=float(weight_decay),
            name=name,
            **kwargs,
        )
        self.seed = seed
        self.fused_update = None if fused_update is None else bool(fused_update)
        self.prior = _as_prior(prior)
        self.prior_strength = check_number(
            "prior_strength", prior_strength, low=0.0, low_open=True)
        # Set when the prior's values come from a config (paths and shapes
        # only) and have not been loaded yet.
        self._prior_values_missing = False
        self.nonfinite_gradients = nonfinite_gradients
        # The step's "all gradients finite" flag while an update is traced.
        self._gradients_finite = None
        # Measured on CPU: a clear gain on torch (kernel launches, and one
        # host sync per random call), none on JAX or TensorFlow, whose
        # compilers already fuse the per-variable updates.
        self._fuse = (
            keras.backend.backend() == "torch"
            if fused_update is None else bool(fused_update)
        )
        # The generator's state must be an optimizer variable: on JAX only
        # those are threaded through the jitted step (untracked, the noise
        # would silently repeat every step), and only those are saved.
        self._seed_generator = keras.random.SeedGenerator(
            seed, name="posterior_noise_seed"
        )
        self._track_variable(self._seed_generator.state)
        self._prediction_seed_generator = None
        self.no_decay_names = ()
        if no_decay_names:
            self.exclude_from_weight_decay(var_names=no_decay_names)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras' method; the `var_names` are also kept in the config, so an
        optimizer rebuilt from it (or loaded from `.keras`) does not give
        the excluded variables the prior δ again."""
        if isinstance(var_names, str):
            var_names = [var_names]
        super().exclude_from_weight_decay(var_list=var_list,
                                          var_names=var_names)
        self.no_decay_names = tuple(str(n) for n in (var_names or ()))

    # ------------------------------------------------------------------
    # Slots.

    def build(self, var_list):
        if self.built:
            return
        for variable in var_list:
            if getattr(variable, "constraint", None) is not None:
                raise ValueError(
                    f"{type(self).__name__} does not support variable "
                    "constraints: Keras applies them to the posterior "
                    "sample after each step, which would bias the curvature "
                    f"estimate. Variable '{variable.path}' has constraint "
                    f"{variable.constraint!r}; remove it or use another "
                    "optimizer."
                )
        super().build(var_list)
        # Saved with the optimizer, so a resumed run keeps the count.
        self._nonfinite_steps = self.add_variable(
            shape=(), dtype="int32", initializer="zeros",
            name="nonfinite_steps", aggregation="only_first_replica")
        self._state = {}
        for name in self.state_names:
            self._state[name] = [
                self.add_variable_from_reference(
                    variable,
                    name=f"posterior_{name}",
                    initializer=self._state_initializer(name, variable),
                )
                for variable in var_list
            ]
        self._prior_slots = None
        if self.prior is not None:
            self._build_prior(var_list)

    def _build_prior(self, var_list):
        """Slots with the prior's centre m₀ and per-example precision δ."""
        ess = getattr(self, "ess", None)
        if ess is None:
            raise ValueError(
                f"{type(self).__name__} does not support `prior`: it has no "
                "effective sample size `ess` to scale the prior by."
            )
        matches = self.prior.match(var_list)
        self._prior_values_missing = isinstance(self.prior, PriorSpec)
        self._prior_slots = {"mean": [], "precision": []}
        for variable, match in zip(var_list, matches):
            if match is None:
                center = np.zeros(tuple(variable.shape), "float32")
                delta = np.full(tuple(variable.shape),
                                self._weight_decay_for(variable), "float32")
            else:
                center = match[0]
                delta = self.prior_strength * match[1] / ess
            for name, value in (("mean", center), ("precision", delta)):
                self._prior_slots[name].append(
                    self.add_variable_from_reference(
                        variable,
                        name=f"prior_{name}",
                        initializer=(
                            lambda shape, dtype, value=value:
                            ops.cast(ops.convert_to_tensor(value), dtype)
                        ),
                    )
                )

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._prior_values_missing = False

    def _prior_terms(self, index, variable):
        """(δ, centre) of the prior of variable `index`; centre None at 0."""
        if self._prior_slots is None:
            return self._weight_decay_for(variable), None
        return (
            ops.convert_to_tensor(self._prior_slots["precision"][index]),
            ops.convert_to_tensor(self._prior_slots["mean"][index]),
        )

    def apply(self, grads, trainable_variables=None):
        if self._prior_values_missing:
            raise ValueError(
                f"This {type(self).__name__} was rebuilt from a config, "
                "which records the prior's structure but not its values. "
                "Load the model with `keras.models.load_model` (the values "
                "are optimizer variables), or pass `prior=` a Posterior."
            )
        return super().apply(grads, trainable_variables)

    def draw_training_point(self, trainable_variables):
        """A fresh sample m + σ·z per trainable variable (training noise).

        Used by `keras_bayes.training.TwoPassModel` for the extra samples of
        a step (SOBA's `mc_samples`, bSAM's sub-batches); it advances the
        training seed, so it belongs inside a training step. Builds the
        optimizer on `trainable_variables` if needed (TensorFlow builds it
        while the first step is traced).
        """
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        first = self._before_first_update()
        points = []
        for variable in trainable_variables:
            index = self._get_variable_index(variable)
            sample = ops.convert_to_tensor(variable)
            state = {
                name: ops.convert_to_tensor(slots[index])
                for name, slots in self._state.items()
            }
            state["mean"] = ops.where(first, sample, state["mean"])
            weight_decay, _ = self._prior_terms(index, variable)
            std = self._posterior_std(state, weight_decay)
            points.append(state["mean"] + std * keras.random.normal(
                tuple(variable.shape), dtype=variable.dtype,
                seed=self._seed_generator))
        return points

    def _state_initializer(self, name, variable):
        """Initializer of the slot `name` for `variable`.

        Every slot starts from a constant. The mean slot is not read before
        the first update: until then the mean is the variable itself (see
        `_before_first_update`). Initialising it from the variable instead
        would fail under `jit_compile=True` on TensorFlow, which builds the
        optimizer while the first step is traced and cannot lift a variable
        whose initial value depends on the trace out to XLA.
        """
        return "zeros"

    def _before_first_update(self):
        """True until the first posterior update has been applied.

        Until then the model's variables still hold their initial values,
        which are the mean. `iterations` counts updates, not micro-batches,
        when `gradient_accumulation_steps` is set.
        """
        return ops.equal(self.iterations, 0)

    # ------------------------------------------------------------------
    # The update.

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        raise NotImplementedError

    def _posterior_std(self, state, weight_decay):
        raise NotImplementedError

    def _apply_weight_decay(self, variables):
        # δ is the prior precision and acts inside `_posterior_update`;
        # Keras' decoupled decay would shrink the sample, not the mean.
        return

    def _weight_decay_for(self, variable):
        if not self.weight_decay or not self._use_weight_decay(variable):
            return 0.0
        return self.weight_decay

    def _read_state(self, index, sample):
        state = {
            name: ops.convert_to_tensor(slots[index])
            for name, slots in self._state.items()
        }
        # Before the first step the mean follows the variable, so weights
        # loaded after `build` (or broadcast by a distributed wrapper) count.
        state["mean"] = ops.where(
            self._before_first_update(), sample, state["mean"]
        )
        return state

    def _training_noise(self, shape, dtype, seed=None):
        """Unit base noise of the next training sample (Gaussian here)."""
        return keras.random.normal(
            shape, dtype=dtype,
            seed=self._seed_generator if seed is None else seed)

    def _keep_if_finite(self, new_state, new_sample, state, sample):
        """The old state and sample instead of the new ones after a step
        whose gradients were not all finite."""
        finite = self._gradients_finite
        if finite is None:
            return new_state, new_sample
        kept = {name: ops.where(finite, value, state[name])
                for name, value in new_state.items()}
        return kept, ops.where(finite, new_sample, sample)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        sample = ops.convert_to_tensor(variable)
        gradient = ops.cast(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        state = self._read_state(index, sample)
        weight_decay, center = self._prior_terms(index, variable)
        new_state, noise_scale = centred_update(
            self._posterior_update, center, gradient, sample, state,
            learning_rate, weight_decay,
        )
        new_sample = new_state["mean"] + noise_scale * self._training_noise(
            tuple(variable.shape), dtype)
        new_state, new_sample = self._keep_if_finite(
            new_state, new_sample, state, sample)
        for name, value in new_state.items():
            self.assign(self._state[name][index], value)
        self.assign(variable, new_sample)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._pin_mean_of_skipped(trainable_variables)
        finite = _agree_across_replicas(all_finite(grads))
        self._nonfinite_steps.assign_add(
            ops.cast(ops.logical_not(finite), "int32"))
        self._gradients_finite = finite
        try:
            if self._fuse and _single_device():
                self._fused_update_step(
                    grads, trainable_variables, learning_rate)
            else:
                super()._backend_update_step(
                    grads, trainable_variables, learning_rate)
        finally:
            self._gradients_finite = None
        if self.nonfinite_gradients == "raise":
            _raise_unless(finite, (
                f"{type(self).__name__}: a gradient holds NaN or Inf; the "
                "step was skipped and the posterior is unchanged "
                "(nonfinite_gradients='raise')."))

    @property
    def nonfinite_steps(self):
        """How many updates were skipped for a NaN or Inf gradient."""
        self._check_built()
        return int(ops.convert_to_numpy(self._nonfinite_steps))

    def _pin_mean_of_skipped(self, updated):
        """Give variables without a gradient (Keras drops `None` gradients)
        their own value as mean at the first update: their mean slot is
        never written otherwise, and `fit` ends by writing the mean."""
        updated = {id(v) for v in updated}
        skipped = [(i, v) for i, v in enumerate(self._trainable_variables)
                   if id(v) not in updated]
        if not skipped:
            return
        first = self._before_first_update()
        for index, variable in skipped:
            slot = self._state["mean"][index]
            self.assign(slot, ops.where(first, ops.convert_to_tensor(variable),
                                        ops.convert_to_tensor(slot)))

    def _fused_update_step(self, grads, variables, learning_rate):
        """One flat `_posterior_update` per (dtype, weight decay) group.

        Updating per variable costs ~25 small ops and one random draw per
        variable; on a single device the same update runs once over the
        concatenated weights, with one noise draw per group.
        """
        groups = {}
        for gradient, variable in zip(grads, variables):
            # With a prior, δ is a slot and one group per dtype suffices.
            key = (str(variable.dtype), "prior" if self._prior_slots
                   else self._weight_decay_for(variable))
            groups.setdefault(key, []).append((gradient, variable))
        for (dtype, weight_decay), members in groups.items():
            indices = [self._get_variable_index(v) for _, v in members]
            targets = [v for _, v in members]
            sample = _flatten(targets)
            gradient = _flatten([ops.cast(g, dtype) for g, _ in members])
            state = {
                name: _flatten([slots[i] for i in indices])
                for name, slots in self._state.items()
            }
            state["mean"] = ops.where(
                self._before_first_update(), sample, state["mean"]
            )
            center = None
            if self._prior_slots:
                weight_decay = _flatten(
                    [self._prior_slots["precision"][i] for i in indices])
                center = _flatten(
                    [self._prior_slots["mean"][i] for i in indices])
            new_state, noise_scale = centred_update(
                self._posterior_update, center, gradient, sample, state,
                ops.cast(learning_rate, dtype), weight_decay,
            )
            noise = self._training_noise(
                (sum(_size(v) for v in targets),), dtype)
            new_state, new_sample = self._keep_if_finite(
                new_state, new_state["mean"] + noise_scale * noise, state,
                sample)
            self._assign_flat(targets, new_sample)
            for name, value in new_state.items():
                self._assign_flat([self._state[name][i] for i in indices],
                                  value)

    def _assign_flat(self, variables, flat):
        if keras.backend.backend() == "torch":
            # One fused copy instead of a Python loop of `assign`s.
            import torch

            targets = [v.value for v in variables]
            pieces = torch.split(flat, [t.numel() for t in targets])
            with torch.no_grad():
                torch._foreach_copy_(
                    targets,
                    [p.view(t.shape) for p, t in zip(pieces, targets)],
                )
            return
        offset = 0
        for variable in variables:
            size = _size(variable)
            self.assign(variable, ops.reshape(
                flat[offset:offset + size], tuple(variable.shape)))
            offset += size

    def finalize_variable_values(self, var_list):
        """Write the posterior mean into the model (called at `fit` end)."""
        super().finalize_variable_values(var_list)
        # On JAX, when a training step fails while it is traced, `fit` still
        # calls this method with the optimizer's state detached from its
        # variables; reading the mean would then hide the original error.
        # Private API (Keras 3.15): `Variable._value` is None while the JAX
        # trainer holds the state.
        if keras.backend.backend() == "jax" and any(
            getattr(m, "_value", 0) is None for m in self._state["mean"]
        ):
            return
        self._write_into_model(self._mean_values())

    # ------------------------------------------------------------------
    # Public posterior API.

    def _check_built(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} has no posterior yet: it is built on "
                "the first `fit` (or `optimizer.build(model.trainable_"
                "variables)`)."
            )

    def _mean_values(self):
        return [ops.convert_to_numpy(mean)
                for mean, _ in self._mean_and_std_tensors()]

    def _mean_and_std_tensors(self):
        """(mean, std) backend tensors per variable, std at full shape."""
        out = []
        first = self._before_first_update()
        for index, variable in enumerate(self._trainable_variables):
            state = {
                name: ops.convert_to_tensor(slots[index])
                for name, slots in self._state.items()
            }
            state["mean"] = ops.where(first, ops.convert_to_tensor(variable),
                                      state["mean"])
            weight_decay, _ = self._prior_terms(index, variable)
            std = self._posterior_std(state, weight_decay)
            out.append(
                (state["mean"], ops.broadcast_to(std, tuple(variable.shape)))
            )
        return out

    def _std_values(self):
        return [ops.convert_to_numpy(s) for _, s in
                self._mean_and_std_tensors()]

    def _prediction_seed(self, seed):
        if seed is not None:
            return seed
        if self._prediction_seed_generator is None:
            # Apart from the training noise, so sampling for prediction never
            # changes the training trajectory.
            base = self.seed if self.seed is not None else 0
            self._prediction_seed_generator = keras.random.SeedGenerator(
                base + 7919, name="posterior_prediction_seed"
            )
        return self._prediction_seed_generator

    def _sample_tensors(self, mean_and_std, seed):
        return [
            mean + std * keras.random.normal(
                tuple(variable.shape), dtype=variable.dtype, seed=seed)
            for (mean, std), variable in zip(mean_and_std,
                                             self._trainable_variables)
        ]

    def posterior_mean(self):
        """The posterior mean, one NumPy array per trainable variable.

        The order is that of `model.trainable_variables`.
        """
        self._check_built()
        return self._mean_values()

    def posterior_std(self):
        """The posterior standard deviation, one NumPy array per variable."""
        self._check_built()
        return self._std_values()

    def posterior(self):
        """The current posterior as a `keras_bayes.Posterior`.

        Means and precisions 1/σ² per trainable variable, keyed by the
        variables' paths: save it with `.save("task.npz")`, or pass it as
        `prior=` to the optimizer of the next task.
        """
        self._check_built()
        means, precisions = [], []
        for mean, std in self._mean_and_std_tensors():
            means.append(ops.convert_to_numpy(mean))
            precisions.append(1.0 / np.square(ops.convert_to_numpy(std)))
        return Posterior(means, precisions,
                         [v.path for v in self._trainable_variables])

    def posterior_variables(self):
        """The model variables the posterior is over, in the same order."""
        self._check_built()
        return list(self._trainable_variables)

    def _write_into_model(self, values):
        for variable, value in zip(self._trainable_variables, values):
            if isinstance(value, np.ndarray):
                value = np.array(value, copy=True)
            else:
                # On JAX, assigning one variable's buffer to another aliases
                # it, and buffer donation in the next jitted call deletes it.
                value = ops.copy(value)
            variable.assign(value)

    def _read_model(self):
        return [ops.convert_to_numpy(v) for v in self._trainable_variables]

    @contextlib.contextmanager
    def mean_weights(self):
        """Context manager: the model holds the posterior mean inside it.

        On exit the previous values (during training: the current posterior
        sample) are restored, also when the body raises.
        """
        self._check_built()
        previous = self._read_model()
        self._write_into_model(self._mean_values())
        try:
            yield
        finally:
            self._write_into_model(previous)

    def draw_posterior_sample(self, seed=None):
        """One sample θ ~ q as a list of NumPy arrays (no model change).

        `seed` is an int (the same sample every call), a
        `keras.random.SeedGenerator` or None (a generator of this optimizer
        kept apart from the training noise).
        """
        self._check_built()
        samples = self._sample_tensors(
            self._mean_and_std_tensors(), self._prediction_seed(seed))
        return [ops.convert_to_numpy(s) for s in samples]

    @contextlib.contextmanager
    def sampled_weights(self, seed=None):
        """Context manager: the model holds a fresh posterior sample inside.

        On exit the previous values are restored, also when the body raises.
        """
        previous = self._read_model()
        self._write_into_model(self.draw_posterior_sample(seed))
        try:
            yield
        finally:
            self._write_into_model(previous)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "seed": self.seed,
                "fused_update": self.fused_update,
                # Structure only: the values are optimizer variables.
                "prior": None if self.prior is None else self.prior.spec(),
                "prior_strength": self.prior_strength,
                "nonfinite_gradients": self.nonfinite_gradients,
                "no_decay_names": list(self.no_decay_names),
            }
        )
        return config
