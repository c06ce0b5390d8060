"""bSAM: Bayesian sharpness-aware minimization."""


import keras
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes import backend
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers import base
from keras_bayes.optimizers.sam import TwoPassOptimizer
from keras_bayes.training.contract import StepPlan
from keras_bayes.training.contract import mean_gradients


# What the model's variables hold (the `variables_hold` slot).
HOLDS_INITIAL = 0  # the initial weights, which are the mean; no step yet
HOLDS_SAMPLE = 1   # a sample m + e (the mean is in the `mean` slot)
HOLDS_MEAN = 2     # the mean, written back at the end of a `fit`


def bsam_perturbation(gradient, precision, rho):
    """ε = ρ·g1/s: a Newton-like step, not normalised (unlike SAM)."""
    return rho * gradient / precision


def bsam_curvature(gradient, precision):
    """a = sqrt(s)·|g1|, the Gauss-Newton-like precision estimate."""
    return ops.sqrt(precision) * ops.abs(gradient)


def bsam_momentum(momentum, gradient, mean, beta1, weight_decay):
    """gm = β1·gm + (1−β1)·(g2 + δ·m)."""
    return beta1 * momentum + (1.0 - beta1) * (gradient + weight_decay * mean)


def bsam_precision(precision, curvature, weight_decay, damping, beta2):
    """s = β2·s + (1−β2)·(a + δ + γ)."""
    return beta2 * precision + (1.0 - beta2) * (
        curvature + weight_decay + damping
    )


def bsam_posterior_std(precision, ess):
    """σ = 1/sqrt(N·s)."""
    return ops.rsqrt(ess * precision)


