# %% [markdown]
# # Getting started with keras_bayes
#
# SOBA (published as IVON) trains an ordinary Keras model and, at the same
# cost as Adam, learns a Gaussian posterior over its weights: a mean m and a
# standard deviation σ per weight, with σ² = 1 / (ess · (h + δ)), where h is
# a running estimate of the loss curvature. Flat directions get wide
# posteriors, sharp ones narrow posteriors.
#
# This notebook trains an MLP on MNIST-1D (generated locally, no download)
# with SOBA, looks at the posterior, and compares predictions at the mean
# with predictions averaged over posterior samples.
#
# The hyperparameters that matter:
# - `ess`: the training-set size (times the data-augmentation factor).
# - `learning_rate`: on an SGD scale (the first step is an SGD step), with a
#   warmup/cosine schedule for long runs.
# - `hess_init`: 0.01–1; small values give noisy samples, large values a
#   near-deterministic network.
# - `beta2`: close to 1; 0.9999 lets h move within a short run.
#
# Run it as a script or open it with jupytext. `KERAS_BAYES_FAST=1` shortens
# it for the test suite.

# %%
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

import keras_bayes
from keras_bayes.datasets import load_mnist1d

FAST = os.environ.get("KERAS_BAYES_FAST") == "1"
EPOCHS = 3 if FAST else 40
keras.utils.set_random_seed(0)
(x_train, y_train), (x_test, y_test) = load_mnist1d()

# %% [markdown]
# ## Five lines of training
# The only changes from an Adam script: the optimizer, and a callback so that
# validation during `fit` runs at the posterior mean instead of at a sample.

# %%
model = keras.Sequential([
    keras.Input((40,)),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10),
])
optimizer = keras_bayes.optimizers.SOBA(
    learning_rate=0.2, ess=len(x_train), hess_init=0.1, beta2=0.9999,
    weight_decay=1e-3, seed=0)
model.compile(optimizer,
              keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
history = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32,
                    validation_data=(x_test, y_test), verbose=0,
                    callbacks=[keras_bayes.callbacks.SwapMeanWeights()])
print("val accuracy at the mean:", history.history["val_accuracy"][-1])

# %% [markdown]
# ## The posterior at a glance
# After `fit` the model holds the posterior mean; the optimizer holds the
# rest. `posterior_std()` returns one array per trainable variable.

# %%
for variable, std in zip(model.trainable_variables,
                         optimizer.posterior_std()):
    print(f"{variable.path:28s} median σ = {np.median(std):.4f}  "
          f"range [{std.min():.4f}, {std.max():.4f}]")

# %% [markdown]
# ## At the mean, and averaged over the posterior
# `Predictive` averages the class probabilities of `num_samples` posterior
# samples (in log space) and restores the mean afterwards.

# %%
def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


at_mean = softmax(np.asarray(model.predict(x_test, verbose=0)))
averaged = keras_bayes.Predictive(model, num_samples=8 if FAST else 32,
                                  from_logits=True, seed=0).predict(x_test)
for name, probs in [("mean", at_mean), ("posterior average", averaged)]:
    report = keras_bayes.metrics.classification_report(y_test, probs)
    print(f"{name:18s} " + "  ".join(f"{k} {v:.4f}" for k, v in
                                     report.items()))

# %% [markdown]
# ## What to try next
# - Compare with `keras.optimizers.Adam(1e-3)`: on this task Adam overfits
#   and its NLL and ECE are several times SOBA's (`python examples/demo.py`).
# - Save and reload: `model.save("m.keras")` keeps the posterior, the noise
#   state and the step counter; `keras.models.load_model` (after
#   `import keras_bayes`) restores them and training resumes exactly.
# - Switch backend with `KERAS_BACKEND=tensorflow|jax|torch`: nothing else
#   changes.

# %%
print("Tutorial finished.")
