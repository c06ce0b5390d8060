"""Bad input raises a `ValueError` that names the argument and its range."""

import keras
import numpy as np
import pytest

from keras_bayes.optimizers import SOBA


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ess": 0}, r"`ess` must be in \(0.0, inf\]"),
        ({"ess": -5}, r"`ess`"),
        ({"ess": float("nan")}, r"`ess` must be a finite"),
        ({"ess": "50000"}, r"`ess` must be a real number"),
        ({"hess_init": 0.0}, r"`hess_init` must be in \(0.0, inf\]"),
        ({"beta1": 1.0}, r"`beta1` must be in \[0.0, 1.0\)"),
        ({"beta1": -0.1}, r"`beta1`"),
        ({"beta2": 0.0}, r"`beta2` must be in \(0.0, 1.0\]"),
        ({"beta2": 1.5}, r"`beta2`"),
        ({"weight_decay": -1e-4}, r"`weight_decay` must be in \[0.0, inf\]"),
        ({"hess_approx": "fisher"}, r"`hess_approx` must be one of"),
        ({"clip_radius": 0}, r"`clip_radius`"),
        ({"mc_samples": 0}, r"`mc_samples` must be an integer >= 1"),
        ({"mc_samples": 2.5}, r"`mc_samples`"),
        ({"mc_samples": 4, "gradient_accumulation_steps": 2},
         r"`gradient_accumulation_steps` cannot be combined"),
        ({"learning_rate": -0.1}, r"`learning_rate` must be in \[0.0"),
        ({"seed": 1.5}, r"`seed` must be an integer"),
        ({"use_ema": True}, r"`use_ema=True` is not supported"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"learning_rate": 0.1, "ess": 100.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        SOBA(**args)


def test_constraints_are_rejected_with_the_variable_named():
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg()),
    ])
    model.compile(SOBA(0.1, ess=10.0), "mse")
    with pytest.raises(ValueError, match="constraint.*kernel"):
        model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)


def test_posterior_api_before_build_is_a_clear_error():
    with pytest.raises(ValueError, match="no posterior yet"):
        SOBA(0.1, ess=10.0).posterior_std()


def test_infinite_clip_radius_and_none_are_accepted():
    assert SOBA(0.1, ess=1.0, clip_radius=None).clip_radius == float("inf")
    assert SOBA(0.1, ess=1.0, weight_decay=None).weight_decay == 0.0