@keras.saving.register_keras_serializable(package="keras_bayes")
class BSAM(TwoPassOptimizer, base.PosteriorOptimizer):
    """bSAM: SAM as a Bayesian learning rule with a diagonal Gaussian.

    bSAM (Möllenhoff & Khan, 2023) learns q(θ) = N(m, diag(1/(N·s))), with
    N = `ess` and s a per-weight precision, by an Adam-like natural-gradient
    step whose gradient is taken at a SAM-type perturbation of the mean.
    Each step takes two gradients on the same minibatch, so the model must
    be wrapped in `keras_bayes.training.TwoPassModel`:

    ```
    θ  = m + e,  e ~ N(0, 1/(N·s))            # held by the model variables
    g1 = ∇ℓ̄(θ)                                 # pass 1, at the sample
    a  = sqrt(s)·|g1|                          # kept in a slot
    g2 = ∇ℓ̄(m + ρ·g1/s)                        # pass 2, same minibatch
    gm = β1·gm + (1−β1)·(g2 + δ·m)
    m  = m − α·gm/s                            # uses the OLD s
    s  = β2·s + (1−β2)·(a + δ + γ)
    θ  = m + e',  e' ~ N(0, 1/(N·s))           # the next sample
    ```

    The mean is updated with the precision from before this step and the
    precision afterwards, as in the official code (`bayesian-sam`,
    `optim.py`); the paper's algorithm box lists the s update first. δ
    (`weight_decay`) is the prior precision per example (the official
    `priorprec / N`) and enters the momentum, unlike IVON. γ (`damping`)
    keeps s ≥ γ + δ after a few steps, so σ² ≤ 1/(N·(γ + δ)).

    Every step takes g1 at a sample, as the official code: at the start of
    each `fit` of a `TwoPassModel` (when the variables hold the initial
    weights or the mean written back by the previous `fit`),
    `prepare_training` writes a sample m + e, drawn from the optimizer's
    tracked seed, into the variables; afterwards each step leaves the next
    sample there. (A first step through `train_on_batch` on a fresh model,
    which has no such hook, still takes g1 at the initial weights.)

    Between steps the model's variables hold the sample θ and this optimizer
    holds m, s and gm (plus `a`, written between the passes); at the end of
    `fit` the variables receive m. The posterior API of
    `keras_bayes.optimizers.PosteriorOptimizer` (`posterior_mean`,
    `posterior_std`, `sampled_weights`, `mean_weights`) applies.

    Recipe of the official README (ResNet-18, CIFAR-10 with augmentation):
    α = 0.5 with warmup and cosine decay, β1 = 0.9, β2 = 0.999, ρ = 0.01,
    priorprec 40 and N = 4·50 000 (so δ = 2e-4), batch 200. bSAM's ρ is
    5–1000× smaller than SAM's, because ρ·g/s is not normalised.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable.
        ess: float > 0, N: the training-set size (times the augmentation
            factor).
        rho: float >= 0, the perturbation scale ρ. Defaults to 0.01.
        beta1: float in [0, 1), the momentum rate. Defaults to 0.9.
        beta2: float in [0, 1), the precision rate. Defaults to 0.999.
        weight_decay: float >= 0, the prior precision per example δ.
            `exclude_from_weight_decay` gives δ = 0 to variables. Defaults
            to 2e-4.
        damping: float >= 0, γ. Defaults to 0.1.
        precision_init: float > 0, the initial precision s0. Defaults
            to 1.0.
        batch_split: int, M, the number of sub-batches of m-sharpness.
            Each sub-batch j gets its own noise e_j (sub-batch 0 the sample
            the model holds, the others fresh draws), its own g1_j and its
            own perturbed point m + ρ·g1_j/s; g2 and a are the means over
            the sub-batches, as in the official code (which uses M = 8 and
            vectorises; here the 2M passes run one after another, at the
            same arithmetic cost). Loss and metrics are logged from the
            first pass of sub-batch 0. The batch size should be a multiple
            of M. Defaults to 1.
        seed: int or None, the seed of the posterior noise.
        fused_update: bool or None, see `PosteriorOptimizer`.
        prior, prior_strength: a `keras_bayes.Posterior` to use as the
            prior instead of N(0, 1/(Nδ)), and its tempering τ, as for
            `SOBA`: δ becomes δ₀ = τ·P₀/N per weight in the momentum (as
            δ₀·(m − m₀)) and in the precision update. See
            `PosteriorOptimizer`.
        nonfinite_gradients: `"skip"` (default) or `"raise"`: a step with a
            NaN/Inf gradient leaves the posterior unchanged (and raises in
            `"raise"` mode), see `PosteriorOptimizer`.
        no_decay_names: regular expressions of variable names that get
            δ = 0 (kept in the config), see `PosteriorOptimizer`.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm` (applied to g2
            only), `loss_scale_factor` and `name`. `use_ema` and
            `gradient_accumulation_steps` are rejected.

    Example (bSAM needs two gradients per step, so the model is wrapped):

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    model = keras_bayes.TwoPassModel(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))
    model.compile(
        optimizer=keras_bayes.optimizers.BSAM(
            learning_rate=0.1, ess=len(x), rho=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    probs = keras_bayes.Predictive(model, num_samples=8,
                                   from_logits=True).predict(x)
    ```

    Reference:
        Möllenhoff & Khan, "SAM as an Optimal Relaxation of Bayes",
        ICLR 2023, arXiv:2210.01620.
    """

    state_names = ("mean", "precision", "momentum")

    def __init__(
        self,
        learning_rate,
        ess,
        rho=0.01,
        beta1=0.9,
        beta2=0.999,
        weight_decay=2e-4,
        damping=0.1,
        precision_init=1.0,
        batch_split=1,
        seed=None,
        name=None,
        **kwargs,
    ):
        ess = check_number("ess", ess, low=0.0, low_open=True)
        rho = check_number("rho", rho, low=0.0)
        beta1 = check_number("beta1", beta1, low=0.0, high=1.0,
                             high_open=True)
        beta2 = check_number("beta2", beta2, low=0.0, high=1.0,
                             high_open=True)
        damping = check_number("damping", damping, low=0.0)
        precision_init = check_number(
            "precision_init", precision_init, low=0.0, low_open=True
        )
        batch_split = check_positive_integer("batch_split", batch_split)
        self._check_two_pass_kwargs("BSAM", kwargs)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            seed=seed,
            name=name or "BSAM",
            **kwargs,
        )
        self.ess = ess
        self.rho = rho
        self.beta1 = beta1
        self.beta2 = beta2
        self.damping = damping
        self.precision_init = precision_init
        self.batch_split = int(batch_split)
        # The elementwise work of the two passes per variable, as the
        # backend runs it best (torch: one compiled loop on large
        # variables, where eager torch made a pass, and a fresh tensor, per
        # operation: 4.7 ms of the 1.6 M-weight MLP's step, measured).
        self._point_kernel = backend.elementwise_kernel(self._point_of)
        self._curvature_kernel = backend.elementwise_kernel(
            self._mean_curvature)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # a = sqrt(s)·|g1|, written by `combine_passes` and read by the
        # update. In `_state` so that both the per-variable and the fused
        # update path read it; never written back by `_posterior_update`.
        self._state["curvature"] = [
            self.add_variable_from_reference(
                v, name="bsam_curvature", initializer="zeros")
            for v in var_list
        ]
        # HOLDS_INITIAL / HOLDS_SAMPLE / HOLDS_MEAN; saved, so a resumed
        # run knows whether its variables hold a sample.
        self._variables_hold = self.add_variable(
            shape=(), dtype="int32", initializer="zeros",
            name="bsam_variables_hold", aggregation="only_first_replica")

    def _before_first_update(self):
        # `prepare_training` may have stored the mean before step 1.
        return ops.logical_and(
            super()._before_first_update(),
            ops.equal(self._variables_hold, HOLDS_INITIAL))

    def prepare_training(self, trainable_variables):
        """Writes a sample m + e into the variables if they hold the mean.

        Called by `TwoPassModel.fit` before its first step. The noise comes
        from the training seed (a tracked optimizer variable), so a run
        restored from a saved model or a backup draws what the uninterrupted
        run drew.
        """
        variables = list(trainable_variables)
        if not self.built:
            self.build(variables)
        holds = int(ops.convert_to_numpy(self._variables_hold))
        if holds == HOLDS_SAMPLE or (
                holds == HOLDS_INITIAL
                and int(ops.convert_to_numpy(self.iterations)) > 0):
            # A sample is there (steps taken by `train_on_batch`).
            return
        indices = [_keras_compat.variable_index(self, v) for v in variables]
        means = [
            ops.convert_to_numpy(self._current_mean(
                self._state["mean"][i], ops.convert_to_tensor(v)))
            for i, v in zip(indices, variables)
        ]
        samples = [ops.convert_to_numpy(p)
                   for p in self.draw_training_point(variables)]
        for i, mean in zip(indices, means):
            self._state["mean"][i].assign(mean)
        for variable, sample in zip(variables, samples):
            variable.assign(sample)
        self._variables_hold.assign(HOLDS_SAMPLE)

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        if self.built and not backend.optimizer_state_detached(
                self._state["mean"]):
            self._variables_hold.assign(HOLDS_MEAN)

    def _state_initializer(self, name, variable):
        if name == "precision":
            return keras.initializers.Constant(self.precision_init)
        return super()._state_initializer(name, variable)

    def step_plan(self):
        return StepPlan(sub_batches=self.batch_split, second_pass=True)

    # The first passes of sub-batches 1.. are at fresh posterior samples.
    draw_training_point = base.PosteriorOptimizer.draw_training_point

    def _flat_passes(self, variables):
        """Whether the per-variable work of the passes runs once over the
        concatenated variables: with the fused update (torch's default for
        many small variables, where each Keras op costs more than its
        arithmetic) and one dtype."""
        return (self._fuse and len(variables) > 1
                and backend.single_device()
                and len(set(self._layout(variables).dtypes)) == 1)

    def _flat_gradients(self, grads, variables):
        """The gradients of `variables` concatenated (zeros for a missing
        one), in their dtype."""
        layout = self._layout(variables)
        return ops.cast(backend.flatten([
            ops.zeros(tuple(v.shape), dtype) if g is None else g
            for g, v, dtype in zip(grads, variables, layout.dtypes)]),
            layout.dtypes[0])

    def second_pass_point(self, gradients, trainable_variables=None):
        """m + ρ·g1/s per variable."""
        variables = self._point_variables(gradients, trainable_variables)
        if self._flat_passes(variables):
            state = self._flat_state(self._layout(variables).indices,
                                     ("mean", "precision"))
            return backend.cut_flat(self._point_kernel(
                state["mean"], backend.flatten(variables),
                self._flat_gradients(gradients, variables),
                state["precision"]), variables)
        grads, variables = self._variables_for_point(gradients, variables)
        points = []
        for gradient, variable in zip(grads, variables):
            index = _keras_compat.variable_index(self, variable)
            points.append(self._point_kernel(
                ops.convert_to_tensor(self._state["mean"][index]),
                ops.convert_to_tensor(variable), gradient,
                ops.convert_to_tensor(self._state["precision"][index])))
        return points

    def _point_of(self, stored_mean, sample, gradient, precision):
        """m + ρ·g1/s of one variable, m the current mean."""
        mean = self._current_mean(stored_mean, sample)
        return mean + bsam_perturbation(gradient, precision, self.rho)

    def _mean_curvature(self, grads, precision, kept, finite, count):
        """Σ_j sqrt(s)·|g1_j| / `count` where `finite`, else `kept`."""
        total = bsam_curvature(grads[0], precision)
        for gradient in grads[1:]:
            total = total + bsam_curvature(gradient, precision)
        return ops.where(finite, total / count, kept)

    def combine_passes(self, records, context):
        """Stores a = mean_j sqrt(s)·|g1_j|; returns mean_j g2_j."""
        first_grads = [context.unscale(r.grads) for r in records]
        # A bad first gradient skips the whole step (the second-pass
        # gradient is then bad too): keep the old statistic as well.
        if self._flat_passes(context.variables):
            flat_grads = [self._flat_gradients(grads, context.variables)
                          for grads in first_grads]
            self._store_curvature_flat(flat_grads, context.variables,
                                       base.all_finite(flat_grads),
                                       float(len(records)))
            return mean_gradients([r.second_grads for r in records])
        finite = base.all_finite(first_grads)
        for index_in_list, variable in enumerate(context.variables):
            index = _keras_compat.variable_index(self, variable)
            slot = self._state["curvature"][index]
            grads = [ops.cast(g[index_in_list], variable.dtype)
                     for g in first_grads if g[index_in_list] is not None]
            if not grads:
                grads = [ops.zeros(tuple(variable.shape), variable.dtype)]
            # In place where the backend can (torch): the slot is read
            # only here, entry by entry.
            self.assign(slot, self._curvature_kernel(
                grads, ops.convert_to_tensor(self._state["precision"][index]),
                ops.convert_to_tensor(slot), finite, float(len(records)),
                out=slot))
        return mean_gradients([r.second_grads for r in records])

    def _store_curvature_flat(self, grads, variables, finite, count):
        """`combine_passes`' statistic, computed once over the concatenated
        `variables` from their concatenated first-pass gradients `grads`
        (`_flat_gradients`, one per pass) and written back
        (`_flat_passes`). A missing gradient adds sqrt(s)·0, as it adds
        nothing per variable."""
        indices = self._layout(variables).indices
        state = self._flat_state(indices, ("precision", "curvature"))
        kept = state["curvature"]
        # In place where the slot has a storage (`kept` is it).
        in_storage = self._slot_storage(indices) is not None
        value = self._curvature_kernel(
            grads, state["precision"], kept, finite, count,
            out=kept if in_storage else None)
        backend.assign_flat(self.assign, self._write_flat_slots(
            indices, {"curvature": value}))

    def _posterior_std(self, state, weight_decay):
        return bsam_posterior_std(state["precision"], self.ess)

    def _posterior_update(self, gradient, sample, state, learning_rate,
                          weight_decay):
        mean = state["mean"]
        precision = state["precision"]
        new_momentum = bsam_momentum(state["momentum"], gradient, mean,
                                     self.beta1, weight_decay)
        new_mean = mean - learning_rate * new_momentum / precision
        new_precision = bsam_precision(precision, state["curvature"],
                                       weight_decay, self.damping,
                                       self.beta2)
        new_state = {
            "mean": new_mean,
            "precision": new_precision,
            "momentum": new_momentum,
        }
        return new_state, bsam_posterior_std(new_precision, self.ess)

    def get_config(self):
        config = super().get_config()
        config.update({
            "ess": self.ess,
            "rho": self.rho,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "damping": self.damping,
            "precision_init": self.precision_init,
            "batch_split": self.batch_split,
        })
        return config


__all__ = ["BSAM"]
