"""The prior of a `PosteriorOptimizer`: parsing `prior=` and the values of
its slots.

With `prior=None` the prior is N(0, 1/(λδ)), δ = `weight_decay`. A
`keras_bayes.Posterior` P (means m₀, precisions P₀) replaces it on the
variables it matches by N(m₀, diag(1/(τ·P₀))): in the update δ becomes the
per-weight τ·P₀/λ and the prior term δ·m becomes δ·(m − m₀) (see
`keras_bayes.optimizers.updates.centred_update` and docs/continual.md).
"""

import os

import numpy as np

from keras_bayes.posterior import Posterior
from keras_bayes.posterior import PriorSpec


def as_prior(prior):
    """`prior=` as None, a `Posterior` or a `PriorSpec` (from a config)."""
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


def prior_slot_values(match, shape, weight_decay, prior_strength, ess):
    """(centre m₀, per-example precision δ) of one variable's prior.

    `match` is what `Posterior.match` found for the variable: (mean,
    precision) or None, in which case the weight-decay prior N(0, 1/(λδ))
    stays.
    """
    if match is None:
        return (np.zeros(shape, "float32"),
                np.full(shape, weight_decay, "float32"))
    return match[0], prior_strength * match[1] / ess
