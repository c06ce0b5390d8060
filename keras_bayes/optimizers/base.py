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

The module is split by job:

- `keras_bayes._validation`: argument checks (re-exported here);
- `keras_bayes.optimizers.updates`: pure tensor functions of a step
  (finiteness, skipping a bad step, the centred prior);
- `keras_bayes.optimizers.prior`: the `prior=` argument and its slot values;
- `keras_bayes.backend`: the per-backend pieces (fused copies, raising from
  a compiled step, replica agreement), chosen once;
- this module: `PosteriorOptimizer`, the slot bookkeeping, both update paths
  and the public posterior and weight API.

Private Keras API goes through `keras_bayes._keras_compat`.
"""

import contextlib
import warnings
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes import backend
from keras_bayes._validation import check_choice
from keras_bayes._validation import check_learning_rate
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes._validation import check_seed
from keras_bayes.optimizers.prior import as_prior
from keras_bayes.optimizers.prior import prior_slot_values
from keras_bayes.optimizers.updates import NONFINITE_CHOICES
from keras_bayes.optimizers.updates import all_finite
from keras_bayes.optimizers.updates import centred_update
from keras_bayes.optimizers.updates import keep_if_finite
from keras_bayes.optimizers.updates import poison_unless
from keras_bayes.optimizers.updates import variable_size
from keras_bayes.posterior import Posterior
from keras_bayes.posterior import PriorSpec
from keras_bayes.training.contract import inner_optimizer

# Names other modules import from here.
__all__ = [
    "NONFINITE_CHOICES", "PosteriorOptimizer",
    "all_finite", "centred_update", "check_choice", "check_learning_rate",
    "check_number", "check_positive_integer",
    "unwrap_optimizer",
]

#: Added to `seed` for the generator of `draw_posterior_sample` and
#: `sampled_weights`. Prediction gets a generator of its own so that sampling
#: for prediction never advances (or replays) the training noise; the offset
#: is a large prime so that its stream also differs from the training
#: streams of nearby seeds (seed + 1, seed + 2, ...) of a seed sweep.
PREDICTION_SEED_OFFSET = 7919


def unwrap_optimizer(optimizer):
    """The keras_bayes optimizer inside a `LossScaleOptimizer`, or None."""
    optimizer = inner_optimizer(optimizer)
    return optimizer if isinstance(optimizer, PosteriorOptimizer) else None


def require_posterior_optimizer(optimizer, user):
    """`unwrap_optimizer(optimizer)`, or a `ValueError` saying that `user`
    (the name of the caller, e.g. a callback's class) needs one."""
    posterior = unwrap_optimizer(optimizer)
    if posterior is None:
        raise ValueError(
            f"{user} needs a model trained by a keras_bayes posterior "
            "optimizer (SOBA, IVON, BSAM, a Lie-group rule, VOGN), possibly "
            "inside a keras.optimizers.LossScaleOptimizer. Received: "
            f"optimizer={type(optimizer).__name__}"
        )
    return posterior


#: A variable of at least this many weights is updated on its own, with a
#: noise draw of its own that a compiler fuses into its update; smaller
#: ones are updated in runs, each one flat update with one draw
#: (`_update_runs`). Measured on the 2-core CPU (JAX): flat updates of the
#: small variables cut the first `fit` of MobileNetV2 (158 variables, most
#: of them small) from 1.8x to 1.2-1.4x Adam's (the update compiled 17
#: times, not 158), while one flat update of all variables made the
#: step of the 1.6 M-weight MLP (6 variables) 35x Adam's (XLA copied the
#: large concatenations), against 2x updated one by one.
SEPARATE_UPDATE_MIN_ENTRIES = 65_536


def _update_runs(variables, index, key):
    """`variables` split into runs updated (and drawn) together: small
    variables consecutive in the list and by `index(variable)`, of one
    `key(variable)` (dtype and weight decay), together; each large one
    alone (`SEPARATE_UPDATE_MIN_ENTRIES`)."""
    runs = []
    for variable in variables:
        large = variable_size(variable) >= SEPARATE_UPDATE_MIN_ENTRIES
        joins = (runs and not large
                 and variable_size(runs[-1][-1]) < SEPARATE_UPDATE_MIN_ENTRIES
                 and index(runs[-1][-1]) + 1 == index(variable)
                 and key(runs[-1][-1]) == key(variable))
        if joins:
            runs[-1].append(variable)
        else:
            runs.append([variable])
    return runs


class _Layout(NamedTuple):
    """What a flat update reads of a list of variables
    (`PosteriorOptimizer._layout`), one entry per variable."""

    indices: tuple  # the slot index (`variable_index`)
    dtypes: tuple  # the dtype, a string
    sizes: tuple  # the number of entries
    decays: tuple  # False where `exclude_from_weight_decay` exempts it


class PosteriorOptimizer(keras.optimizers.Optimizer):
    """Base class for keras_bayes optimizers that hold a posterior.

    A subclass names its per-weight state in `state_names` (the first entry is
    always `"mean"`), gives the slots' initial values in `_state_initializer`
    and implements two pure functions of tensors:

    - `_posterior_update(gradient, sample, state, learning_rate,
      weight_decay)` returns the new state (a dict) and the standard
      deviation used to draw the next sample;
    - `_posterior_std(state, weight_decay)` returns the standard deviation
      of the current posterior.

    Everything Keras-facing lives here: slot bookkeeping, the lazy
    initialisation of the mean (`_current_mean`), drawing the next sample,
    writing the mean back at the end of `fit`, the public posterior and
    weight API, and a fused update path (the default on torch) that runs the
    same `_posterior_update` once over all weights instead of once per
    variable. The pure pieces of the update are in
    `keras_bayes.optimizers.updates`, the prior in
    `keras_bayes.optimizers.prior`, what differs between backends in
    `keras_bayes.backend`.

    Public weight API (for `Predictive`, callbacks and user code):
    `posterior_variables()`, `model_weights()`, `set_model_weights(values)`,
    `posterior_mean()`, `posterior_std()`, `posterior_mean_and_std()`,
    `posterior_state()`, `set_posterior_state(state)`, `posterior()`,
    `draw_posterior_sample(seed)`, and the context managers `mean_weights()`
    and `sampled_weights(seed)`.

    Example: the public weight API on a trained SOBA (any subclass has it).

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
    optimizer = model.optimizer
    assert isinstance(optimizer, keras_bayes.optimizers.PosteriorOptimizer)
    means, stds = optimizer.posterior_mean(), optimizer.posterior_std()
    with optimizer.sampled_weights(seed=0):   # one posterior sample
        logits_at_sample = model.predict(x, verbose=0)
    with optimizer.mean_weights():            # the mean (after fit: already)
        logits_at_mean = model.predict(x, verbose=0)
    optimizer.posterior().save("posterior.npz")
    ```

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
            draw, instead of variable by variable (where runs of small
            variables, under 65 536 weights each and consecutive in the
            model, are still updated together). The per-variable path is
            always used under a `tf.distribute` strategy or a
            `keras.distribution` (sharded variables must not be
            concatenated). Both paths compute the same update; only the
            arrangement of the random draws differs. Defaults to None:
            chosen when the optimizer is built, by
            `keras_bayes.backend.fuse_updates_by_default(variables)`: on
            torch True for models of many small variables (on average
            under 100 k weights each), False on the other backends. On
            JAX, True for a model of a few large variables is slow (the
            1.6 M-weight MLP of `benchmarks/step_cost.py`: 35x Adam's
            step against 2x, XLA copying the concatenations); the default
            never chooses it there.
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

    #: The effective sample size λ that scales a `prior=` Posterior's
    #: precision; subclasses that support `prior=` set it in `__init__`.
    ess = None

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
        check_seed(seed)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=float(weight_decay),
            name=name,
            **kwargs,
        )
        self.seed = seed
        self.fused_update = (None if fused_update is None
                             else bool(fused_update))
        self.prior = as_prior(prior)
        self.prior_strength = check_number(
            "prior_strength", prior_strength, low=0.0, low_open=True)
        # Set when the prior's values come from a config (paths and shapes
        # only) and have not been loaded yet.
        self._prior_values_missing = False
        self.nonfinite_gradients = nonfinite_gradients
        self._checked_fit_model = None
        self._compiled_updates = {}
        # `_next_state_and_sample` as the backend runs it best (torch:
        # compiled on large inputs).
        self._state_kernel = backend.elementwise_kernel(
            self._next_state_and_sample)
        # Set in `build` when `fused_update` is None (it depends on the
        # variables).
        self._fuse = bool(fused_update)
        # The generator's state must be an optimizer variable: on JAX only
        # those are threaded through the jitted step (untracked, the noise
        # would silently repeat every step), and only those are saved.
        self._seed_generator = keras.random.SeedGenerator(
            seed, name="posterior_noise_seed"
        )
        _keras_compat.track_variable(self, self._seed_generator.state)
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
        if self.fused_update is None:
            self._fuse = backend.fuse_updates_by_default(var_list)
        # Where each variable's weights start in a step's update noise.
        self._noise_offsets = np.cumsum(
            [0] + [variable_size(v) for v in var_list[:-1]]).tolist()
        # Saved with the optimizer, so a resumed run keeps the count.
        self._nonfinite_steps = self.add_variable(
            shape=(), dtype="int32", initializer="zeros",
            name="nonfinite_steps", aggregation="only_first_replica")
        # (steps, skipped steps) at the end of the last `fit`, so that its
        # end reports only its own steps.
        self._reported_counts = (0, 0)
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
        # {indices: {slot name: storage}}, made at the first flat update
        # (`_slot_storage`), when subclasses have added their slots.
        self._slot_storages = None
        self._layouts = {}

    def _build_prior(self, var_list):
        """Slots with the prior's centre m₀ and per-example precision δ."""
        if self.ess is None:
            raise ValueError(
                f"{type(self).__name__} does not support `prior`: it has no "
                "effective sample size `ess` to scale the prior by."
            )
        matches = self.prior.match(var_list)
        self._prior_values_missing = isinstance(self.prior, PriorSpec)
        self._prior_slots = {"mean": [], "precision": []}
        for variable, match in zip(var_list, matches):
            center, delta = prior_slot_values(
                match, tuple(variable.shape), self._weight_decay_for(variable),
                self.prior_strength, self.ess)
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
        self._reported_counts = self._step_counts()
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
        self._check_fit_model()
        if self._prior_values_missing:
            raise ValueError(
                f"This {type(self).__name__} was rebuilt from a config, "
                "which records the prior's structure but not its values. "
                "Load the model with `keras.models.load_model` (the values "
                "are optimizer variables), or pass `prior=` a Posterior."
            )
        return super().apply(grads, trainable_variables)

    @property
    def variables(self):
        # JAX's `fit` reads (and detaches) the optimizer's variables before
        # its first step: the earliest point at which it meets this
        # optimizer, so a second model is refused there, before anything
        # is read, detached or written.
        self._check_fit_model()
        return super().variables

    def _check_fit_model(self):
        """Refuse a `fit` of a model this optimizer was not built for.

        Keras' `apply(grads, variables)` refuses unknown variables (TF,
        torch), but JAX's stateless step passes values, not variables, so a
        second model would train on the first one's posterior and `fit`
        would end by writing that mean into the first model. Checked once
        per model, when `fit` first reads the optimizer's variables or
        first applies a step.
        """
        fit = _keras_compat.running_fit() if self.built else None
        # An id, not the model: an optimizer attribute that is a Keras
        # object would be saved with the optimizer.
        if fit is None or id(fit[0]) == self._checked_fit_model:
            return
        known = {id(v) for v in
                 _keras_compat.optimizer_variables_built_for(self)}
        unknown = [v.path for v in fit[0].trainable_variables
                   if id(v) not in known]
        if unknown:
            raise ValueError(
                f"This {type(self).__name__} instance was built for another "
                f"model's variables; it holds that model's posterior and "
                f"cannot train this one (unknown variables: "
                f"{', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}"
                "). Create a new optimizer for each model: "
                f"`model.compile(optimizer={type(self).__name__}(...))`.")
        self._checked_fit_model = id(fit[0])

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
        points = []
        for variable in trainable_variables:
            index = _keras_compat.variable_index(self, variable)
            state = self._read_state(index, ops.convert_to_tensor(variable))
            weight_decay, _ = self._prior_terms(index, variable)
            std = self._posterior_std(state, weight_decay)
            points.append(state["mean"] + std * self._training_noise(
                tuple(variable.shape), variable.dtype))
        return points

    def _state_initializer(self, name, variable):
        """Initializer of the slot `name` for `variable`.

        Every slot starts from a constant. The mean slot is not read before
        the first update: until then the mean is the variable itself (see
        `_current_mean`). Initialising it from the variable instead would
        fail under `jit_compile=True` on TensorFlow, which builds the
        optimizer while the first step is traced and cannot lift a variable
        whose initial value depends on the trace out to XLA.
        """
        return "zeros"

    def _before_first_update(self):
        """True until the first posterior update has been applied.

        Until then the model's variables still hold their initial values,
        which are the mean. `iterations` counts updates, not micro-batches,
        when `gradient_accumulation_steps` is set; a step skipped for
        non-finite gradients counts as no update (`nonfinite_steps`, which
        a step increments after its update), so a skipped step may leave
        the mean slot as it is: its next reader still takes the variable.
        """
        applied = self.iterations
        if self.built:
            applied = applied - ops.cast(self._nonfinite_steps,
                                         applied.dtype)
        return ops.equal(applied, 0)

    def _current_mean(self, stored_mean, sample):
        """The posterior mean: `sample` before the first update, else the
        stored mean.

        Before the first update the mean follows the variable (`sample`, its
        value), so weights loaded after `build`, or broadcast by a
        distributed wrapper, count. `stored_mean` is the mean slot (a
        variable or tensor) or a flat concatenation of several, `sample`
        the matching variable value(s) of the same shape.
        """
        return backend.choose(self._before_first_update(),
                              ops.convert_to_tensor(sample),
                              ops.convert_to_tensor(stored_mean))

    def _stored_state(self, index):
        """The slots of variable `index` as tensors, as stored."""
        return {
            name: ops.convert_to_tensor(slots[index])
            for name, slots in self._state.items()
        }

    def _read_state(self, index, sample):
        """The state of variable `index` as tensors, with the current mean."""
        state = self._stored_state(index)
        state["mean"] = self._current_mean(state["mean"], sample)
        return state

    # ------------------------------------------------------------------
    # The update.

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        raise NotImplementedError

    def _posterior_std(self, state, weight_decay):
        raise NotImplementedError

    # Overrides a private Keras hook (`_keras_compat.OPTIMIZER_HOOKS`).
    def _apply_weight_decay(self, variables):
        # δ is the prior precision and acts inside `_posterior_update`;
        # Keras' decoupled decay would shrink the sample, not the mean.
        return

    def _weight_decay_for(self, variable, decays=None):
        """δ of `variable`: 0 where `exclude_from_weight_decay` exempts it.
        `decays`: whether it is not exempt, where already looked up
        (`_Layout.decays`)."""
        if not self.weight_decay:
            return 0.0
        if decays is None:
            decays = _keras_compat.uses_weight_decay(self, variable)
        return self.weight_decay if decays else 0.0

    def _training_noise(self, shape, dtype, seed=None):
        """Unit base noise (Gaussian here) drawn from the optimizer's
        `SeedGenerator`, advancing it once: the extra samples of a
        multi-pass step (one draw per variable), and the update of rules
        whose noise is not the backend's (`_draws_backend_noise`; the
        update's own Gaussian noise is `_run_noise`).

        Drawn with the backend's fast generator (`keras_bayes.backend.
        standard_normal`), as `keras.random.normal` would take its seed.
        """
        return backend.standard_normal(
            shape, dtype,
            self._seed_generator if seed is None else seed)

    def _next_state_and_sample(self, gradient, sample, state, learning_rate,
                               weight_decay, center, noise):
        """(new state, next sample) of one variable or one flat group.

        `state` holds the slots as stored; its mean is made the current one
        here (`_current_mean`), inside what the backend may compile
        (`backend.elementwise_kernel`: on torch one loop, not a pass of its
        own). The update runs with the prior centred on `center`; the next
        sample is mean + multiplier·noise, `noise` the unit base noise of the
        shape of `sample`. The new state has every slot of `state_names` (a
        slot the update leaves alone keeps its value), so that it has the
        structure of the state it replaces.
        """
        state = dict(state)
        state["mean"] = self._current_mean(state["mean"], sample)
        new_state, noise_scale = centred_update(
            self._posterior_update, center, gradient, sample, state,
            learning_rate, weight_decay,
        )
        new_sample = new_state["mean"] + noise_scale * noise
        return ({name: new_state.get(name, state[name])
                 for name in self.state_names}, new_sample)

    def _layout(self, variables):
        """The `_Layout` of the list `variables`, looked up once per list:
        a `fit` hands the optimizer the same list every step, and Keras'
        lookups of a variable's slot index, dtype and weight-decay
        exemption cost microseconds each, about 100 of them per step of a
        small model's flat update (with one cast of the concatenated
        gradients, bSAM's `apply`, second-pass point and curvature on the
        step-cost CNN, timed alone, went from 1.7 to 1.1 ms). The variables
        are the optimizer's own, kept alive by it, so their ids stay
        theirs; exemptions are fixed at `build`."""
        key = tuple(map(id, variables))
        layout = self._layouts.get(key)
        if layout is None:
            layout = _Layout(
                tuple(_keras_compat.variable_index(self, v)
                      for v in variables),
                tuple(str(v.dtype) for v in variables),
                tuple(variable_size(v) for v in variables),
                tuple(_keras_compat.uses_weight_decay(self, v)
                      for v in variables))
            if len(self._layouts) >= 64:  # lists of a custom loop
                self._layouts.clear()
            self._layouts[key] = layout
        return layout

    def _update_runs(self, variables):
        """`_update_runs` of `variables` by their place in the model and
        their (dtype, weight decay)."""
        return _update_runs(
            variables, lambda v: _keras_compat.variable_index(self, v),
            lambda v: (str(v.dtype), self._weight_decay_for(v)))

    def _run_noise(self, run):
        """The unit base noise of this step's update for the variables of
        `run`, as `noise(shape, dtype)` (`_run_update`) draws it
        (`backend.step_noise`): weight k of the model (in the order the
        optimizer was built with) takes number k of the step's stream, so
        the numbers do not depend on how the stream is drawn: Keras'
        per-variable updates under a distribution draw the same noise as a
        single device."""
        start = self._noise_offsets[_keras_compat.variable_index(self, run[0])]
        return self._step_noise(start)

    def _step_noise(self, start):
        """`noise(shape, dtype)`: numbers `start`, ... of this step's
        stream in that shape and dtype (`backend.step_noise`; on torch not
        drawn yet: the update's kernel draws them in its own loop)."""
        return lambda shape, dtype: backend.step_noise(
            shape, dtype, self._seed_generator, self.iterations, start)

    def update_step(self, gradient, variable, learning_rate):
        """Keras' per-variable hook, called by Keras itself only under a
        distribution, where `_backend_update_step` has already made every
        gradient of a bad step NaN: a step skips when its own gradient is
        not finite."""
        self._update_variables([gradient], [variable], learning_rate,
                               all_finite([gradient]))

    def _update_variables(self, grads, variables, learning_rate, finite):
        """Update the posterior of each variable and write its next sample;
        where `finite` is False, nothing changes.

        With the backend's noise (`_draws_backend_noise`), the new values
        of all variables come from one `backend.if_finite(finite, ...)`: on
        JAX one branch of the step's program, not a select per slot (which
        made XLA copy every slot). Otherwise `_update_variable` per
        variable.
        """
        if not self._draws_backend_noise:
            for gradient, variable in zip(grads, variables):
                self._update_variable(gradient, variable, learning_rate,
                                      finite)
            return

        gradient_of = {id(v): g for g, v in zip(grads, variables)}
        runs = self._update_runs(variables)

        def compute():
            return [self._run_update([gradient_of[id(v)] for v in run], run,
                                     learning_rate, self._run_noise(run),
                                     in_place=True)
                    for run in runs]

        def keep():
            return [self._run_current_values(run) for run in runs]

        # A run's new values leave the branch flat and are cut after it:
        # a JAX `lax.cond` with an output per variable and slot made the
        # compile of a 158-variable model slower than no runs at all.
        for run, (state, sample) in zip(
                runs, backend.if_finite(finite, compute, keep)):
            self._write_run(run, state, sample)

    def _update_variable(self, gradient, variable, learning_rate, finite):
        """Update one variable, its noise drawn from the generator itself
        and each new value selected by `finite` (`keep_if_finite`)."""
        state, sample = self._current_values(variable)
        noise = self._training_noise(tuple(variable.shape), variable.dtype)
        new_state, new_sample = keep_if_finite(
            finite, *self._variable_update(gradient, variable, learning_rate,
                                           noise),
            state, sample)
        self._write_state_and_sample(variable, new_state, new_sample)

    def _variable_update(self, gradient, variable, learning_rate, noise,
                         in_place=False):
        """(new state, next sample) of one variable, with the unit base
        noise `noise`. With `in_place`, the backend may write them into the
        variable and its slots already (torch, `backend.elementwise_kernel`):
        only where they are assigned anyway, and nothing reads the old
        values after; else it assigns nothing."""
        index = _keras_compat.variable_index(self, variable)
        dtype = variable.dtype
        sample = ops.convert_to_tensor(variable)
        state = self._stored_state(index)
        weight_decay, center = self._prior_terms(index, variable)
        targets = None
        if in_place:
            targets = ({name: self._state[name][index]
                        for name in self.state_names}, variable)
        return self._state_kernel(
            ops.cast(gradient, dtype), sample, state,
            ops.cast(learning_rate, dtype), weight_decay, center, noise,
            out=targets)

    def _run_update(self, grads, run, learning_rate, noise, in_place):
        """(new state, next sample) of the variables of `run` (of one dtype
        and weight decay, `_update_runs`) from one update of their
        concatenation, with the unit noise `noise(shape, dtype)` of the
        run's weights in that layout: flat, or shaped as the variable for a
        run of one, which with `in_place` the backend may already have
        written (`_variable_update`: in a branch of `backend.if_finite`,
        which runs alone and is then assigned)."""
        if len(run) == 1:
            variable = run[0]
            return self._variable_update(
                grads[0], variable, learning_rate,
                noise(tuple(variable.shape), variable.dtype), in_place)
        layout = self._layout(run)
        indices = layout.indices
        dtype = layout.dtypes[0]
        state = self._flat_state(indices)
        if self._prior_slots is None:
            weight_decay = self._weight_decay_for(run[0], layout.decays[0])
            center = None
        else:
            terms = [self._prior_terms(i, v) for i, v in zip(indices, run)]
            weight_decay = backend.flatten([delta for delta, _ in terms])
            center = backend.flatten([centre for _, centre in terms])
        storage = self._slot_storage(indices) if in_place else None
        targets = None
        if storage is not None:
            # The new state straight into the slots' storage; the sample
            # in a fresh tensor, cut into the variables by `_write_run`.
            targets = ({name: storage[name].value
                        for name in self.state_names}, None)
        # One cast of the concatenation (a no-op in the usual case), not
        # one per gradient.
        return self._state_kernel(
            ops.cast(backend.flatten(grads), dtype), backend.flatten(run),
            state, ops.cast(learning_rate, dtype), weight_decay, center,
            noise((sum(layout.sizes),), dtype), out=targets)

    def _run_current_values(self, run):
        """(state, sample) of the variables of `run` as stored, in the
        layout of `_run_update`: what a skipped step writes back."""
        if len(run) == 1:
            return self._current_values(run[0])
        state = self._flat_state(self._layout(run).indices)
        return ({name: state[name] for name in self.state_names},
                backend.flatten(run))

    def _flat_state(self, indices, names=None):
        """{name: slot `name` of the variables at `indices`, concatenated}
        for the slots `names` (default: all), a flat run's or group's state:
        the slots' storage where they have one (`_slot_storage`), else
        `backend.flatten`."""
        names = self._state if names is None else names
        storage = self._slot_storage(indices)
        if storage is not None:
            return {name: storage[name].value for name in names}
        return {name: backend.flatten([self._state[name][i] for i in indices])
                for name in names}

    def _write_flat_slots(self, indices, values):
        """Assign `values`, {slot name: flat value} of the variables at
        `indices`, to their slots: one write per slot where they have a
        storage (none for a value that is it), else piece by piece."""
        storage = self._slot_storage(indices)
        if storage is not None:
            for name, value in values.items():
                storage[name].assign(value)
            return []
        return [([self._state[name][i] for i in indices], value)
                for name, value in values.items()]

    def _slot_storage(self, indices):
        """{slot name: `backend.share_storage` of that slot} of the
        variables at `indices`, or None.

        With the fused update on one device, the slots of all variables of
        one dtype (in build order, the layout of the fused update's groups
        and of bSAM's passes) are made views of one flat tensor per slot,
        at the first flat update, where the backend allows it (torch). A
        flat update of exactly those variables then reads and writes its
        state without a concatenation and a cut per slot. Other index
        lists, and a scope that gives the variables other values, get
        None."""
        if self._slot_storages is None:
            self._slot_storages = self._share_slot_storage()
        storage = self._slot_storages.get(tuple(indices))
        if storage is None or not next(iter(storage.values())).current():
            return None
        return storage

    def _share_slot_storage(self):
        """`_slot_storage`'s table, made once."""
        if not (self._fuse and backend.single_device()):
            return {}
        groups = {}
        for index, variable in enumerate(
                _keras_compat.optimizer_variables_built_for(self)):
            groups.setdefault(str(variable.dtype), []).append(index)
        table = {}
        for indices in groups.values():
            if len(indices) < 2:
                continue
            storage = {}
            for name, slots in self._state.items():
                storage[name] = backend.share_storage(
                    [slots[i] for i in indices])
                if storage[name] is None:
                    return {}
            table[tuple(indices)] = storage
        return table

    def _write_run(self, run, state, sample):
        """Assign the values of `_run_update` to the variables of `run`
        and their slots."""
        if len(run) == 1:
            self._write_state_and_sample(run[0], state, sample)
            return
        indices = self._layout(run).indices
        backend.assign_flat(self.assign, [(run, sample)]
                            + self._write_flat_slots(indices, state))

    def _current_values(self, variable):
        """(state, sample) of one variable as stored: what a skipped step
        writes back.

        The mean slot as it is, not the current mean (`_current_mean`): a
        skipped step does not count as an update (`_before_first_update`),
        so the slot needs no pinning, and on JAX the branch of
        `backend.if_finite` that keeps the state then passes every buffer
        through. A computed mean there made XLA copy the new mean out of
        the branch each step (a pass over the weights: 0.3-0.5 ms of the
        1.6 M-weight MLP's step, measured).
        """
        index = _keras_compat.variable_index(self, variable)
        return ({name: ops.convert_to_tensor(self._state[name][index])
                 for name in self.state_names},
                ops.convert_to_tensor(variable))

    def _write_state_and_sample(self, variable, state, sample):
        index = _keras_compat.variable_index(self, variable)
        for name, value in state.items():
            self.assign(self._state[name][index], value)
        self.assign(variable, sample)

    # Overrides a private Keras hook (`_keras_compat.OPTIMIZER_HOOKS`): it
    # runs after gradient clipping and accumulation, once per step.
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._pin_mean_of_skipped(trainable_variables)
        finite = backend.agree_across_replicas(all_finite(grads))
        if not backend.single_device():
            # Sharded or mirrored variables: Keras dispatches the
            # per-variable `update_step`s (and all-reduces the gradients).
            super()._backend_update_step(
                poison_unless(finite, grads), trainable_variables,
                learning_rate)
        elif self._fuse:
            self._fused_update_step(grads, trainable_variables,
                                    learning_rate, finite)
        else:
            # A compiled function takes tensors; Keras hands over its
            # learning-rate variable itself.
            if isinstance(learning_rate, keras.Variable):
                learning_rate = learning_rate.value
            self._compiled_update(trainable_variables)(
                [None if g is None else ops.convert_to_tensor(g)
                 for g in grads],
                ops.convert_to_tensor(learning_rate), finite)
        # After the update, which reads the count (`_before_first_update`).
        self._nonfinite_steps.assign_add(
            ops.cast(ops.logical_not(finite), "int32"))
        if self.nonfinite_gradients == "raise":
            backend.raise_unless(finite, (
                f"{type(self).__name__}: a gradient holds NaN or Inf; the "
                "step was skipped and the posterior is unchanged "
                "(nonfinite_gradients='raise')."))

    #: Whether the update's noise is the backend's Gaussian (True) or drawn
    #: with Keras' random ops (the Lie-group rules' families). Only the
    #: former is drawn by index without advancing the generator
    #: (`backend.step_normal`), so only then may the update run inside
    #: `backend.if_finite` and be compiled by `_compiled_update`
    #: (TensorFlow: XLA); Keras' random ops inside XLA on a CPU are slow
    #: (`tf.random.stateless_normal` 770 ms on 1.6 M numbers, measured) and
    #: draw other numbers than in the plain graph.
    _draws_backend_noise = True

    def _compiled_update(self, variables):
        """The per-variable updates of `variables` as one function of
        (gradients, learning rate, finite), compiled where the backend's
        trainer does not compile the step (`backend.compile_function`).
        Kept per variable list, so that eager steps reuse the program."""
        key = tuple(id(v) for v in variables)
        if self._compiled_updates.get("key") != key:
            def update_all(grads, learning_rate, finite):
                # Keras drops variables without a gradient before this hook.
                self._update_variables(grads, variables, learning_rate,
                                       finite)

            function = update_all
            if self._draws_backend_noise:
                function = backend.compile_function(
                    update_all, sum(variable_size(v) for v in variables))
            self._compiled_updates = {"key": key, "function": function}
        return self._compiled_updates["function"]

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
        skipped = [
            (i, v) for i, v in enumerate(
                _keras_compat.optimizer_variables_built_for(self))
            if id(v) not in updated
        ]
        for index, variable in skipped:
            slot = self._state["mean"][index]
            self.assign(slot, self._current_mean(
                slot, ops.convert_to_tensor(variable)))

    def _fused_update_step(self, grads, variables, learning_rate, finite):
        """One flat update per (dtype, weight decay) group.

        Updating per variable costs ~25 small ops and one random draw per
        variable; on a single device the same update runs once over the
        concatenated weights, with one noise draw per group.
        """
        layout = self._layout(variables)
        groups = {}
        for position, (dtype, decays) in enumerate(zip(layout.dtypes,
                                                       layout.decays)):
            # With a prior, δ is a slot and one group per dtype suffices.
            key = (dtype, "prior" if self._prior_slots
                   else self._weight_decay_for(variables[position], decays))
            groups.setdefault(key, []).append(position)
        # The groups take consecutive ranges of the step's noise stream.
        group_start = 0
        for (dtype, _), positions in groups.items():
            run = [variables[p] for p in positions]
            run_grads = [grads[p] for p in positions]
            size = sum(layout.sizes[p] for p in positions)
            new_state, new_sample = self._group_update_unless_nonfinite(
                finite,
                lambda noise: self._run_update(
                    run_grads, run, learning_rate, noise,
                    in_place=self._draws_backend_noise),
                lambda: self._run_current_values(run),
                (size,), dtype, group_start)
            group_start += size
            self._write_run(run, new_state, new_sample)

    def _group_update_unless_nonfinite(self, finite, update, keep, shape,
                                       dtype, start):
        """`update(noise)`, the (state, sample) of one flat group of `shape`
        from its unit noise, where `finite` is True, else `keep()`. The noise
        is numbers `start`, ... of the step's stream (`_step_noise`) or, for
        Keras' random ops, a draw from the generator; `update` takes it as
        `noise(shape, dtype)` (`_run_update`)."""
        if self._draws_backend_noise:
            return backend.if_finite(
                finite, lambda: update(self._step_noise(start)), keep)
        flat = self._training_noise(shape, dtype)
        return keep_if_finite(finite, *update(
            lambda shape, dtype: ops.cast(ops.reshape(flat, shape), dtype)),
            *keep())

    def finalize_variable_values(self, var_list):
        """Write the posterior mean into the model (called at `fit` end)."""
        super().finalize_variable_values(var_list)
        # On JAX, when a training step fails while it is traced, `fit` still
        # calls this method with the optimizer's state detached from its
        # variables; reading the mean would then hide the original error.
        if backend.optimizer_state_detached(self._state["mean"]):
            return
        self._write_weights(self._mean_values())
        counts = self._step_counts()
        steps, skipped = (now - before for now, before in
                          zip(counts, self._reported_counts))
        self._reported_counts = counts
        self._report_fit(steps, skipped)

    def _step_counts(self):
        return (int(ops.convert_to_numpy(self.iterations)),
                int(ops.convert_to_numpy(self._nonfinite_steps)))

    def _report_fit(self, steps, skipped):
        """Warn, once at the end of a `fit` of `steps` updates, about what
        would otherwise go unnoticed (subclasses add their own checks)."""
        if skipped:
            warnings.warn(
                f"{type(self).__name__} skipped {skipped} of {steps} steps "
                "of this `fit` for a NaN or Inf gradient "
                "(nonfinite_gradients='skip'): those steps left the "
                "posterior unchanged. Lower the learning rate, check the "
                "data and the loss, or pass nonfinite_gradients='raise' to "
                "stop at the first one. `optimizer.nonfinite_steps` counts "
                "them; `keras_bayes.callbacks.NonfiniteSteps()` puts the "
                "count into the logs (History, CSVLogger, TensorBoard).",
                stacklevel=2)

    # ------------------------------------------------------------------
    # Public posterior and weight API.

    def _check_built(self):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} has no posterior yet: it is built on "
                "the first `fit` (or `optimizer.build(model.trainable_"
                "variables)`)."
            )

    def _model_variables(self):
        return _keras_compat.optimizer_variables_built_for(self)

    def _mean_values(self):
        """The posterior mean per variable as NumPy arrays.

        Read straight from the slots (or, before the first update, from the
        variables): no tensor op per variable, which on JAX would compile
        one small program per variable shape at the end of every `fit`.
        """
        if bool(ops.convert_to_numpy(self._before_first_update())):
            sources = self._model_variables()
        else:
            sources = self._state["mean"]
        return [np.array(ops.convert_to_numpy(v), copy=True)
                for v in sources]

    def _mean_and_std_tensors(self):
        """(mean, std) backend tensors per variable, std at full shape."""
        out = []
        for index, variable in enumerate(self._model_variables()):
            state = self._read_state(index, ops.convert_to_tensor(variable))
            weight_decay, _ = self._prior_terms(index, variable)
            std = self._posterior_std(state, weight_decay)
            out.append(
                (state["mean"], ops.broadcast_to(std, tuple(variable.shape)))
            )
        return out

    def _prediction_seed(self, seed):
        if seed is not None:
            return seed
        if self._prediction_seed_generator is None:
            base = self.seed if self.seed is not None else 0
            self._prediction_seed_generator = keras.random.SeedGenerator(
                base + PREDICTION_SEED_OFFSET,
                name="posterior_prediction_seed"
            )
        return self._prediction_seed_generator

    def _sample_tensors(self, mean_and_std, seed):
        return [
            mean + std * keras.random.normal(
                tuple(variable.shape), dtype=variable.dtype, seed=seed)
            for (mean, std), variable in zip(mean_and_std,
                                             self._model_variables())
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
        return [ops.convert_to_numpy(s)
                for _, s in self._mean_and_std_tensors()]

    def posterior_mean_and_std(self):
        """(mean, std) per variable as backend tensors (std at full shape).

        The same values as `posterior_mean()` and `posterior_std()`, without
        the copy to NumPy: for code that computes with them on the device.
        """
        self._check_built()
        return self._mean_and_std_tensors()

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
                         [v.path for v in self._model_variables()])

    def posterior_variables(self):
        """The model variables the posterior is over, in the same order."""
        self._check_built()
        return self._model_variables()

    def model_weights(self):
        """What the model's variables hold now (`posterior_variables()`
        order), as NumPy arrays: during `fit` the current posterior sample,
        after it the mean. Write them back with `set_model_weights`."""
        self._check_built()
        return [ops.convert_to_numpy(v) for v in self._model_variables()]

    def set_model_weights(self, values):
        """Write `values` (one array or tensor per `posterior_variables()`
        entry, e.g. `posterior_mean()` or an earlier `model_weights()`) into
        the model's variables. The posterior is unchanged."""
        self._check_built()
        self._write_weights(values)

    def _write_weights(self, values):
        for variable, value in zip(self._model_variables(), values):
            if isinstance(value, np.ndarray):
                value = np.array(value, copy=True)
            else:
                # On JAX, assigning one variable's buffer to another aliases
                # it, and buffer donation in the next jitted call deletes it.
                value = ops.copy(value)
            variable.assign(value)

    def posterior_state(self):
        """Every slot of the posterior (`{name: [array per variable]}`, e.g.
        the mean and the precision), as NumPy copies for
        `set_posterior_state`. The step counter and the noise seed are not
        included."""
        self._check_built()
        return {name: [ops.convert_to_numpy(slot) for slot in slots]
                for name, slots in self._state.items()}

    def set_posterior_state(self, state):
        """Restore slots saved by `posterior_state()` (all or some names)."""
        self._check_built()
        for name, values in state.items():
            for slot, value in zip(self._state[name], values):
                slot.assign(value)

    @contextlib.contextmanager
    def mean_weights(self):
        """Context manager: the model holds the posterior mean inside it.

        On exit the previous values (during training: the current posterior
        sample) are restored, also when the body raises.
        """
        previous = self.model_weights()
        self._write_weights(self._mean_values())
        try:
            yield
        finally:
            self._write_weights(previous)

    def draw_posterior_sample(self, seed=None):
        """One sample θ ~ q as a list of NumPy arrays (no model change).

        `seed` is an int (the same sample every call), a
        `keras.random.SeedGenerator` or None (a generator of this optimizer
        kept apart from the training noise, see `PREDICTION_SEED_OFFSET`).
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
        previous = self.model_weights()
        self._write_weights(self.draw_posterior_sample(seed))
        try:
            yield
        finally:
            self._write_weights(previous)

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
