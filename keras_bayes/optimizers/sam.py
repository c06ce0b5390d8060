"""SAM and `TwoPassOptimizer`, the base of the two-pass optimizers (SAM, bSAM).

Sharpness-aware methods need two gradients of the loss on the same
minibatch: one at the current weights and one at a perturbed point that
depends on the first. A Keras optimizer only ever receives gradients, never
the data, so the second gradient is taken by a training step:
`keras_bayes.training.TwoPassModel`. `TwoPassOptimizer` is a
`keras_bayes.training.contract.MultiPassOptimizer` whose plan has a second
pass:

1. pass 1: g1 = ∇ℓ̄(w) at the model's variables;
2. `point = optimizer.second_pass_point(g1, trainable_variables)`: one
   tensor per trainable variable;
3. pass 2: g2 = ∇ℓ̄(point) on the same minibatch, without writing any
   variable;
4. `optimizer.apply(optimizer.combine_passes(records, context))`, by default
   g2 (the mean of the g2 of the sub-batches when the optimizer plans
   several; the optimizer may store first-pass statistics in its slots
   there).
"""

import keras
from keras import ops

from keras_bayes import _keras_compat
from keras_bayes._validation import check_choice
from keras_bayes._validation import check_learning_rate
from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.training.contract import MultiPassOptimizer
from keras_bayes.training.contract import StepPlan


def global_norm(tensors):
    """sqrt(Σ‖t‖²) over a list of tensors, in float32."""
    total = ops.zeros((), dtype="float32")
    for t in tensors:
        total = total + ops.sum(ops.square(ops.cast(t, "float32")))
    return ops.sqrt(total)


def sam_perturbation(gradient, norm, rho, epsilon):
    """ε = ρ·g/‖g‖ (‖g‖ the global norm over all variables)."""
    return gradient * ops.cast(rho / (norm + epsilon), gradient.dtype)


def asam_scale(weights, eta):
    """T = |w| + η, the per-weight scale of ASAM's perturbation."""
    return ops.abs(weights) + ops.cast(eta, weights.dtype)


def asam_perturbation(gradient, scale, norm, rho, epsilon):
    """ε = ρ·T²·g/‖T·g‖ (‖·‖ the global norm of T·g over all variables)."""
    return ops.square(scale) * gradient * ops.cast(rho / (norm + epsilon),
                                                   gradient.dtype)


def adam_moments(first, second, gradient, beta1, beta2):
    """m = β1·m + (1−β1)·g,  v = β2·v + (1−β2)·g²."""
    return (beta1 * first + (1.0 - beta1) * gradient,
            beta2 * second + (1.0 - beta2) * ops.square(gradient))


def adam_step(first, second, step, beta1, beta2, epsilon):
    """m̂/(sqrt(v̂) + ε) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)."""
    first_hat = first / (1.0 - ops.power(beta1, step))
    second_hat = second / (1.0 - ops.power(beta2, step))
    return first_hat / (ops.sqrt(second_hat) + epsilon)


def heavy_ball_momentum(momentum, gradient, weights, beta, weight_decay):
    """gm = μ·gm + g + δ·w."""
    return beta * momentum + gradient + weight_decay * weights


class TwoPassOptimizer(MultiPassOptimizer):
    """Mixin for optimizers that need a second gradient on the same batch.

    A subclass implements `second_pass_point(gradients,
    trainable_variables)` and may override `combine_passes` (default: the
    mean second-pass gradient) and `step_plan` (default: one sub-batch, one
    sample, a second pass). `apply` (and through it `apply_gradients` and
    `stateless_apply`) raises a `ValueError` unless it runs inside
    `two_pass_step()`, which `keras_bayes.training.TwoPassModel` enters
    while it runs its training step: used through plain
    `model.compile(optimizer=...)`, the optimizer would otherwise silently do
    something that is not SAM.

    Example: a toy second-pass rule, trained by `TwoPassModel`:

    ```python
    import keras
    import numpy as np
    from keras import ops
    from keras_bayes.optimizers import TwoPassOptimizer
    from keras_bayes.training import TwoPassModel

    class Extragradient(TwoPassOptimizer, keras.optimizers.SGD):
        # SGD on the gradient at the look-ahead point w − a·∇ℓ(w).

        def __init__(self, learning_rate, lookahead=0.1, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.lookahead = lookahead

        def second_pass_point(self, gradients, trainable_variables):
            return [ops.convert_to_tensor(v) - self.lookahead * g
                    for g, v in zip(gradients, trainable_variables)]

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    model = TwoPassModel(keras.Sequential([keras.Input((3,)),
                                           keras.layers.Dense(1)]))
    model.compile(optimizer=Extragradient(0.1), loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    ```
    """

    @staticmethod
    def _check_two_pass_kwargs(name, kwargs):
        steps = kwargs.get("gradient_accumulation_steps")
        if steps is not None and steps != 1:
            raise ValueError(
                f"`gradient_accumulation_steps` is not supported by {name}: "
                "the first-pass quantities of a step would not match the "
                "accumulated second-pass gradient. Use a larger batch "
                "instead. Received: gradient_accumulation_steps="
                f"{steps!r}"
            )

    def step_plan(self):
        return StepPlan(second_pass=True)

    def _variables_for_point(self, gradients, trainable_variables):
        """(gradients, variables) of `second_pass_point`: each gradient in
        its variable's dtype, zeros for a missing one."""
        variables = self._point_variables(gradients, trainable_variables)
        grads = [
            ops.zeros(tuple(v.shape), dtype=v.dtype) if g is None
            else ops.cast(g, v.dtype)
            for g, v in zip(gradients, variables)
        ]
        return grads, variables

    def _point_variables(self, gradients, trainable_variables):
        """The variables of `second_pass_point` (the built ones by
        default), checked against the gradients."""
        variables = (
            list(trainable_variables) if trainable_variables is not None
            else _keras_compat.optimizer_variables_built_for(self)
        )
        if not self.built:
            self.build(variables)
        if len(gradients) != len(variables):
            raise ValueError(
                "`second_pass_point` needs one gradient per trainable "
                f"variable. Received {len(gradients)} gradients for "
                f"{len(variables)} variables."
            )
        return variables


