"""`keras_bayes.backend` on torch."""

import math

import torch

from keras_bayes.backend.common import agree_across_replicas  # noqa: F401
from keras_bayes.backend.common import compile_function  # noqa: F401
from keras_bayes.backend.common import step_normal  # noqa: F401
from keras_bayes.backend.common import optimizer_state_detached  # noqa: F401
from keras_bayes.backend.common import raise_unless  # noqa: F401
from keras_bayes.backend.common import single_device  # noqa: F401
from keras_bayes.backend.common import standard_normal  # noqa: F401

__all__ = ["agree_across_replicas", "assign_flat", "compile_function",
           "fuse_updates_by_default", "if_finite", "optimizer_state_detached",
           "raise_unless", "single_device", "standard_normal", "step_normal"]

# `raise_unless` is the eager check of `common`: one host sync per step, and
# only in the opt-in "raise" mode.


def assign_flat(assign, variables, flat):
    """One fused copy of the pieces of `flat` instead of a Python loop of
    `assign`s (`assign` is not needed)."""
    targets = [v.value for v in variables]
    pieces = torch.split(flat, [t.numel() for t in targets])
    with torch.no_grad():
        torch._foreach_copy_(
            targets, [p.view(t.shape) for p, t in zip(pieces, targets)])


# The flat update saves ~25 kernel launches and one random call per
# variable, and costs a concatenation and a copy back of every slot each
# step. Measured on the 2-core CPU: a clear gain on the step-cost CNN
# (docs/speed.md), a loss on the 1.6 M-weight MLP (6 variables, 264 k
# weights on average: 96 ms vs 78 ms a step).
FUSE_MAX_MEAN_ENTRIES = 100_000


def fuse_updates_by_default(variables):
    """True when the `variables` hold on average fewer than
    `FUSE_MAX_MEAN_ENTRIES` weights, where kernel launches outweigh the
    copies of the flat update (eager torch runs each op as one kernel)."""
    variables = list(variables)
    if not variables:
        return False
    entries = sum(math.prod(tuple(v.shape)) for v in variables)
    return entries / len(variables) < FUSE_MAX_MEAN_ENTRIES


def if_finite(finite, compute, keep):
    """`compute()` if the flag is True, else `keep()`: a Python branch on
    the flag (a host sync on a GPU), instead of a select per slot, each a
    pass over the weights in eager torch."""
    return compute() if bool(finite) else keep()
