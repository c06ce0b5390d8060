"""The Posterior value and `prior=`: the posterior of one task as the next
task's prior, against the equations, saved, and validated."""

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes import Posterior
from keras_bayes.optimizers import BSAM
from keras_bayes.optimizers import SOBA
from keras_bayes.posterior import PriorSpec
from keras_bayes.training import TwoPassModel
from tests import helpers
from tests.training.test_two_pass import data
from tests.training.test_two_pass import dense_model
from tests.training.test_two_pass import mse_grads

HP = dict(ess=200.0, hess_init=0.3, beta1=0.8, beta2=0.9, weight_decay=0.05)
FUSED = pytest.mark.parametrize("fused", [False, True],
                                ids=["per-variable", "fused"])


def random_posterior(rng, shapes, paths):
    return Posterior(
        [rng.normal(size=s) for s in shapes],
        [rng.uniform(5.0, 500.0, size=s) for s in shapes],
        paths,
    )


def numpy_ivon_step_with_prior(g, theta, m, h, mom, t, lr, center, delta,
                               ess, hess_init, beta1, beta2, weight_decay):
    """IVON (algorithms.md §1.2) with the prior N(c, 1/(λ·δ₀)), δ₀ a vector:
    δ → δ₀ in ĥ, the h update and σ; δ·m → δ₀·(m − c); rescale_lr keeps the
    scalar weight decay."""
    eps = theta - m
    h_hat = ess * (h + delta) * eps * g
    mom = beta1 * mom + (1 - beta1) * g
    h_new = (beta2 * h + (1 - beta2) * h_hat
             + 0.5 * (1 - beta2) ** 2 * (h - h_hat) ** 2 / (h + delta))
    direction = mom / (1 - beta1**t)
    m_new = m - lr * (hess_init + weight_decay) * (
        direction + delta * (m - center)) / (h_new + delta)
    return m_new, h_new, mom, 1 / np.sqrt(ess * (h_new + delta))