@keras.saving.register_keras_serializable(package="keras_bayes")
class SAM(TwoPassOptimizer, keras.optimizers.Optimizer):
    """Sharpness-aware minimization with heavy-ball SGD or Adam.

    Each step takes two gradients on the same minibatch (it needs
    `keras_bayes.training.TwoPassModel`). With `batch_split=M` the
    minibatch is cut into M equal sub-batches j (m-sharpness), each with its
    own perturbation:

    ```
    g1_j = ∇ℓ̄_j(w)                       # first pass on sub-batch j
    ε_j  = ρ·g1_j / ‖g1_j‖               # ‖·‖: global norm over all variables
    g2   = mean_j ∇ℓ̄_j(w + ε_j)          # second passes, same sub-batches
    g    = g2 + δ·w                       # coupled L2
    base="sgd":   gm = μ·gm + g,  w = w − α·gm
    base="adam":  m = β1·m + (1−β1)·g,  v = β2·v + (1−β2)·g²,
                  w = w − α·m̂/(sqrt(v̂) + ε_adam),
                  m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)
    ```

    `base="sgd"` with M = 8 is the SAM-SGD baseline of the bSAM code
    (Möllenhoff & Khan, 2023, `build_sam_optimizer`): every sub-batch is
    perturbed along its own normalised gradient and the update uses the
    mean of the M second gradients. `base="adam"` is SAM-Adam, the other
    SAM row of that paper: the Adam moments see only the perturbed
    gradient g2 (plus δ·w), with the bias correction and ε of Kingma & Ba
    (ε added to sqrt(v̂)); the authors' public code has no Adam baseline,
    so this is SAM's rule (Foret et al., 2021: the base optimizer receives
    the gradient at w + ε) with the paper's Adam as base.

    With `adaptive=True` the perturbation is ASAM's (Kwon et al., 2021):

    ```
    T_j  = |w| + η                        # elementwise
    ε_j  = ρ·T_j²·g1_j / ‖T_j·g1_j‖
    ```

    as in the widely used PyTorch SAM implementation
    (`SAM(..., adaptive=True)`, which has η = 0) and the ASAM authors' code
    (η = 0.01 by default; here `eta`, default 0). ASAM's ρ is typically
    larger than SAM's (e.g. 2.0 with SGD on CIFAR-10, their paper).

    SAM learns no posterior: the model's variables hold the weights.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable.
            Defaults to 0.01.
        rho: float >= 0, the radius of the perturbation. 0 gives the base
            optimizer (at twice the cost). Defaults to 0.05.
        momentum: float in [0, 1), the heavy-ball coefficient μ of
            `base="sgd"`. Defaults to 0.9.
        weight_decay: float >= 0, the coupled L2 coefficient δ (added to
            the gradient at w, not Keras' decoupled decay).
            `exclude_from_weight_decay` gives δ = 0 to variables. Defaults
            to 0.
        epsilon: float > 0 added to the norm of the perturbation. Defaults
            to 1e-12.
        base: `"sgd"` (heavy-ball SGD, the default) or `"adam"`.
        beta_1, beta_2: floats in [0, 1), Adam's moment rates (only for
            `base="adam"`). Default to 0.9 and 0.999.
        adam_epsilon: float > 0, Adam's ε (only for `base="adam"`).
            Defaults to 1e-8.
        batch_split: int >= 1, M, the number of sub-batches of
            m-sharpness, each with its own perturbation. The batch size
            should be a multiple of M. Loss and metrics are logged from
            the first pass of sub-batch 0. Defaults to 1 (the whole
            minibatch is one group).
        adaptive: bool, ASAM's scale-invariant perturbation. Defaults to
            False.
        eta: float >= 0, η of ASAM's scale T = |w| + η. Defaults to 0.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm` (applied to
            g2 only), `loss_scale_factor` and `name`.
            `gradient_accumulation_steps` and `use_ema` are rejected.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")

    model = keras_bayes.training.TwoPassModel(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))
    model.compile(optimizer=keras_bayes.optimizers.SAM(
        1e-3, rho=0.05, base="adam", batch_split=8, weight_decay=2e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # m = 32 / 8 = 4
    ```

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021, arXiv:2010.01412.
        Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks", ICML 2021,
        arXiv:2102.11600.
        Möllenhoff & Khan, "SAM as an Optimal Relaxation of Bayes",
        ICLR 2023, arXiv:2210.01620.
    """

    BASES = ("sgd", "adam")

    def __init__(self, learning_rate=0.01, rho=0.05, momentum=0.9,
                 weight_decay=0.0, epsilon=1e-12, base="sgd", beta_1=0.9,
                 beta_2=0.999, adam_epsilon=1e-8, batch_split=1,
                 adaptive=False, eta=0.0, name=None, **kwargs):
        check_learning_rate(learning_rate)
        rho = check_number("rho", rho, low=0.0)
        momentum = check_number("momentum", momentum, low=0.0,
                                high=1.0, high_open=True)
        weight_decay = 0.0 if weight_decay is None else weight_decay
        weight_decay = check_number("weight_decay", weight_decay,
                                    low=0.0)
        epsilon = check_number("epsilon", epsilon, low=0.0,
                               low_open=True)
        base = check_choice("base", base, self.BASES)
        beta_1 = check_number("beta_1", beta_1, low=0.0, high=1.0,
                              high_open=True)
        beta_2 = check_number("beta_2", beta_2, low=0.0, high=1.0,
                              high_open=True)
        adam_epsilon = check_number("adam_epsilon", adam_epsilon, low=0.0,
                                    low_open=True)
        batch_split = check_positive_integer("batch_split", batch_split)
        adaptive = check_choice("adaptive", adaptive, (False, True))
        eta = check_number("eta", eta, low=0.0)
        self._check_two_pass_kwargs("SAM", kwargs)
        if kwargs.get("use_ema"):
            raise ValueError(
                "`use_ema=True` is not supported by SAM. "
                "Received: use_ema=True"
            )
        super().__init__(learning_rate=learning_rate,
                         weight_decay=weight_decay, name=name or "SAM",
                         **kwargs)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.base = base
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.adam_epsilon = adam_epsilon
        self.batch_split = int(batch_split)
        self.adaptive = bool(adaptive)
        self.eta = eta

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = [
            self.add_variable_from_reference(v, name="momentum")
            for v in var_list
        ]
        if self.base == "adam":
            self._velocities = [
                self.add_variable_from_reference(v, name="velocity")
                for v in var_list
            ]

    def step_plan(self):
        return StepPlan(sub_batches=self.batch_split, second_pass=True)

    # Overrides a private Keras hook (`_keras_compat.OPTIMIZER_HOOKS`).
    def _apply_weight_decay(self, variables):
        # δ is coupled (added to the gradient in `update_step`).
        return

    def second_pass_point(self, gradients, trainable_variables=None):
        """w + ε (SAM or ASAM), one tensor per trainable variable."""
        grads, variables = self._variables_for_point(gradients,
                                                     trainable_variables)
        weights = [ops.convert_to_tensor(v) for v in variables]
        if not self.adaptive:
            norm = global_norm(grads)
            return [w + sam_perturbation(g, norm, self.rho, self.epsilon)
                    for g, w in zip(grads, weights)]
        scales = [asam_scale(w, self.eta) for w in weights]
        norm = global_norm([t * g for t, g in zip(scales, grads)])
        return [w + asam_perturbation(g, t, norm, self.rho, self.epsilon)
                for g, t, w in zip(grads, scales, weights)]

    def update_step(self, gradient, variable, learning_rate):
        index = _keras_compat.variable_index(self, variable)
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        weights = ops.convert_to_tensor(variable)
        decay = (
            self.weight_decay
            if self.weight_decay
            and _keras_compat.uses_weight_decay(self, variable)
            else 0.0
        )
        slot = self._momentums[index]
        if self.base == "sgd":
            new_momentum = heavy_ball_momentum(
                ops.convert_to_tensor(slot), gradient, weights,
                self.momentum, decay,
            )
            self.assign(slot, new_momentum)
            self.assign(variable, weights - learning_rate * new_momentum)
            return
        velocity = self._velocities[index]
        first, second = adam_moments(
            ops.convert_to_tensor(slot), ops.convert_to_tensor(velocity),
            gradient + decay * weights, self.beta_1, self.beta_2)
        step = ops.cast(self.iterations + 1, dtype)
        self.assign(slot, first)
        self.assign(velocity, second)
        self.assign(variable, weights - learning_rate * adam_step(
            first, second, step, self.beta_1, self.beta_2,
            self.adam_epsilon))

    def get_config(self):
        config = super().get_config()
        config.update({
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "base": self.base,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "adam_epsilon": self.adam_epsilon,
            "batch_split": self.batch_split,
            "adaptive": self.adaptive,
            "eta": self.eta,
        })
        return config


__all__ = ["SAM", "TwoPassOptimizer"]
