"""Per-example gradients and the training step VOGN needs.

VOGN's curvature is the mean of the per-example squared gradients (a
Gauss-Newton / empirical-Fisher diagonal), which the mean minibatch gradient
Keras hands an optimizer cannot give. `per_example_squared_gradients`
computes them with each backend's vectorization over the batch:
`jax.vmap(jax.value_and_grad(...))`, `torch.func.vmap(torch.func.grad(...))`
and `tf.vectorized_map` (with the fallback to a `while_loop` disabled), each
around the model's `stateless_call` on one example (the backend modules'
`per_example_gradients`).

`VOGNModel` wraps a Keras model and overrides `train_step` to feed any
`keras_bayes.training.contract.PerExampleOptimizer` (VOGN):

```
model = keras_bayes.per_example.VOGNModel(model)
model.compile(optimizer=keras_bayes.optimizers.VOGN(1e-3, ess=len(x)),
              loss="sparse_categorical_crossentropy")
model.fit(x, y)
```

Supported: single-input, single-output models trained with one compiled loss
(a string or `keras.losses.Loss`), without sample weights; layers whose
per-example forward pass is vectorizable: Dense, Conv, pooling, activations,
normalisation over features (`LayerNormalization`, `GroupNormalization`,
FRN) on every backend, and `BatchNormalization` as below.

**BatchNormalization**, as the VOGN paper does it (Osawa et al., 2019; code
`team-approx-bayes/dl-with-bayes` on `cybertronai/pytorch-sso`, option
`non_reg_for_bn`). In training mode a BN layer normalises with the mean and
variance of its batch, so one example's loss depends on the others and a
per-example gradient needs a convention. Here (`batch_norm="frozen"`, the
default of `per_example_squared_gradients`; `VOGNModel(batch_norm=
"deterministic")`):

* the statistics μ_B, σ²_B of every trainable BN layer are computed once, by
  the forward pass on the whole batch, and held constant in the per-example
  pass: example i is normalised as (a_i − μ_B)/sqrt(σ²_B + ε), exactly its
  activations of the batch pass, and

      g_i = ∂ℓ_i/∂θ  with μ_B, σ²_B fixed.

  The approximation: the batch gradient also differentiates μ_B and σ²_B
  (for weights before a BN layer, BN's backward subtracts the batch mean of
  the output-gradient and its projection on the normalised input), so
  mean_i g_i is *not* the minibatch gradient there. pytorch-sso, which reads
  per-layer activations and output-gradients from the batch backward pass,
  keeps those cross-example terms inside each example's output-gradient;
  for weights after the last BN layer (and for that layer's own γ, β) the
  two definitions agree. `VOGNModel` therefore takes ĝ from the ordinary
  batch backward pass (the same minibatch gradient as Keras and
  pytorch-sso) and only ĥ = mean_i g_i² from the per-example pass.
  (pytorch-sso also approximates the squares for conv biases and BN2d:
  (Σ_hw x̂·g)² is replaced by Σ_hw x̂² · Σ_hw g²; ours are exact.)
* BN's γ and β are kept deterministic: `VOGNModel` marks them with
  the optimizer's `mark_deterministic`, so they get no noise and no prior
  and are updated by VOGN's mean step with their own curvature (see
  `VOGN`).

Not supported, with a clear error: BatchNormalization with `renorm=True`
(its corrections depend on the moving statistics in a way this pass does not
reproduce), `batch_norm="error"` with BN layers, and operations the backend
cannot vectorize (the error names the backend's reason).

**Convolutions on torch.** Keras 3.15's torch convolutions (`ops.conv`, used by
the Conv1D/2D/3D layers) copy their operands into the channels-last format
(`Tensor.contiguous(memory_format=torch.channels_last)`), which
`torch.func.vmap` does not implement. The per-example pass runs under a
`TorchFunctionMode`, active only around its own `vmap` call, that turns that
request into an ordinary (channels-first) `contiguous()`: the same values in
another memory layout, so the convolution and its gradients are unchanged.
Nothing in Keras or torch is patched; outside the pass nothing changes.

Random layers (Dropout) see one random mask per step shared by all
examples of the per-example pass. Layer regularisation losses
(`kernel_regularizer`, `add_loss`) are not part of the per-example gradient
(nor, with BN, of the batch gradient VOGNModel hands VOGN); use VOGN's
`weight_decay` (the prior) instead.
"""

import keras
from keras import ops

from keras_bayes._validation import check_choice
from keras_bayes.training import batch_norm as bn
from keras_bayes.training import shared
from keras_bayes.training._backend import steps
from keras_bayes.training.wrapper import WrapperModel

BATCH_NORM_CHOICES = bn.BATCH_NORM_CHOICES
VOGN_MODEL_BATCH_NORM_CHOICES = ("deterministic", "error")


