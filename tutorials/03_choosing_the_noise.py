# %% [markdown]
# # Choosing the noise: the Lie-group Bayesian learning rule
#
# The Bayesian learning rule usually means a Gaussian posterior. Kıral,
# Möllenhoff & Khan (AISTATS 2023) write the posterior instead as a group
# acting on a fixed base noise ξ ~ q0, and learn the group element:
#
# - **additive** group: θ = w + c·ξ. Only the location w is learnt; the rule
#   is momentum SGD with each gradient taken at a perturbed weight:
#   gm ← β1·gm + (1−β1)·(∇ℓ̄(θ) + δθ), w ← w − α·gm.
# - **affine** group: θ = b + A·c·ξ with a learnt positive scale A per
#   weight, moved along the group's exponential map:
#   MU ← β2·MU + (1−β2)·(A·ε·g − τ),  MV ← β1·MV + (1−β1)·A·g,
#   b ← b + A·MV·φ(MU),  A ← A·exp(−α2·MU),  τ = temperature/N.
#   A stays positive by construction, and at the fixed point E[A·ε·g] = τ,
#   which for Gaussian noise on a quadratic is the Bayesian variance.
#
# Nothing in either rule needs ξ to be Gaussian: q0 can be **Gaussian,
# Uniform or Laplace** (and Rayleigh for the multiplicative group). The
# report's Figures 2/3 ask what the choice does; this notebook asks it on a
# small image task (scikit-learn's 8×8 digits, a small CNN, offline).
#
# Hyperparameters that matter: the noise scale c (`noise_scale`), the
# learning rate α (`learning_rate`), and for the affine rule the scale's
# step size α2 = `scale_lr_ratio`·α and the temperature; δ
# (`weight_decay`) is the prior precision per example, as everywhere in
# keras_bayes.
#
# `KERAS_BAYES_FAST=1` shortens it for the test suite.

# %%
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

import keras_bayes
from keras_bayes import plots
from keras_bayes.datasets import load_digits

FAST = os.environ.get("KERAS_BAYES_FAST") == "1"
EPOCHS = 3 if FAST else 30
SAMPLES = 4 if FAST else 16
OUT = os.environ.get("TMPDIR", "/tmp") if FAST else "docs"

(x, y), (x_test, y_test) = load_digits(seed=0)
x, x_test = x.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def additive(noise):
    return keras_bayes.optimizers.LieAdditive(
        0.5, beta1=0.8, noise=noise, noise_scale=0.02, weight_decay=1e-3,
        seed=0)


def affine(noise):
    return keras_bayes.optimizers.LieAffine(
        0.5, ess=len(x), scale_lr_ratio=0.5, noise=noise, noise_scale=0.02,
        weight_decay=1e-3, seed=0)


# %% [markdown]
# ## Two groups × three noise families
# Each run trains the same CNN from the same initial weights for the same
# number of epochs; predictions at the mean (the location) and averaged
# over posterior samples.

# %%
rows, scales = [], {}
for group, make in (("additive", additive), ("affine", affine)):
    for noise in ("gaussian", "uniform", "laplace"):
        keras.utils.set_random_seed(0)
        model = cnn()
        optimizer = make(noise)
        model.compile(optimizer, loss)
        model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0)
        predictive = keras_bayes.Predictive(model, num_samples=SAMPLES,
                                            from_logits=True, seed=0)
        for label, probs in (
                ("mean", predictive.predict_at_mean(x_test)),
                (f"{SAMPLES}-sample avg", predictive.predict(x_test))):
            report = keras_bayes.metrics.classification_report(y_test, probs)
            rows.append((group, noise, label, report))
        if group == "affine":
            scales[noise] = np.concatenate(
                [s.ravel() for s in optimizer.posterior_std()])

print(f"{'group':9s} {'noise':9s} {'prediction':16s} {'acc':>6s} "
      f"{'NLL':>6s} {'ECE':>6s} {'Brier':>6s}")
for group, noise, label, r in rows:
    print(f"{group:9s} {noise:9s} {label:16s} {r['accuracy']:6.3f} "
          f"{r['nll']:6.3f} {r['ece']:6.3f} {r['brier']:6.3f}")

# %% [markdown]
# Measured (JAX, 30 epochs, 2026-11-26): every combination reaches
# 93–95 % test accuracy with NLL 0.16–0.23 (additive 0.941–0.950, affine
# 0.931–0.939); on this small task the noise family changes the numbers by
# about as much as a different seed would, and averaging over samples
# changes little because the posterior is narrow (c = 0.02).
# Note that `noise_scale` c multiplies the base draw, as in the official
# code, and the families differ in spread at equal c: the standard deviation
# of the draw is c for Gaussian N(0, 1), c·√2 for Laplace(0, 1) and c/√12
# for Uniform(−½, ½) (the table in `keras_bayes.optimizers.noise`), which
# is what `posterior_std()` reports. "The same c" is not "the same spread":
# to compare families at equal variance, divide c by that factor.
#
# ## What the affine rule learnt
# The affine rule adapts a scale A per weight. The histogram shows the
# posterior standard deviations A·c·std(ξ) it ended with, per noise family.
# Measured (30 epochs): every scale grew by about 10 % from A = 1 and they
# hardly differ between weights (5–95 % range within 0.5 %). In so short a
# run the entropy term −τ of MU dominates the data term A·ε·g, whose
# average over steps is still near zero, so all scales move together; the
# per-weight separation the report describes needs long schedules (180
# epochs on CIFAR-10) or a larger `scale_lr_ratio`. The three spikes sit at
# different heights because the families have different spreads at equal c.

# %%
plt = plots.pyplot()
fig, ax = plt.subplots(figsize=(6, 3.2))
for noise, std in scales.items():
    ax.hist(np.log10(std), bins=60, histtype="step", label=noise)
ax.set_xlabel("log10 posterior std per weight (affine rule)")
ax.set_ylabel("weights")
ax.legend()
ax.set_title("Learned scales by noise family")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "tutorial03_affine_scales.png"), dpi=90)
for noise, std in scales.items():
    print(f"{noise:9s} posterior std: median {np.median(std):.4f}, "
          f"5–95 % [{np.quantile(std, 0.05):.4f}, "
          f"{np.quantile(std, 0.95):.4f}]")

# %% [markdown]
# ## What to try next
# - A larger `noise_scale` (0.05, 0.1): the additive rule then trades
#   accuracy for smoother minima; the affine rule shrinks the scales back
#   where the loss is sharp.
# - `keras_bayes.optimizers.LieMultiplicative` (Rayleigh noise, θ = m·ξ)
#   for positive weights.
# - The CIFAR-10 recipes of the paper: `python benchmarks/cifar10.py
#   --methods lie-additive,lie-affine` (tutorial 05).

# %%
print("Tutorial finished.")
