"""One SOBA step against the IVON equations, written out in NumPy."""

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes import backend
from keras_bayes.optimizers import SOBA

HP = dict(ess=200.0, hess_init=0.3, beta1=0.8, beta2=0.9, weight_decay=0.05)


def numpy_ivon_step(g, theta, m, h, mom, t, lr, ess, hess_init, beta1, beta2,
                    weight_decay, clip_radius=np.inf, hess_approx="price",
                    rescale_lr=True, debias=True):
    """algorithms.md §1.2 with S = 1, ε = θ − m; t counts from 1."""
    d = weight_decay
    eps = theta - m
    if hess_approx == "price":
        h_hat = ess * (h + d) * eps * g
    else:
        h_hat = ess * g**2
    mom = beta1 * mom + (1 - beta1) * g
    h_new = (beta2 * h + (1 - beta2) * h_hat
             + 0.5 * (1 - beta2) ** 2 * (h - h_hat) ** 2 / (h + d))
    if hess_approx == "price":
        h_new = np.where(eps == 0, h, h_new)
    direction = mom / (1 - beta1**t) if debias else mom
    u = np.clip((direction + d * m) / (h_new + d), -clip_radius, clip_radius)
    lr_eff = lr * (hess_init + d) if rescale_lr else lr
    m_new = m - lr_eff * u
    std = 1 / np.sqrt(ess * (h_new + d))
    return m_new, h_new, mom, std


def _state(rng, shape):
    m = rng.normal(size=shape).astype("float32")
    return dict(
        theta=(m + 0.1 * rng.normal(size=shape)).astype("float32"),
        m=m,
        h=rng.uniform(-0.01, 0.6, size=shape).astype("float32"),
        mom=(0.1 * rng.normal(size=shape)).astype("float32"),
        g=rng.normal(size=shape).astype("float32"),
    )


def _run_one_step(opt, states, lr_step=3):
    variables = [keras.Variable(s["theta"]) for s in states]
    opt.build(variables)
    opt.iterations.assign(lr_step)
    for i, s in enumerate(states):
        opt._state["mean"][i].assign(s["m"])
        opt._state["hessian"][i].assign(s["h"])
        opt._state["momentum"][i].assign(s["mom"])
    opt.apply_gradients([(s["g"], v) for s, v in zip(states, variables)])
    return variables


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"hess_approx": "gradsq"},
        {"clip_radius": 0.05},
        {"rescale_lr": False, "debias": False},
    ],
    ids=["price", "gradsq", "clipped", "plain-lr"],
)
@pytest.mark.parametrize("fused", [False, True], ids=["per-variable", "fused"])
def test_one_step_matches_equations(options, fused):
    rng = np.random.default_rng(0)
    states = [_state(rng, (5, 3)), _state(rng, (4,))]
    opt = SOBA(0.05, seed=3, fused_update=fused, **HP, **options)
    variables = _run_one_step(opt, states)
    hp = {**HP, **options}
    for i, s in enumerate(states):
        m, h, mom, std = numpy_ivon_step(
            s["g"].astype(np.float64), s["theta"].astype(np.float64),
            s["m"].astype(np.float64), s["h"].astype(np.float64),
            s["mom"].astype(np.float64), t=4, lr=0.05, **hp)
        np.testing.assert_allclose(opt._state["mean"][i].numpy(), m,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt._state["hessian"][i].numpy(), h,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt._state["momentum"][i].numpy(), mom,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.posterior_std()[i], std, rtol=1e-5)
    # The variables now hold the next sample m + σ·z with z ~ N(0, 1).
    z = np.concatenate([
        ((v.numpy() - opt._state["mean"][i].numpy())
         / opt.posterior_std()[i]).ravel()
        for i, v in enumerate(variables)
    ])
    assert np.all(np.isfinite(z))
    assert np.all(z != 0)
    assert np.abs(z).max() < 6