def per_example_squared_gradients(model, x, y, loss, trainable_values=None,
                                  non_trainable_values=None,
                                  batch_norm="frozen"):
    """Mean loss, mean gradient and mean squared gradient over examples.

    For the batch (x, y) with n examples and ℓ_i the loss of example i:

        loss      = (1/n) Σ ℓ_i
        gradients = (1/n) Σ ∇ℓ_i              (Keras' minibatch gradient)
        squared   = (1/n) Σ (∇ℓ_i)²            (elementwise; VOGN's ĥ)

    Each ∇ℓ_i is the gradient of `loss(y[i:i+1], model(x[i:i+1]))` with
    respect to the trainable variables, computed for all i at once by the
    backend's vectorizing map (jax.vmap, torch.func.vmap, tf.vectorized_map).

    With trainable BatchNormalization layers and `batch_norm="frozen"`, the
    layers normalise example i with the mean and variance of the whole batch
    (from one forward pass on it, in training mode) held constant, as in the
    module docstring; `gradients` is then the mean of those per-example
    gradients, which differs from the minibatch gradient for weights before
    a BN layer (that one also differentiates the statistics).

    Args:
        model: a built Keras model with one input and one output.
        x, y: the batch (tensors or arrays with a leading batch axis).
        loss: `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred) -> scalar` (the mean over its batch).
        trainable_values, non_trainable_values: values to evaluate at
            instead of the model's variables (same order as
            `model.trainable_variables` / `model.non_trainable_variables`).
        batch_norm: `"frozen"` (the default): BN layers use the batch's
            statistics held fixed; `"error"`: raise if the model has a
            trainable BatchNormalization layer.

    Returns:
        `(loss, gradients, squared_gradients)`: a scalar tensor and two
        lists of tensors shaped like the trainable variables.

    Raises:
        ValueError: the model contains BatchNormalization that
            `batch_norm` rejects (or with `renorm=True`), or the backend
            cannot vectorize its forward pass over single examples.

    Example: the mean of the squares is at least the square of the mean
    (their difference is the gradients' variance over the examples):

    ```python
    import keras
    import numpy as np
    from keras import ops
    from keras_bayes.training import per_example_squared_gradients

    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    loss, gradients, squared = per_example_squared_gradients(
        model, x, y, keras.losses.MeanSquaredError())
    for mean, mean_square in zip(gradients, squared):
        mean, mean_square = ops.convert_to_numpy(mean), ops.convert_to_numpy(
            mean_square)
        assert np.all(mean_square >= mean ** 2 - 1e-6)
    ```
    """
    check_choice("batch_norm", batch_norm, BATCH_NORM_CHOICES)
    layers = bn.batch_coupled_layers(model)
    bn.check_batch_norm(layers, batch_norm)
    loss = shared.scalar_loss(loss)
    trainable = (
        [ops.convert_to_tensor(v) for v in model.trainable_variables]
        if trainable_values is None else list(trainable_values))
    non_trainable = (
        [ops.convert_to_tensor(v) for v in model.non_trainable_variables]
        if non_trainable_values is None else list(non_trainable_values))
    x = ops.convert_to_tensor(x)
    y = ops.convert_to_tensor(y)
    statistics = None
    if layers:
        with steps.no_gradient_tracking():
            statistics = bn.batch_statistics(model, x, trainable,
                                             non_trainable, layers)
    return shared.squared_gradients_at(
        steps.per_example_gradients, model, loss, trainable, non_trainable,
        x, y, layers, statistics)


@keras.saving.register_keras_serializable(package="keras_bayes")
class VOGNModel(WrapperModel):
    """A model whose training step hands VOGN per-example curvature.

    Each step: (1) the ordinary forward pass on the batch for the loss,
    metrics and non-trainable updates; (2) the per-example gradients of the
    compiled loss at the same weights (the current posterior sample);
    (3) `optimizer.set_squared_gradients` with their mean square; (4)
    `optimizer.apply` with their mean (the `PerExampleOptimizer` contract of
    `keras_bayes.training.contract`).

    With trainable BatchNormalization layers (`batch_norm="deterministic"`,
    the VOGN paper's treatment): step (1) also records each BN layer's batch
    statistics and takes the minibatch gradient ĝ by the ordinary backward
    pass; step (2) holds the statistics fixed (see the module docstring) and
    gives ĥ only; and BN's γ and β are marked deterministic on the optimizer
    (`mark_deterministic`: no noise, no prior).

    With an optimizer that is not a `PerExampleOptimizer` it runs Keras'
    own `train_step`. See the module docstring for what is supported.

    Args:
        inner: the `keras.Model` to train (one input, one output).
        batch_norm: `"deterministic"` (the default) or `"error"` (raise on
            a trainable BatchNormalization layer, as before this option).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    ```python
    import keras
    import numpy as np
    import keras_bayes

    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model = keras_bayes.training.VOGNModel(inner)
    model.compile(optimizer=keras_bayes.optimizers.VOGN(0.05, ess=len(x)),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    std = model.optimizer.posterior_std()   # one array per variable
    ```
    """

    wrapper_arguments = ("batch_norm",)

    def __init__(self, inner, batch_norm="deterministic", **kwargs):
        check_choice("batch_norm", batch_norm, VOGN_MODEL_BATCH_NORM_CHOICES)
        super().__init__(inner, **kwargs)
        self.batch_norm = batch_norm

    def train_step(self, *args):
        if shared.per_example_optimizer(self.optimizer) is None:
            return super().train_step(*args)
        layers = bn.batch_coupled_layers(self)
        bn.check_batch_norm(layers, "error" if self.batch_norm == "error"
                            else "frozen")
        return steps.per_example_step(self, layers, *args)


__all__ = ["VOGNModel", "per_example_squared_gradients"]
