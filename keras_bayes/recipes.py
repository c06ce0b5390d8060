"""Published training recipes, as configured Keras optimizers.

    from keras_bayes import recipes

    optimizer = recipes.soba_gpt2_recipe(train_tokens=len(train_text),
                                         total_steps=300)
    model.compile(optimizer=optimizer, loss=...)

The GPT-2 recipes are those of Shen et al. (2024), "Variational Learning is
Effective for Large Deep Networks" (IVON, here SOBA), for GPT-2 on
OpenWebText, and of the AdamW baseline trained with the same code (nanoGPT).
The values and their sources are listed in each function's docstring; the
learning rates are rescaled for small models, as explained there and in
`docs/large_models.md`.
"""

import keras

from keras_bayes._validation import check_number
from keras_bayes._validation import check_positive_integer
from keras_bayes.optimizers.soba import SOBA

# Variable names (Keras' `variable.name`, not the path) that the GPT-2
# recipes keep out of weight decay: biases and LayerNorm scales and
# offsets. Embedding tables and kernels are decayed. In nanoGPT the rule is
# "decay the ≥ 2-D tensors"; Keras' attention biases are 2-D (heads ×
# head size), so the rule is stated by name here, which gives the same
# split as nanoGPT's.
GPT2_NO_DECAY_NAMES = ("bias", "gamma", "beta")

# GPT-2 small with SOBA (ivon-experiments `gpt2/train_ivon.py` and its
# configs): α = 300, warmup 2 000 of 100 000 iterations.
GPT2_SOBA_LEARNING_RATE = 300.0
GPT2_WARMUP_FRACTION = 2000 / 100_000


def warmup_cosine_schedule(peak_learning_rate, total_steps, warmup_steps):
    """Linear warmup from 0 to the peak, then cosine decay to 0.

    The schedule of the GPT-2 recipes (nanoGPT's `get_lr` with
    `min_lr = 0`), as a serialisable `keras.optimizers.schedules.CosineDecay`.
    Keras counts from step 0, at which the rate is 0: the first update moves
    nothing but the momentum.

    Args:
        peak_learning_rate: float > 0, the rate reached after warmup.
        total_steps: int, the length of the run; the rate is 0 at its end.
        warmup_steps: int in [0, total_steps).
    """
    check_number("peak_learning_rate", peak_learning_rate, low=0.0,
                 low_open=True)
    total_steps = check_positive_integer("total_steps", total_steps)
    warmup_steps = int(warmup_steps)
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            "`warmup_steps` must be in [0, total_steps). Received: "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak_learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=0.0,
        warmup_target=peak_learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _default_warmup(total_steps, warmup_steps):
    if warmup_steps is not None:
        return warmup_steps
    # GPT-2's 2 000 of 100 000 iterations, at least one step.
    return max(1, round(GPT2_WARMUP_FRACTION * total_steps))