def test_per_variable_noise_is_the_seeded_draw():
    """The sample is m + σ·z, z the step's update noise
    (`keras_bayes.backend.step_normal` of the seed and the step, one draw
    for the variables in order, cut into pieces). Each piece is also the
    variable's own range of the step's stream, drawn alone: what Keras'
    per-variable updates under a distribution draw."""
    rng = np.random.default_rng(1)
    states = [_state(rng, (3, 2)), _state(rng, (7,))]
    opt = SOBA(0.05, seed=11, fused_update=False, **HP)
    variables = _run_one_step(opt, states)
    step = 3  # `iterations` when the update ran
    flat = keras.ops.convert_to_numpy(backend.step_normal(
        (13,), "float32", keras.random.SeedGenerator(11), step, 0))
    offset = 0
    for i, v in enumerate(variables):
        size = int(np.prod(v.shape))
        z = flat[offset:offset + size].reshape(tuple(v.shape))
        expected = (opt._state["mean"][i].numpy()
                    + opt.posterior_std()[i] * z)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6,
                                   atol=1e-6)
        alone = keras.ops.convert_to_numpy(backend.step_normal(
            tuple(v.shape), "float32", keras.random.SeedGenerator(11),
            step, offset))
        np.testing.assert_array_equal(alone, z)
        offset += size


def test_first_step_is_an_sgd_step_and_keeps_the_hessian():
    """At t = 1 the gradient is taken at the mean: ε = 0 gives no curvature
    information, and with rescale_lr the step is m − α·(g + δm)."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6,)).astype("float32")
    g = rng.normal(size=(6,)).astype("float32")
    v = keras.Variable(w)
    opt = SOBA(0.1, seed=0, **HP)
    opt.apply_gradients([(g, v)])
    np.testing.assert_allclose(opt._state["hessian"][0].numpy(),
                               HP["hess_init"], rtol=1e-6)
    np.testing.assert_allclose(
        opt._state["mean"][0].numpy(),
        w - 0.1 * (g + HP["weight_decay"] * w), rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 1
    assert not np.allclose(v.numpy(), opt._state["mean"][0].numpy())


def test_mean_follows_weights_set_after_build():
    """Weights loaded after `build` but before the first step are the mean."""
    v = keras.Variable(np.zeros(4, "float32"))
    opt = SOBA(0.1, seed=0, **HP)
    opt.build([v])
    v.assign(np.full(4, 2.0, "float32"))
    opt.apply_gradients([(np.zeros(4, "float32"), v)])
    np.testing.assert_allclose(
        opt._state["mean"][0].numpy(),
        2.0 - 0.1 * HP["weight_decay"] * 2.0, rtol=1e-6)


def test_noise_changes_between_steps_and_is_seeded():
    def samples(seed, steps=3):
        v = keras.Variable(np.zeros(50, "float32"))
        opt = SOBA(0.0, seed=seed, **HP)
        out = []
        for _ in range(steps):
            opt.apply_gradients([(np.zeros(50, "float32"), v)])
            out.append(v.numpy() - opt._state["mean"][0].numpy())
        return out

    a, b = samples(5), samples(5)
    for u, w in zip(a, b):
        np.testing.assert_array_equal(u, w)
    assert not np.allclose(a[1], a[2])
    assert not np.allclose(a[0], samples(6)[0])


def test_excluded_variables_get_no_prior():
    v1 = keras.Variable(np.ones(3, "float32"), name="kernel")
    v2 = keras.Variable(np.ones(3, "float32"), name="bias")
    opt = SOBA(0.1, seed=0, **HP)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build([v1, v2])
    std = opt.posterior_std()
    np.testing.assert_allclose(
        std[0], 1 / np.sqrt(HP["ess"] * (HP["hess_init"] + 0.05)), rtol=1e-6)
    np.testing.assert_allclose(
        std[1], 1 / np.sqrt(HP["ess"] * HP["hess_init"]), rtol=1e-6)
    opt.apply_gradients([(np.zeros(3, "float32"), v1),
                         (np.zeros(3, "float32"), v2)])
    # No gradient and no prior: the bias mean does not move.
    np.testing.assert_allclose(opt._state["mean"][1].numpy(), 1.0)
    assert np.all(opt._state["mean"][0].numpy() < 1.0)


def test_hessian_plus_prior_stays_positive_for_negative_estimates():
    """The iBLR correction keeps h + δ > 0 whatever the sign of ĥ."""
    from keras_bayes.optimizers.soba import iblr_hessian_update

    h = keras.ops.convert_to_tensor([0.5, 0.01, 1e-4, 2.0], "float32")
    for est in (-1e3, -1.0, -1e6):
        for beta2 in (0.0, 0.5, 0.99999):
            estimate = keras.ops.full((4,), est, "float32")
            new = keras.ops.convert_to_numpy(
                iblr_hessian_update(h, estimate, 1e-4, beta2))
            assert np.all(new + 1e-4 > 0)


def test_alias():
    assert keras_bayes.optimizers.IVON is SOBA