@FUSED
def test_soba_step_with_prior_matches_equations(fused):
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (4,)]
    variables = [keras.Variable(rng.normal(size=s).astype("float32"))
                 for s in shapes]
    prior = random_posterior(rng, shapes, [v.path for v in variables])
    opt = SOBA(0.05, seed=3, fused_update=fused, prior=prior,
               prior_strength=0.7, **HP)
    opt.build(variables)
    opt.iterations.assign(3)
    states = []
    for i, shape in enumerate(shapes):
        m = rng.normal(size=shape)
        s = dict(m=m, theta=m + 0.1 * rng.normal(size=shape),
                 h=rng.uniform(0.0, 0.6, size=shape),
                 mom=0.1 * rng.normal(size=shape), g=rng.normal(size=shape))
        states.append(s)
        variables[i].assign(s["theta"].astype("float32"))
        opt._state["mean"][i].assign(s["m"].astype("float32"))
        opt._state["hessian"][i].assign(s["h"].astype("float32"))
        opt._state["momentum"][i].assign(s["mom"].astype("float32"))
    opt.apply_gradients([(s["g"].astype("float32"), v)
                         for s, v in zip(states, variables)])
    for i, s in enumerate(states):
        delta = 0.7 * prior.precisions[i].astype(np.float64) / HP["ess"]
        m, h, mom, std = numpy_ivon_step_with_prior(
            s["g"], s["theta"], s["m"], s["h"], s["mom"], t=4, lr=0.05,
            center=prior.means[i].astype(np.float64), delta=delta, **HP)
        np.testing.assert_allclose(opt._state["mean"][i].numpy(), m,
                                   rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(opt._state["hessian"][i].numpy(), h,
                                   rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(opt._state["momentum"][i].numpy(), mom,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.posterior_std()[i], std, rtol=1e-5)
    # The exported posterior's precision: this task's curvature plus the
    # tempered old precision, λ·(h + δ₀) = λ·h + τ·P₀.
    exported = opt.posterior()
    for i, s in enumerate(states):
        want = HP["ess"] * opt._state["hessian"][i].numpy() + (
            0.7 * prior.precisions[i])
        np.testing.assert_allclose(exported.precisions[i], want, rtol=1e-4)


@FUSED
def test_bsam_step_with_prior_matches_equations(fused):
    """bSAM with a prior: δ₀·(m − c) in the momentum, δ₀ in s."""
    x, y = data()
    inner = dense_model()
    rng = np.random.default_rng(4)
    shapes = [tuple(v.shape) for v in inner.trainable_variables]
    prior = random_posterior(rng, shapes,
                             [v.path for v in inner.trainable_variables])
    hyper = dict(learning_rate=0.1, ess=50.0, rho=0.05, beta1=0.8, beta2=0.9,
                 weight_decay=0.01, damping=0.1, precision_init=2.0)
    wrapper = TwoPassModel(inner)
    opt = BSAM(**hyper, seed=5, fused_update=fused, prior=prior)
    wrapper.compile(optimizer=opt, loss="mse")
    wrapper.train_on_batch(x, y)

    mean = [rng.normal(size=s) for s in shapes]
    precision = [rng.uniform(0.5, 3.0, size=s) for s in shapes]
    momentum = [0.1 * rng.normal(size=s) for s in shapes]
    sample = [m + 0.05 * rng.normal(size=s) for m, s in zip(mean, shapes)]
    for i, v in enumerate(wrapper.trainable_variables):
        index = opt._get_variable_index(v)
        opt._state["mean"][index].assign(mean[i].astype("float32"))
        opt._state["precision"][index].assign(precision[i].astype("float32"))
        opt._state["momentum"][index].assign(momentum[i].astype("float32"))
    wrapper.set_weights([s.astype("float32") for s in sample])
    wrapper.train_on_batch(x, y)

    g1 = mse_grads(*sample, x, y)
    point = [m + hyper["rho"] * g / s
             for m, g, s in zip(mean, g1, precision)]
    g2 = mse_grads(*point, x, y)
    for i, v in enumerate(wrapper.trainable_variables):
        index = opt._get_variable_index(v)
        delta = prior.precisions[i].astype(np.float64) / hyper["ess"]
        center = prior.means[i].astype(np.float64)
        mom = hyper["beta1"] * momentum[i] + (1 - hyper["beta1"]) * (
            g2[i] + delta * (mean[i] - center))
        want_mean = mean[i] - hyper["learning_rate"] * mom / precision[i]
        curvature = np.sqrt(precision[i]) * np.abs(g1[i])
        want_precision = hyper["beta2"] * precision[i] + (
            1 - hyper["beta2"]) * (curvature + delta + hyper["damping"])
        np.testing.assert_allclose(opt._state["mean"][index].numpy(),
                                   want_mean, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(opt._state["precision"][index].numpy(),
                                   want_precision, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(opt._state["momentum"][index].numpy(),
                                   mom, rtol=2e-5, atol=2e-6)


def test_without_prior_nothing_changes():
    """prior=None keeps the weight-decay prior: same result as before."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 64)).astype("float32")
    y = rng.integers(0, 10, size=64)
    results = []
    for opt in (SOBA(0.1, seed=1, **HP), SOBA(0.1, seed=1, prior=None, **HP)):
        keras.utils.set_random_seed(0)
        model = helpers.small_classifier()
        model.compile(optimizer=opt, loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        results.append(model.get_weights())
    helpers.weights_close(*results, atol=0, rtol=0)


def _fit_task(model, opt, x, y, epochs=2):
    model.compile(optimizer=opt, loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def test_posterior_export_and_npz_round_trip(tmp_path, digits):
    x, y, _, _ = digits
    model = helpers.small_classifier()
    opt = SOBA(0.1, ess=len(x), hess_init=0.5, seed=0)
    _fit_task(model, opt, x, y)
    posterior = opt.posterior()
    assert posterior.paths == [v.path for v in model.trainable_variables]
    for got, mean, std in zip(posterior.means, opt.posterior_mean(),
                              opt.posterior_std()):
        np.testing.assert_allclose(got, mean)
    for got, std in zip(posterior.precisions, opt.posterior_std()):
        np.testing.assert_allclose(got, 1.0 / std**2, rtol=1e-6)
    posterior.save(tmp_path / "task1.npz")
    loaded = Posterior.load(tmp_path / "task1.npz")
    assert loaded.paths == posterior.paths
    for a, b in zip(loaded.means + loaded.precisions,
                    posterior.means + posterior.precisions):
        np.testing.assert_array_equal(a, b)
    # A path is accepted as the prior too.
    opt2 = SOBA(0.1, ess=len(x), prior=str(tmp_path / "task1.npz"))
    opt2.build(model.trainable_variables)
    np.testing.assert_allclose(
        opt2._prior_slots["precision"][0].numpy(),
        posterior.precisions[0] / len(x), rtol=1e-6)


def test_prior_saves_in_keras_file_and_training_resumes(tmp_path, digits):
    x, y, _, _ = digits
    model = helpers.small_classifier()
    _fit_task(model, SOBA(0.1, ess=600, hess_init=0.5, seed=0), x[:600],
              y[:600])
    prior = model.optimizer.posterior()
    opt = SOBA(0.1, ess=600, hess_init=0.5, seed=1, prior=prior,
               prior_strength=0.5)
    _fit_task(model, opt, x[600:], y[600:], epochs=1)
    model.save(tmp_path / "task2.keras")
    loaded = keras.models.load_model(tmp_path / "task2.keras")
    assert isinstance(loaded.optimizer.prior, PriorSpec)
    assert loaded.optimizer.prior_strength == 0.5
    for name in ("mean", "precision"):
        for a, b in zip(opt._prior_slots[name],
                        loaded.optimizer._prior_slots[name]):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))
    # One more epoch from the original and from the loaded copy agree.
    for m in (model, loaded):
        m.fit(x[600:], y[600:], epochs=1, batch_size=32, verbose=0,
              shuffle=False)
    helpers.weights_close(model.get_weights(), loaded.get_weights(),
                          atol=1e-5, rtol=1e-4)


def test_config_keeps_structure_and_refuses_to_train_without_values():
    model = helpers.small_classifier()
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    prior = random_posterior(np.random.default_rng(0), shapes,
                             [v.path for v in model.trainable_variables])
    config = SOBA(0.1, ess=10, prior=prior, prior_strength=0.3).get_config()
    assert config["prior"] == prior.spec()
    rebuilt = SOBA.from_config(config)
    assert rebuilt.prior_strength == 0.3
    assert rebuilt.get_config() == config
    model.compile(optimizer=rebuilt, loss="mse")
    with pytest.raises(ValueError, match="load_model"):
        model.train_on_batch(np.zeros((2, 64), "float32"),
                             np.zeros((2, 10), "float32"))


def test_new_variables_keep_the_weight_decay_prior():
    """A head the prior does not know gets N(0, 1/(λδ)), as without prior."""
    body = keras.layers.Dense(4, name="body")
    head = keras.layers.Dense(3, name="new_head")
    model = keras.Sequential([keras.Input((5,)), body, head])
    rng = np.random.default_rng(0)
    prior = random_posterior(rng, [(5, 4), (4,)],
                             [body.kernel.path, body.bias.path])
    opt = SOBA(0.1, ess=100.0, weight_decay=0.02, prior=prior)
    opt.build(model.trainable_variables)
    index = opt._get_variable_index(head.kernel)
    np.testing.assert_allclose(opt._prior_slots["precision"][index].numpy(),
                               0.02)
    np.testing.assert_array_equal(opt._prior_slots["mean"][index].numpy(), 0)
    index = opt._get_variable_index(body.kernel)
    np.testing.assert_allclose(opt._prior_slots["mean"][index].numpy(),
                               prior.means[0])


def test_prior_matches_by_order_when_paths_differ():
    rng = np.random.default_rng(0)
    model = helpers.small_classifier()
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    prior = random_posterior(rng, shapes, [f"old/{i}" for i in
                                           range(len(shapes))])
    opt = SOBA(0.1, ess=10.0, prior=prior)
    opt.build(model.trainable_variables)
    np.testing.assert_allclose(opt._prior_slots["mean"][1].numpy(),
                               prior.means[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior": "not-a-file.txt"}, "prior"),
        ({"prior": 3.0}, "prior"),
        ({"prior_strength": 0.0}, "prior_strength"),
        ({"prior_strength": float("nan")}, "prior_strength"),
    ],
)
def test_bad_prior_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SOBA(0.1, ess=10.0, **kwargs)


def test_shape_mismatch_is_a_clear_error():
    model = helpers.small_classifier()
    prior = Posterior([np.zeros((3, 3))], [np.ones((3, 3))],
                      [model.trainable_variables[0].path])
    opt = SOBA(0.1, ess=10.0, prior=prior)
    with pytest.raises(ValueError, match="shape"):
        opt.build(model.trainable_variables)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "args, message",
    [
        (([np.zeros(2)], [np.zeros(2)]), "precisions\\[0\\]"),
        (([np.zeros(2)], [np.ones(3)]), "shape"),
        (([np.zeros(2)], []), "one entry per variable"),
        (([np.full(2, np.nan)], [np.ones(2)]), "non-finite"),
        (([np.zeros(2)], [np.ones(2)], ["a", "b"]), "paths"),
    ],
)
def test_bad_posterior_values(args, message):
    with pytest.raises(ValueError, match=message):
        Posterior(*args)


def test_tempered_and_save_suffix(tmp_path):
    posterior = Posterior([np.zeros(2)], [np.full(2, 4.0)])
    np.testing.assert_allclose(posterior.tempered(0.5).precisions[0], 2.0)
    np.testing.assert_allclose(posterior.stds[0], 0.5)
    with pytest.raises(ValueError, match="factor"):
        posterior.tempered(-1.0)
    with pytest.raises(ValueError, match="filepath"):
        posterior.save(tmp_path / "prior.keras")
    assert keras_bayes.Posterior is Posterior