def soba_gpt2_recipe(train_tokens, total_steps, learning_rate=1500.0,
                     warmup_steps=None, hess_init=1e-3, weight_decay=1e-6,
                     beta1=0.9, beta2=0.99999, clip_radius=1e-3,
                     global_clipnorm=1.0, no_decay_names=GPT2_NO_DECAY_NAMES,
                     seed=None, **kwargs):
    """SOBA configured with the GPT-2 recipe of Shen et al. (2024).

    Every value and its source (ivon-experiments `gpt2/train_ivon.py` with
    its GPT-2 small config, and the paper's appendix on the GPT-2 runs):

    - `ess` λ = `train_tokens`: the recipe sets 1e10, about the number of
      training tokens (the loss is a mean per token);
    - `hess_init` h0 = 1e-3: recipe;
    - `weight_decay` δ = 1e-6 on kernels and embeddings, 0 on biases and
      LayerNorm: recipe (nanoGPT's "≥ 2-D tensors" rule, stated by name);
    - `beta1` = 0.9, `beta2` = 0.99999: recipe;
    - `clip_radius` ξ = 1e-3: recipe;
    - `global_clipnorm` = 1.0: recipe (each sampled gradient is clipped to
      norm 1);
    - schedule: linear warmup then cosine to 0: recipe (warmup 2 000 of
      100 000 iterations; here 2 % of `total_steps` by default);
    - `learning_rate` α = 1 500: GPT-2 small's 300, ×5 (below);
    - `rescale_lr`, `debias`, the Price estimator, one MC sample per step:
      recipe (the package defaults).

    Learning rate. With h0 = 1e-3 and ξ = 1e-3 the preconditioned step
    g/(h + δ) is clipped for almost every coordinate early on, so SOBA moves
    each weight by at most α·(h0 + δ)·ξ per step (sign descent): 3e-4 for
    GPT-2 small's α = 300, half of the AdamW baseline's 6e-4. Small models
    take larger steps (nanoGPT's character-level model uses AdamW at 1e-3,
    its GPT-2 small 6e-4; the IVON rates fall with size, 300 / 200 / 150
    for GPT-2 small / medium / large); the default here, α = 1 500,
    scales GPT-2 small's α by 5, a maximal step of 1.5e-3, and is paired
    with AdamW at 5 × 6e-4 = 3e-3 in `adamw_gpt2_recipe` (the same factor,
    so the two keep the recipe's ratio).

    Mixed precision. Under `mixed_bfloat16` (the recipe trains in bf16
    autocast with float32 master weights) the model's variables and so the
    optimizer's slots (mean, h, momentum) and noise are float32: σ ≈ 3e-4
    for GPT-2 would round away in bf16 weights.

    Gradient clipping. Keras clips in `apply`, right before the update, so
    SOBA's momentum and its Price curvature estimate
    ĥ = λ·(h + δ)·ε·clip(g) both see the clipped gradient, as in the
    recipe, where ĥ is biased by the clipping too (§1.8). With
    `gradient_accumulation_steps` Keras clips the mean of the micro-batch
    gradients, where the official script clips each one.

    Short runs. β2 = 0.99999 gives h a time constant of 1e5 steps, so in a
    run of a few hundred steps h stays near h0 and the posterior standard
    deviation near 1/sqrt(λ·h0): 3e-4 for GPT-2's λ = 1e10, but 0.05 for a
    corpus of 4e5 characters, which regularises a small model into
    underfitting. `docs/large_models.md` measures this; a larger `ess`
    (a colder posterior) recovers AdamW's loss.

    Args:
        train_tokens: number > 0, the training tokens, used as `ess`.
        total_steps: int, optimizer steps of the run (for the schedule).
        learning_rate: float > 0, the peak α. Defaults to 1 500.
        warmup_steps: int or None; None takes the recipe's 2 % of
            `total_steps` (at least 1).
        hess_init, weight_decay, beta1, beta2, clip_radius,
            global_clipnorm, seed: as for `SOBA`; defaults from the recipe.
        no_decay_names: regular expressions for the names of variables
            with δ = 0; defaults to biases and LayerNorm (`bias`, `gamma`,
            `beta`).
        **kwargs: further `SOBA` arguments (`name`, `fused_update`, ...).

    Returns:
        A `keras_bayes.optimizers.SOBA`; its config records the
        exclusions (`no_decay_names`).
    """
    total_steps = check_positive_integer("total_steps", total_steps)
    schedule = warmup_cosine_schedule(
        learning_rate, total_steps,
        _default_warmup(total_steps, warmup_steps))
    return SOBA(
        learning_rate=schedule,
        ess=train_tokens,
        hess_init=hess_init,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        clip_radius=clip_radius,
        global_clipnorm=global_clipnorm,
        no_decay_names=no_decay_names,
        seed=seed,
        **kwargs,
    )


def adamw_gpt2_recipe(total_steps, learning_rate=3e-3, warmup_steps=None,
                      weight_decay=0.1, beta1=0.9, beta2=0.95,
                      global_clipnorm=1.0,
                      no_decay_names=GPT2_NO_DECAY_NAMES, **kwargs):
    """Keras AdamW configured with the GPT-2 AdamW baseline recipe.

    Sources: nanoGPT `train.py` defaults, the baseline of Shen et al.
    (its appendix): decoupled weight decay 0.1 on the ≥ 2-D
    weights and 0 on biases and LayerNorm, β = (0.9, 0.95), gradient norm
    clipped to 1, linear warmup (2 % of the run) then cosine to 0. The peak
    learning rate is GPT-2 small's 6e-4 scaled by the same factor 5 as
    `soba_gpt2_recipe`'s, 3e-3. Keras' AdamW decays as PyTorch's
    (w ← w − lr·wd·w). The exclusions are set with
    `exclude_from_weight_decay`, which Keras does not save in the config.

    Args:
        total_steps: int, optimizer steps of the run.
        learning_rate: float > 0, the peak rate. Defaults to 3e-3.
        warmup_steps: int or None (2 % of `total_steps`, at least 1).
        weight_decay, beta1, beta2, global_clipnorm: as for
            `keras.optimizers.AdamW`; defaults from the recipe.
        no_decay_names: names of variables without decay.
        **kwargs: further `keras.optimizers.AdamW` arguments.

    Returns:
        A `keras.optimizers.AdamW`.
    """
    total_steps = check_positive_integer("total_steps", total_steps)
    schedule = warmup_cosine_schedule(
        learning_rate, total_steps,
        _default_warmup(total_steps, warmup_steps))
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, beta_1=beta1,
        beta_2=beta2, global_clipnorm=global_clipnorm, **kwargs)
    if no_decay_names:
        optimizer.exclude_from_weight_decay(var_names=list(no_decay_names))
    return optimizer


__all__ = [
    "GPT2_NO_DECAY_NAMES",
    "adamw_gpt2_recipe",
    "soba_gpt2_recipe",
    "warmup_cosine_schedule",
]
