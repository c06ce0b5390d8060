"""Several gradients per step: SOBA with mc_samples > 1 and bSAM's
m-sharpness (batch_split > 1), against the equations with replayed noise."""

import keras
import numpy as np
import pytest

from keras_bayes import backend
from keras_bayes.optimizers import BSAM
from keras_bayes.optimizers import SOBA
from keras_bayes.training import TwoPassModel
from tests import helpers
from tests.training.test_two_pass import data
from tests.training.test_two_pass import dense_model
from tests.training.test_two_pass import mse_grads

EAGER = pytest.mark.parametrize("eager", [False, True],
                                ids=["compiled", "eager"])
FUSED = pytest.mark.parametrize("fused", [False, True],
                                ids=["per-variable", "fused"])


def replay_normals(optimizer, shapes, draws):
    """The next `draws` rounds of per-variable N(0, 1) draws the optimizer's
    training seed will produce, from a copy of its state."""
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(
        keras.ops.convert_to_numpy(optimizer._seed_generator.state.value))
    return [[keras.ops.convert_to_numpy(backend.standard_normal(
        s, "float32", generator)).astype(np.float64)
        for s in shapes] for _ in range(draws)]


def set_slots(optimizer, model, values_by_name):
    for name, values in values_by_name.items():
        for v, value in zip(model.trainable_variables, values):
            index = optimizer._get_variable_index(v)
            optimizer._state[name][index].assign(value.astype("float32"))


def read_slot(optimizer, model, name):
    return [keras.ops.convert_to_numpy(
        optimizer._state[name][optimizer._get_variable_index(v)])
        for v in model.trainable_variables]


SOBA_HP = dict(learning_rate=0.05, ess=40.0, hess_init=0.3, beta1=0.8,
               beta2=0.9, weight_decay=0.05)


@pytest.mark.parametrize("hess_approx", ["price", "gradsq"])
@FUSED
@EAGER
def test_soba_mc_samples_matches_equations(eager, fused, hess_approx):
    samples = 3
    x, y = data()
    wrapper = TwoPassModel(dense_model())
    opt = SOBA(**SOBA_HP, mc_samples=samples, hess_approx=hess_approx,
               seed=4, fused_update=fused)
    wrapper.compile(optimizer=opt, loss="mse", run_eagerly=eager)
    wrapper.train_on_batch(x, y)  # builds; iterations = 1 afterwards

    rng = np.random.default_rng(0)
    shapes = [tuple(w.shape) for w in wrapper.get_weights()]
    mean = [rng.normal(size=s) for s in shapes]
    hessian = [rng.uniform(0.1, 0.8, size=s) for s in shapes]
    momentum = [0.1 * rng.normal(size=s) for s in shapes]
    sample = [m + 0.1 * rng.normal(size=s) for m, s in zip(mean, shapes)]
    set_slots(opt, wrapper, {"mean": mean, "hessian": hessian,
                             "momentum": momentum})
    wrapper.set_weights([s.astype("float32") for s in sample])
    normals = replay_normals(opt, shapes, samples - 1)
    wrapper.train_on_batch(x, y)

    d, ess = SOBA_HP["weight_decay"], SOBA_HP["ess"]
    std = [1 / np.sqrt(ess * (h + d)) for h in hessian]
    points = [sample] + [[m + s * z for m, s, z in zip(mean, std, zs)]
                         for zs in normals]
    grads = [mse_grads(*p, x, y) for p in points]
    beta1, beta2 = SOBA_HP["beta1"], SOBA_HP["beta2"]
    for i in range(len(shapes)):
        g_bar = np.mean([g[i] for g in grads], axis=0)
        if hess_approx == "price":
            statistic = np.mean([(p[i] - mean[i]) * g[i]
                                 for p, g in zip(points, grads)], axis=0)
            h_hat = ess * (hessian[i] + d) * statistic
        else:
            h_hat = ess * np.mean([g[i] ** 2 for g in grads], axis=0)
        mom = beta1 * momentum[i] + (1 - beta1) * g_bar
        h = hessian[i]
        h_new = (beta2 * h + (1 - beta2) * h_hat
                 + 0.5 * (1 - beta2) ** 2 * (h - h_hat) ** 2 / (h + d))
        step = (mom / (1 - beta1**2) + d * mean[i]) / (h_new + d)
        m_new = mean[i] - SOBA_HP["learning_rate"] * (
            SOBA_HP["hess_init"] + d) * step
        for name, want in (("mean", m_new), ("hessian", h_new),
                           ("momentum", mom)):
            np.testing.assert_allclose(read_slot(opt, wrapper, name)[i],
                                       want, rtol=5e-5, atol=5e-6,
                                       err_msg=name)


