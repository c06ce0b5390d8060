"""SAM's options: m-sharpness (`batch_split`), `base="adam"`, ASAM.

Each is checked step by step against a NumPy re-derivation, compiled and
eager, plus saving and resuming.
"""

import keras
import numpy as np
import pytest

from keras_bayes.optimizers.sam import SAM
from tests.training.test_two_pass import compiled
from tests.training.test_two_pass import data
from tests.training.test_two_pass import dense_model
from tests.training.test_two_pass import mse_grads

EAGER = pytest.mark.parametrize("eager", [False, True],
                                ids=["compiled", "eager"])


def numpy_perturbed_gradient(weights, x, y, rho, batch_split, adaptive,
                             eta):
    """mean_j ∇ℓ̄_j(w + ε_j): ε_j = ρ·g_j/‖g_j‖, or ASAM's ρ·T²g_j/‖T·g_j‖
    (T = |w| + η), each sub-batch j normalised by its own norm."""
    cuts = np.array_split(np.arange(len(x)), batch_split)
    total = [np.zeros_like(w) for w in weights]
    for rows in cuts:
        g1 = mse_grads(*weights, x[rows], y[rows])
        scale = [np.abs(w) + eta if adaptive else np.ones_like(w)
                 for w in weights]
        norm = np.sqrt(sum(np.sum((t * g) ** 2) for t, g in zip(scale, g1)))
        point = [w + rho * t**2 * g / (norm + 1e-12)
                 for w, t, g in zip(weights, scale, g1)]
        g2 = mse_grads(*point, x[rows], y[rows])
        total = [a + g / batch_split for a, g in zip(total, g2)]
    return total


def numpy_sam(weights, x, y, steps, lr, rho, wd, base="sgd", mu=0.9,
              b1=0.9, b2=0.999, eps=1e-8, batch_split=1, adaptive=False,
              eta=0.0):
    """The weights after each of `steps` SAM steps on the batch (x, y)."""
    weights = [np.array(w, dtype="float64") for w in weights]
    first = [np.zeros_like(w) for w in weights]
    second = [np.zeros_like(w) for w in weights]
    out = []
    for t in range(1, steps + 1):
        g2 = numpy_perturbed_gradient(weights, x, y, rho, batch_split,
                                      adaptive, eta)
        g = [a + wd * w for a, w in zip(g2, weights)]
        if base == "sgd":
            first = [mu * m + gi for m, gi in zip(first, g)]
            weights = [w - lr * m for w, m in zip(weights, first)]
        else:
            first = [b1 * m + (1 - b1) * gi for m, gi in zip(first, g)]
            second = [b2 * v + (1 - b2) * gi**2 for v, gi in zip(second, g)]
            weights = [
                w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
                for w, m, v in zip(weights, first, second)]
        out.append(weights)
    return out


CASES = {
    "msharpness": dict(batch_split=2, rho=0.3, wd=0.05),
    "adam": dict(base="adam", rho=0.3, wd=0.05),
    "adam-msharpness": dict(base="adam", batch_split=4, rho=0.3, wd=0.05),
    "asam": dict(adaptive=True, rho=0.5, wd=0.05, eta=0.01),
    "asam-adam": dict(base="adam", adaptive=True, rho=0.5, wd=0.0),
}


def make_sam(lr, case):
    keys = dict(wd="weight_decay", mu="momentum", b1="beta_1",
                b2="beta_2", eps="adam_epsilon")
    return SAM(lr, **{keys.get(k, k): v for k, v in case.items()})


@pytest.mark.parametrize("name", sorted(CASES))
@EAGER
def test_matches_numpy_step_by_step(name, eager):
    x, y = data(n=8)
    lr, case = 0.05, CASES[name]
    wrapper = compiled(dense_model(), make_sam(lr, case), eager)
    want = numpy_sam(wrapper.get_weights(), x, y, 3, lr, **case)
    for step in range(3):
        wrapper.train_on_batch(x, y)
        for got, w in zip(wrapper.get_weights(), want[step]):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6,
                                       err_msg=f"step {step + 1}")


@pytest.mark.backend_independent
def test_msharpness_differs_from_one_group():
    # The test above could pass with the sub-batches ignored only if the
    # two rules agreed; they do not on this batch.
    x, y = data(n=8)
    w = dense_model().get_weights()
    one = numpy_sam(w, x, y, 1, 0.05, 0.3, 0.0)[0]
    split = numpy_sam(w, x, y, 1, 0.05, 0.3, 0.0, batch_split=2)[0]
    assert max(np.max(np.abs(a - b)) for a, b in zip(one, split)) > 1e-4


def test_save_load_resume_equals_an_uninterrupted_run(tmp_path):
    x, y = data(n=8)
    sam = dict(rho=0.3, base="adam", batch_split=2, adaptive=True,
               eta=0.01, weight_decay=0.01)
    straight = compiled(dense_model(), SAM(0.05, **sam), False)
    resumed = compiled(dense_model(), SAM(0.05, **sam), False)
    for _ in range(2):
        straight.train_on_batch(x, y)
        resumed.train_on_batch(x, y)
    path = str(tmp_path / "sam.keras")
    resumed.save(path)
    resumed = keras.models.load_model(path)
    assert resumed.optimizer.get_config() == straight.optimizer.get_config()
    for _ in range(2):
        straight.train_on_batch(x, y)
        resumed.train_on_batch(x, y)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend_independent
def test_config_round_trips_the_new_arguments():
    opt = SAM(0.3, rho=0.2, base="adam", beta_1=0.8, beta_2=0.99,
              adam_epsilon=1e-6, batch_split=8, adaptive=True, eta=0.01)
    config = opt.get_config()
    for key, value in dict(base="adam", beta_1=0.8, beta_2=0.99,
                           adam_epsilon=1e-6, batch_split=8, adaptive=True,
                           eta=0.01).items():
        assert config[key] == pytest.approx(value), key
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is SAM and again.get_config() == config
    assert again.step_plan().sub_batches == 8


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs,name", [
    (dict(base="rmsprop"), "base"),
    (dict(beta_1=1.0), "beta_1"),
    (dict(beta_2=-0.1), "beta_2"),
    (dict(adam_epsilon=0.0), "adam_epsilon"),
    (dict(batch_split=0), "batch_split"),
    (dict(adaptive="yes"), "adaptive"),
    (dict(eta=-1.0), "eta"),
])
def test_bad_new_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SAM(0.1, **kwargs)
