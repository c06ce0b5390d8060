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
from keras_bayes._validation import check_learning_rate
from keras_bayes._validation import check_number
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
        grads = [
            ops.zeros(tuple(v.shape), dtype=v.dtype) if g is None
            else ops.cast(g, v.dtype)
            for g, v in zip(gradients, variables)
        ]
        return grads, variables


@keras.saving.register_keras_serializable(package="keras_bayes")
class SAM(TwoPassOptimizer, keras.optimizers.Optimizer):
    """Sharpness-aware minimization with heavy-ball SGD.

    Each step takes two gradients on the same minibatch (it needs
    `keras_bayes.training.TwoPassModel`):

    ```
    g1 = ∇ℓ̄(w)
    ε  = ρ·g1 / ‖g1‖                  # ‖·‖: global norm over all variables
    g2 = ∇ℓ̄(w + ε)
    gm = μ·gm + g2 + δ·w
    w  = w − α·gm
    ```

    This is the SAM-SGD baseline of the bSAM code (Möllenhoff & Khan, 2023)
    with the whole minibatch as one sharpness group (m = batch size). SAM
    learns no posterior: the model's variables hold the weights.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule` or a callable.
            Defaults to 0.01.
        rho: float >= 0, the radius of the perturbation. 0 gives SGD with
            momentum (at twice the cost). Defaults to 0.05.
        momentum: float in [0, 1), the heavy-ball coefficient μ. Defaults
            to 0.9.
        weight_decay: float >= 0, the coupled L2 coefficient δ (added to
            the gradient at w, not Keras' decoupled decay).
            `exclude_from_weight_decay` gives δ = 0 to variables. Defaults
            to 0.
        epsilon: float > 0 added to ‖g1‖. Defaults to 1e-12.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm` (applied to
            g2 only), `loss_scale_factor` and `name`.
            `gradient_accumulation_steps` is rejected.

    Reference:
        Foret et al., "Sharpness-Aware Minimization for Efficiently
        Improving Generalization", ICLR 2021, arXiv:2010.01412.
    """

    def __init__(self, learning_rate=0.01, rho=0.05, momentum=0.9,
                 weight_decay=0.0, epsilon=1e-12, name=None, **kwargs):
        check_learning_rate(learning_rate)
        rho = check_number("rho", rho, low=0.0)
        momentum = check_number("momentum", momentum, low=0.0,
                                high=1.0, high_open=True)
        weight_decay = 0.0 if weight_decay is None else weight_decay
        weight_decay = check_number("weight_decay", weight_decay,
                                    low=0.0)
        epsilon = check_number("epsilon", epsilon, low=0.0,
                               low_open=True)
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

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = [
            self.add_variable_from_reference(v, name="momentum")
            for v in var_list
        ]

    # Overrides a private Keras hook (`_keras_compat.OPTIMIZER_HOOKS`).
    def _apply_weight_decay(self, variables):
        # δ is coupled (added to the gradient in `update_step`).
        return

    def second_pass_point(self, gradients, trainable_variables=None):
        """w + ρ·g1/‖g1‖, one tensor per trainable variable."""
        grads, variables = self._variables_for_point(gradients,
                                                     trainable_variables)
        norm = global_norm(grads)
        return [
            ops.convert_to_tensor(v)
            + sam_perturbation(g, norm, self.rho, self.epsilon)
            for g, v in zip(grads, variables)
        ]

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
        new_momentum = heavy_ball_momentum(
            ops.convert_to_tensor(slot), gradient, weights, self.momentum,
            decay,
        )
        self.assign(slot, new_momentum)
        self.assign(variable, weights - learning_rate * new_momentum)

    def get_config(self):
        config = super().get_config()
        config.update({
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
        })
        return config


__all__ = ["SAM", "TwoPassOptimizer"]