def test_soba_mc_samples_first_step_uses_the_fresh_samples_only():
    """At step 1 the model holds the mean (ε = 0): the curvature statistic
    is the mean over the other samples only, here the one fresh sample."""
    x, y = data()
    wrapper = TwoPassModel(dense_model())
    opt = SOBA(**SOBA_HP, mc_samples=2, seed=1)
    wrapper.compile(optimizer=opt, loss="mse")
    mean = [w.astype(np.float64) for w in wrapper.get_weights()]
    [normals] = replay_normals(opt, [w.shape for w in mean], 1)
    wrapper.train_on_batch(x, y)
    d, ess, h0 = (SOBA_HP["weight_decay"], SOBA_HP["ess"],
                  SOBA_HP["hess_init"])
    std = 1 / np.sqrt(ess * (h0 + d))
    fresh = [m + std * z for m, z in zip(mean, normals)]
    grads = mse_grads(*fresh, x, y)
    beta2 = SOBA_HP["beta2"]
    for i, got in enumerate(read_slot(opt, wrapper, "hessian")):
        h_hat = ess * (h0 + d) * (fresh[i] - mean[i]) * grads[i]
        want = (beta2 * h0 + (1 - beta2) * h_hat
                + 0.5 * (1 - beta2) ** 2 * (h0 - h_hat) ** 2 / (h0 + d))
        np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-6)


def test_soba_mc_samples_needs_the_wrapper():
    model = helpers.small_classifier()
    model.compile(optimizer=SOBA(0.1, ess=10.0, mc_samples=2), loss="mse")
    with pytest.raises(ValueError, match="TwoPassModel"):
        model.train_on_batch(np.zeros((4, 64), "float32"),
                             np.zeros((4, 10), "float32"))


def test_soba_mc_samples_fits_saves_and_resumes(tmp_path, digits):
    x, y, x_test, y_test = digits
    wrapper = TwoPassModel(helpers.small_classifier())
    opt = SOBA(0.1, ess=len(x), hess_init=0.5, mc_samples=2, seed=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    wrapper.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    history = wrapper.fit(x, y, epochs=2, batch_size=64, verbose=0,
                          shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]
    wrapper.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.mc_samples == 2
    for m in (wrapper, loaded):
        m.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    helpers.weights_close(wrapper.get_weights(), loaded.get_weights(),
                          atol=1e-5, rtol=1e-4)
    assert wrapper.evaluate(x_test, y_test, verbose=0)[1] > 0.5


BSAM_HP = dict(learning_rate=0.1, ess=50.0, rho=0.05, beta1=0.8, beta2=0.9,
               weight_decay=0.01, damping=0.1, precision_init=2.0)


@FUSED
@EAGER
def test_bsam_batch_split_matches_equations(eager, fused):
    """M = 2: sub-batch 0 at the held sample, sub-batch 1 at a fresh draw;
    a and g2 averaged over the sub-batches (algorithms.md §2.2)."""
    x, y = data(n=8)
    wrapper = TwoPassModel(dense_model())
    opt = BSAM(**BSAM_HP, batch_split=2, seed=5, fused_update=fused)
    wrapper.compile(optimizer=opt, loss="mse", run_eagerly=eager)
    wrapper.train_on_batch(x, y)

    rng = np.random.default_rng(1)
    shapes = [tuple(w.shape) for w in wrapper.get_weights()]
    mean = [rng.normal(size=s) for s in shapes]
    precision = [rng.uniform(0.5, 3.0, size=s) for s in shapes]
    momentum = [0.1 * rng.normal(size=s) for s in shapes]
    sample = [m + 0.05 * rng.normal(size=s) for m, s in zip(mean, shapes)]
    set_slots(opt, wrapper, {"mean": mean, "precision": precision,
                             "momentum": momentum})
    wrapper.set_weights([s.astype("float32") for s in sample])
    [normals] = replay_normals(opt, shapes, 1)
    wrapper.train_on_batch(x, y)

    ess, rho = BSAM_HP["ess"], BSAM_HP["rho"]
    fresh = [m + z / np.sqrt(ess * s)
             for m, z, s in zip(mean, normals, precision)]
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    curvature = [np.zeros(s) for s in shapes]
    second = [np.zeros(s) for s in shapes]
    for first_point, (xs, ys) in zip([sample, fresh], halves):
        g1 = mse_grads(*first_point, xs, ys)
        point = [m + rho * g / s for m, g, s in zip(mean, g1, precision)]
        g2 = mse_grads(*point, xs, ys)
        for i in range(len(shapes)):
            curvature[i] += np.sqrt(precision[i]) * np.abs(g1[i]) / 2
            second[i] += g2[i] / 2
    delta, beta1, beta2 = (BSAM_HP["weight_decay"], BSAM_HP["beta1"],
                           BSAM_HP["beta2"])
    for i in range(len(shapes)):
        mom = beta1 * momentum[i] + (1 - beta1) * (second[i]
                                                   + delta * mean[i])
        want_mean = mean[i] - BSAM_HP["learning_rate"] * mom / precision[i]
        want_precision = beta2 * precision[i] + (1 - beta2) * (
            curvature[i] + delta + BSAM_HP["damping"])
        for name, want in (("mean", want_mean),
                           ("precision", want_precision),
                           ("momentum", mom)):
            np.testing.assert_allclose(read_slot(opt, wrapper, name)[i],
                                       want, rtol=5e-5, atol=5e-6,
                                       err_msg=name)


def test_bsam_batch_split_logs_sub_batch_zero_and_rejects_tiny_batches():
    x, y = data(n=8)
    wrapper = TwoPassModel(dense_model())
    wrapper.compile(optimizer=BSAM(**BSAM_HP, batch_split=4, seed=0),
                    loss="mse", run_eagerly=True)
    logs = wrapper.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    with pytest.raises(ValueError, match="batch_split"):
        wrapper.train_on_batch(x[:3], y[:3])
