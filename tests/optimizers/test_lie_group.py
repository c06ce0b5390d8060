"""The Lie-group Bayesian learning rule: additive, affine, multiplicative."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_bayes.optimizers import LieAdditive
from keras_bayes.optimizers import LieAffine
from keras_bayes.optimizers import LieGroupBLR
from keras_bayes.optimizers import LieMultiplicative
from keras_bayes.optimizers import noise as noise_lib
from keras_bayes.optimizers.lie_group import affine_phi
from tests.helpers import small_classifier
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FAMILIES = ("gaussian", "uniform", "laplace")

# Raw moments E[x], E[x²], E[x⁴] of each family at scale 1.
MOMENTS = {
    "gaussian": (0.0, 1.0, 3.0),
    "uniform": (0.0, 1.0 / 12.0, 1.0 / 80.0),
    "laplace": (0.0, 2.0, 24.0),
    "rayleigh": (math.sqrt(math.pi / 2.0), 2.0, 8.0),
}
# E[x³] enters the variance of E[x]·x only through E[x²]; the variance of
# the sample mean is (E[x²] − E[x]²)/n and of the sample E[x²] is
# (E[x⁴] − E[x²]²)/n.
# Every moment check is a two-sided z-test at |z| < 5, a false-alarm rate of
# 5.7e-7 per check (about 1e-5 for all checks of this file together).
Z_LIMIT = 5.0


def _numpy(x):
    return ops.convert_to_numpy(x)


def _assert_moments(x, family, scale=1.0):
    x = np.asarray(x, dtype=np.float64).ravel() / scale
    mean, second, fourth = MOMENTS[family]
    n = x.size
    z_mean = (x.mean() - mean) / math.sqrt((second - mean**2) / n)
    z_second = (np.mean(x**2) - second) / math.sqrt((fourth - second**2) / n)
    assert abs(z_mean) < Z_LIMIT, (family, x.mean(), mean)
    assert abs(z_second) < Z_LIMIT, (family, np.mean(x**2), second)


# ----------------------------------------------------------------------
# Noise families.

def test_noise_samplers_have_the_stated_moments():
    for family in noise_lib.NOISE_FAMILIES:
        _check_sampler(family)


def _check_sampler(family):
    from scipy import stats

    seed = keras.random.SeedGenerator(17)
    x = _numpy(noise_lib.draw_noise(family, (200_000,), "float32", seed))
    _assert_moments(x, family)
    assert np.isclose(np.std(x), noise_lib.NOISE_STD[family], rtol=0.01)
    assert np.isclose(np.mean(x), noise_lib.NOISE_MEAN[family], atol=0.01)
    reference = {
        "gaussian": stats.norm(),
        "uniform": stats.uniform(-0.5, 1.0),
        "laplace": stats.laplace(),
        "rayleigh": stats.rayleigh(),
    }[family]
    # Kolmogorov-Smirnov on 20 000 draws; false alarm 1e-6.
    assert stats.kstest(x[:20_000], reference.cdf).pvalue > 1e-6
    if family == "rayleigh":
        assert np.all(x >= 0)
    if family == "uniform":
        assert np.all(np.abs(x) <= 0.5)


def test_optimizer_noise_has_the_family_moments():
    """A step at learning rate 0: θ − w = c·ξ with ξ from the family."""
    for family in FAMILIES:
        opt = LieAdditive(0.0, noise=family, noise_scale=0.3,
                          weight_decay=0.0, seed=5)
        variable = keras.Variable(np.zeros((100_000,), "float32"))
        opt.apply_gradients([(np.zeros((100_000,), "float32"), variable)])
        _assert_moments(_numpy(variable) - opt.posterior_mean()[0], family,
                        scale=0.3)


# ----------------------------------------------------------------------
# One step against the equations.

def _build(opt, values):
    variables = [keras.Variable(v) for v in values]
    opt.build(variables)
    return variables


def test_zero_noise_additive_is_momentum_sgd_step_by_step():
    """Official-code pitfall: its "sgd" mode evaluates at w + w = 2w.

    With noise_scale = 0 the variable holds w itself after every step, and
    the trajectory is Keras' SGD with lr·(1−β1) and momentum β1.
    """
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(5, 3)).astype("float32"),
            rng.normal(size=(4,)).astype("float32")]
    grads = [[rng.normal(size=v.shape).astype("float32") for v in init]
             for _ in range(6)]
    lie = LieAdditive(0.3, beta1=0.8, noise_scale=0.0, weight_decay=0.0)
    sgd = keras.optimizers.SGD(0.3 * (1 - 0.8), momentum=0.8)
    a, b = _build(lie, init), _build(sgd, init)
    for g in grads:
        g = [ops.convert_to_tensor(gi) for gi in g]
        lie.apply_gradients(zip(g, a))
        sgd.apply_gradients(zip(g, b))
        weights_close([_numpy(v) for v in a], [_numpy(v) for v in b],
                      atol=1e-6, rtol=1e-6)
        weights_close([_numpy(v) for v in a], lie.posterior_mean(), atol=0)


def test_additive_step_with_prior_matches_numpy():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6,))
    theta = w + 0.01 * rng.normal(size=(6,))
    gm = 0.1 * rng.normal(size=(6,))
    g = rng.normal(size=(6,))
    lr, beta, delta = 0.2, 0.7, 0.05
    opt = LieAdditive(lr, beta1=beta, noise_scale=0.0, weight_decay=delta)
    (variable,) = _build(opt, [theta.astype("float32")])
    opt.iterations.assign(2)
    opt._state["mean"][0].assign(w.astype("float32"))
    opt._state["momentum"][0].assign(gm.astype("float32"))
    opt.apply_gradients([(g.astype("float32"), variable)])
    gm_new = beta * gm + (1 - beta) * (g + delta * theta)  # prior at θ
    np.testing.assert_allclose(_numpy(opt._state["momentum"][0]), gm_new,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.posterior_mean()[0], w - lr * gm_new,
                               rtol=1e-5, atol=1e-6)


def test_zero_noise_additive_fit_equals_sgd_fit(digits):
    x, y, _, _ = digits
    x, y = x[:192], y[:192]
    results = []
    for opt in (LieAdditive(0.5, beta1=0.8, noise_scale=0.0,
                            weight_decay=0.0),
                keras.optimizers.SGD(0.5 * 0.2, momentum=0.8)):
        keras.utils.set_random_seed(0)
        model = small_classifier()
        model.compile(opt, LOSS)
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False,
                            verbose=0)
        results.append((model.get_weights(), history.history["loss"]))
    weights_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_phi_is_continuous_and_matches_its_definition():
    x = np.array([-3.0, -1e-2, -1e-5, -1e-9, 0.0, 1e-9, 1e-5, 1e-2, 3.0])
    for rate in (0.05, 1.0, 7.0):
        x32 = x.astype("float32")
        got = _numpy(affine_phi(ops.convert_to_tensor(x32), rate))
        with np.errstate(invalid="ignore", divide="ignore"):
            x64 = x32.astype("float64")
            exact = np.where(x64 == 0, -rate, np.expm1(-rate * x64) / x64)
        np.testing.assert_allclose(got, exact, rtol=1e-6)


def _numpy_affine_step(theta, b, A, MU, MV, g, lr, ratio, beta1, beta2, tau,
                       delta):
    """algorithms.md §3.3 with one sample: A·ε = θ − b."""
    g = g + delta * theta
    u = (theta - b) * g
    v = A * g
    MU_new = np.where(theta == b, MU, beta2 * MU + (1 - beta2) * (u - tau))
    MV_new = beta1 * MV + (1 - beta1) * v
    phi = np.where(MU_new == 0, -lr, np.expm1(-lr * MU_new)
                   / np.where(MU_new == 0, 1, MU_new))
    b_new = b + A * MV_new * phi          # the OLD A
    A_new = A * np.exp(-ratio * lr * MU_new)
    return b_new, A_new, MU_new, MV_new


def test_affine_one_step_matches_equations():
    """Translation momentum gets A·g, the scale momentum (θ−b)·g − τ.

    (The official code once averaged the V accumulator against the U carry,
    fixed in its commit 3a610eb.)
    """
    rng = np.random.default_rng(2)
    shape = (7, 3)
    b = rng.normal(size=shape)
    A = rng.uniform(0.5, 2.0, size=shape)
    theta = b + A * 0.1 * rng.normal(size=shape)
    theta[0, 0] = b[0, 0]                   # a coordinate at its mean
    MU = 0.01 * rng.normal(size=shape)
    MU[0, 0] = 0.0                          # so φ is taken at exactly 0
    MV = 0.1 * rng.normal(size=shape)
    g = rng.normal(size=shape)
    hp = dict(lr=0.3, ratio=0.2, beta1=0.8, beta2=0.9, tau=0.01, delta=0.02)
    opt = LieAffine(hp["lr"], ess=100.0, scale_lr_ratio=hp["ratio"],
                    beta1=hp["beta1"], beta2=hp["beta2"], temperature=1.0,
                    noise_scale=0.1, weight_decay=hp["delta"], seed=1)
    (variable,) = _build(opt, [theta.astype("float32")])
    opt.iterations.assign(3)
    for name, value in (("mean", b), ("scale", A), ("scale_momentum", MU),
                        ("momentum", MV)):
        opt._state[name][0].assign(value.astype("float32"))
    opt.apply_gradients([(g.astype("float32"), variable)])
    expected = _numpy_affine_step(theta, b, A, MU, MV, g, **hp)
    for name, value in zip(("mean", "scale", "scale_momentum", "momentum"),
                           expected):
        np.testing.assert_allclose(_numpy(opt._state[name][0]), value,
                                   rtol=2e-5, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(opt.posterior_std()[0],
                               expected[1] * 0.1, rtol=2e-5)


def test_multiplicative_one_step_matches_equations():
    rng = np.random.default_rng(3)
    shape = (4, 5)
    gp = rng.uniform(0.1, 1.0, size=shape)
    gn = rng.uniform(0.1, 1.0, size=shape)
    p = gp * rng.rayleigh(size=shape)
    n = gn * rng.rayleigh(size=shape)
    mp = 0.1 * rng.normal(size=shape)
    mn = 0.1 * rng.normal(size=shape)
    g = rng.normal(size=shape)
    lr, beta, tau, delta = 0.5, 0.9, 0.02, 0.01
    opt = LieMultiplicative(lr, ess=50.0, beta1=beta, temperature=1.0,
                            weight_decay=delta, seed=3)
    theta = (p.astype("float32") - n.astype("float32"))
    (variable,) = _build(opt, [theta])
    opt.iterations.assign(2)
    for name, value in (("positive", gp), ("negative", gn),
                        ("positive_momentum", mp), ("negative_momentum", mn),
                        ("positive_part", p), ("negative_part", n)):
        opt._state[name][0].assign(value.astype("float32"))
    opt.apply_gradients([(g.astype("float32"), variable)])
    grad = g + delta * theta
    mp_new = beta * mp + (1 - beta) * (p * grad - tau)
    mn_new = beta * mn + (1 - beta) * (-n * grad - tau)
    gp_new, gn_new = gp * np.exp(-lr * mp_new), gn * np.exp(-lr * mn_new)
    got_p, got_n = opt.posterior_scales()
    np.testing.assert_allclose(got_p[0], gp_new, rtol=1e-4)
    np.testing.assert_allclose(got_n[0], gn_new, rtol=1e-4)
    np.testing.assert_allclose(opt.posterior_mean()[0],
                               math.sqrt(math.pi / 2) * (gp_new - gn_new),
                               rtol=1e-4, atol=1e-6)
    # The new sample is p' − n' with p' = g⁺ξ⁺, n' = g⁻ξ⁻, ξ± > 0.
    new_p = _numpy(opt._state["positive_part"][0])
    new_n = _numpy(opt._state["negative_part"][0])
    np.testing.assert_array_equal(_numpy(variable), new_p - new_n)
    assert np.all(new_p > 0) and np.all(new_n > 0)


# ----------------------------------------------------------------------
# Independence of the noise.

def _two_variables_one_step(opt):
    variables = _build(opt, [np.zeros((50, 4), "float32")] * 2)
    opt.apply_gradients([(np.zeros((50, 4), "float32"), v)
                         for v in variables])
    return [_numpy(v) for v in variables]


def test_variables_of_equal_shape_get_different_noise():
    """Official-code pitfall: its uniform noise reused one key per tensor."""
    for group in ("additive", "affine"):
        for family in FAMILIES:
            kwargs = {} if group == "additive" else {"ess": 10.0}
            opt = LieGroupBLR(0.0, group=group, noise=family,
                              noise_scale=0.1, seed=0, **kwargs)
            first, second = _two_variables_one_step(opt)
            assert np.all(first != 0), (group, family)
            assert not np.any(first == second), (group, family)


def test_multiplicative_parts_get_independent_noise():
    """ξ⁺ and ξ⁻ differ (the official code drew both from one key)."""
    opt = LieMultiplicative(0.0, ess=10.0, seed=0)
    variables = _build(opt, [np.ones((50, 4), "float32")] * 2)
    opt.apply_gradients([(np.zeros((50, 4), "float32"), v)
                         for v in variables])
    xi = [[_numpy(opt._state[f"{s}_part"][i]) / _numpy(opt._state[s][i])
           for s in ("positive", "negative")] for i in range(2)]
    assert not np.any(np.isclose(xi[0][0], xi[0][1]))
    assert not np.any(np.isclose(xi[0][0], xi[1][0]))
    _assert_moments(np.concatenate([np.ravel(x) for pair in xi
                                    for x in pair]), "rayleigh")


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.samples = []

    def on_train_batch_end(self, batch, logs=None):
        self.samples.append(
            [_numpy(v) for v in self.model.trainable_variables])


GROUP_ARGS = {
    "additive": dict(noise_scale=0.05),
    "affine": dict(ess=512.0, noise_scale=0.05),
    "multiplicative": dict(ess=512.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("group", list(GROUP_ARGS))
def test_noise_changes_every_step_under_jit(group, digits):
    """Official-code pitfall: its Rayleigh noise was frozen at trace time."""
    x, y, _, _ = digits
    # One layer: torch.compile (torch's jit_compile) takes seconds per
    # graph piece, and every random draw breaks the graph.
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    opt = LieGroupBLR(0.0, group=group, seed=3, **GROUP_ARGS[group])
    # torch.compile costs ~20 s per model on this CPU: on torch only the
    # multiplicative rule (whose official noise was frozen) is compiled,
    # the others run the same `fit` eagerly.
    jit = keras.backend.backend() != "torch" or group == "multiplicative"
    model.compile(opt, LOSS, jit_compile=jit)
    recorder = _Recorder()
    model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0,
              callbacks=[recorder])
    mean = opt.posterior_mean()
    perturbations = [[s - m for s, m in zip(step, mean)]
                     for step in recorder.samples]
    assert len(perturbations) == 4
    for before, after in zip(perturbations, perturbations[1:]):
        for u, v in zip(before, after):
            assert np.mean(u == v) < 0.01
    # Learning rate 0: the group element stays put, only the noise moves.
    weights_close(model.get_weights(), mean, atol=0)


# ----------------------------------------------------------------------
# The affine scale: positivity and the Bayesian fixed point.

class _Quadratic(keras.layers.Layer):
    """Outputs its weight vector θ for every input row."""

    def __init__(self, dim, init):
        super().__init__()
        self.theta = self.add_weight(
            shape=(dim,), initializer=keras.initializers.Constant(init))

    def call(self, x):
        return ops.broadcast_to(self.theta, (ops.shape(x)[0],
                                             self.theta.shape[0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_affine_scale_reaches_the_bayesian_variance(family):
    """ℓ̄ = ½Σ h_j(θ_j − θ*_j)²: the fixed point is Var θ_j = τ/h_j.

    τ = temperature/N, so the posterior variance is temperature/(N·h), the
    Bayesian posterior of a Gaussian likelihood with N examples. Here
    N = 4 and temperature = 2, so τ = 0.5 and the variances are 1, 0.5 and
    0.25; the base scale c makes A = 1 give variance τ, so A must move both
    up and down.
    """
    per_group, ess, temperature = 1000, 4.0, 2.0
    tau = temperature / ess
    curvature = np.repeat([0.5, 1.0, 2.0], per_group).astype("float32")
    optimum = np.linspace(-1, 1, curvature.size).astype("float32")

    def loss(y_true, y_pred):
        h = ops.convert_to_tensor(curvature)
        return 0.5 * ops.sum(
            h * ops.square(y_pred - ops.convert_to_tensor(optimum)), axis=-1)

    c = math.sqrt(tau) / noise_lib.NOISE_STD[family]
    opt = LieAffine(0.5, ess=ess, scale_lr_ratio=0.1, beta1=0.5, beta2=0.9,
                    temperature=temperature, noise=family, noise_scale=c,
                    weight_decay=0.0, seed=11)
    model = keras.Sequential([keras.Input((1,)),
                              _Quadratic(curvature.size, 0.3)])
    model.compile(opt, loss)
    steps = 300
    model.fit(np.zeros((steps, 1), "float32"),
              np.zeros((steps, curvature.size), "float32"), batch_size=1,
              epochs=1, verbose=0, shuffle=False)
    scale = opt.posterior_scale()[0]
    assert np.all(scale > 0)
    variance = opt.posterior_std()[0] ** 2
    for h in (0.5, 1.0, 2.0):
        mean_variance = variance[curvature == h].mean()
        target = temperature / (ess * h)
        assert mean_variance == pytest.approx(target, rel=0.1), (h, family)
    # The location keeps moving with the sample noise (one sample per
    # step), by less than the posterior's own spread.
    error = opt.posterior_mean()[0] - optimum
    assert np.sqrt(np.mean(error**2)) < np.sqrt(variance.mean())


def test_affine_scale_stays_positive_under_a_large_push():
    """A large curvature shrinks A by e^-ε² in one step; A stays > 0.

    ℓ̄ = ½k‖θ − b‖² with k = 1e3: the gradient at the sample gives
    (θ−b)·g = k·A²c²ε², and the fixed point is A²c² = τ/k = 1e-3. (In
    float32 A could underflow to 0 only for a step below e^-100.)
    """
    k = 1e3
    opt = LieAffine(1.0, ess=1.0, scale_lr_ratio=1e-3, beta2=0.0,
                    noise_scale=1.0, weight_decay=0.0, seed=0)
    (variable,) = _build(opt, [np.zeros((1000,), "float32")])
    for _ in range(6):
        mean = _numpy(opt._state["mean"][0])
        grad = (k * (_numpy(variable) - mean)).astype("float32")
        opt.apply_gradients([(grad, variable)])
        scale = opt.posterior_scale()[0]
        assert np.all(scale > 0) and np.all(np.isfinite(scale))
        assert np.all(np.isfinite(_numpy(variable)))
    assert np.median(scale) < 0.5       # it did shrink, and stayed > 0


def test_uniform_samples_stay_in_their_box():
    opt = LieAffine(0.0, ess=10.0, noise="uniform", noise_scale=0.2,
                    scale_init=3.0, seed=0)
    _build(opt, [np.ones((500,), "float32")])
    for sample in (opt.draw_posterior_sample(seed=1),
                   opt.draw_posterior_sample()):
        offset = sample[0] - 1.0
        assert np.all(np.abs(offset) <= 0.5 * 0.2 * 3.0 + 1e-6)
        assert np.std(offset) == pytest.approx(0.6 / math.sqrt(12), rel=0.1)


# ----------------------------------------------------------------------
# Training with `fit`.

def _loss(model, x, y):
    return float(_numpy(LOSS(y, model(x, training=False))))


@pytest.mark.parametrize(
    "group, eager",
    [("additive", False), ("affine", False), ("affine", True),
     ("multiplicative", False), ("multiplicative", True)],
    ids=["additive-jit", "affine-jit", "affine-eager", "multiplicative-jit",
         "multiplicative-eager"],
)
def test_fit_reduces_the_loss(group, eager, digits):
    x, y, _, _ = digits
    x, y = x[:256], y[:256]
    rates = {"additive": 0.5, "affine": 0.5, "multiplicative": 5.0}
    args = dict(GROUP_ARGS[group])
    if group == "multiplicative":
        args["temperature"] = 0.01
    model = small_classifier()
    opt = LieGroupBLR(rates[group], group=group, seed=1, **args)
    model.compile(opt, LOSS, run_eagerly=eager)
    before = _loss(model, x, y)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    # After fit the model holds the posterior mean (the training loss is
    # taken at samples, which for the multiplicative rule are very noisy).
    weights_close(model.get_weights(), opt.posterior_mean(), atol=0)
    after = _loss(model, x, y)
    assert after < 0.75 * before, (before, after)
    assert all(np.all(s >= 0) for s in opt.posterior_std())


# ----------------------------------------------------------------------
# Configuration, validation, saving.

ALL_ARGS = {
    LieAdditive: dict(learning_rate=0.4, beta1=0.7, noise="laplace",
                      noise_scale=0.02, weight_decay=1e-3, mc_samples=1,
                      seed=9, clipnorm=1.0, name="add"),
    LieAffine: dict(learning_rate=0.9, ess=123.0, scale_lr_ratio=0.1,
                    beta1=0.6, beta2=0.99, temperature=0.5, scale_init=2.0,
                    noise="uniform", noise_scale=0.01, weight_decay=2e-4,
                    mc_samples=1, seed=8, gradient_accumulation_steps=2,
                    name="aff"),
    LieMultiplicative: dict(learning_rate=50.0, ess=600.0, beta1=0.95,
                            temperature=0.006, init_offset=1e-3,
                            noise="rayleigh", noise_scale=0.5,
                            weight_decay=1e-4, mc_samples=1, seed=7,
                            name="mul"),
}


def test_config_round_trips_every_argument():
    for cls, args in ALL_ARGS.items():
        opt = cls(**args)
        config = opt.get_config()
        for key, value in args.items():
            assert config[key] == pytest.approx(value), (cls, key)
        assert "fused_update" not in config
        revived = cls.from_config(config)
        assert revived.get_config() == config
        again = keras.optimizers.deserialize(
            keras.optimizers.serialize(opt))
        assert type(again) is cls and again.get_config() == config


def test_factory_builds_each_group():
    assert type(LieGroupBLR(0.1, group="additive")) is LieAdditive
    assert type(LieGroupBLR(0.1, ess=5.0)) is LieAffine
    assert type(LieGroupBLR(0.1, group="multiplicative",
                            ess=5.0)) is LieMultiplicative


BAD_ARGUMENTS = [
    (LieAdditive, {"beta1": 1.0}, r"`beta1` must be in \[0.0, 1.0\)"),
    (LieAdditive, {"noise": "cauchy"}, r"`noise` must be one of"),
    (LieAdditive, {"noise": "rayleigh"}, r"`noise` must be one of"),
    (LieAdditive, {"noise_scale": -0.1},
     r"`noise_scale` must be in \[0.0, inf\]"),
    (LieAdditive, {"weight_decay": -1.0}, r"`weight_decay` must be in"),
    (LieAdditive, {"mc_samples": 0}, r"`mc_samples` must be an integer"),
    (LieAdditive, {"mc_samples": 3}, r"only mc_samples=1"),
    (LieAdditive, {"fused_update": True}, r"`fused_update=True`"),
    (LieAdditive, {"learning_rate": -1.0}, r"`learning_rate` must be"),
    (LieAdditive, {"use_ema": True}, r"`use_ema=True` is not supported"),
    (LieAffine, {"ess": 0.0}, r"`ess` must be in \(0.0, inf\]"),
    (LieAffine, {"scale_lr_ratio": -1.0},
     r"`scale_lr_ratio` must be in \[0.0, inf\]"),
    (LieAffine, {"beta2": 1.0}, r"`beta2` must be in \[0.0, 1.0\)"),
    (LieAffine, {"temperature": -1.0},
     r"`temperature` must be in \[0.0, inf\]"),
    (LieAffine, {"scale_init": 0.0},
     r"`scale_init` must be in \(0.0, inf\]"),
    (LieAffine, {"noise_scale": float("nan")}, r"`noise_scale` must be"),
    (LieMultiplicative, {"noise": "gaussian"},
     r"`noise` must be one of \['rayleigh'\]"),
    (LieMultiplicative, {"noise_scale": 0.0},
     r"`noise_scale` must be in \(0.0, inf\]"),
    (LieMultiplicative, {"init_offset": 0.0},
     r"`init_offset` must be in \(0.0, inf\]"),
    (LieMultiplicative, {"ess": -2.0}, r"`ess` must be in"),
    ]


def test_bad_arguments_name_the_argument_and_range():
    for cls, kwargs, message in BAD_ARGUMENTS:
        args = {"learning_rate": 0.1}
        if cls is not LieAdditive:
            args["ess"] = 10.0
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            cls(**args)
    with pytest.raises(ValueError, match=r"`group` must be one of"):
        LieGroupBLR(0.1, group="rotation")


def test_save_and_load_restore_the_posterior(digits, tmp_path):
    x, y, _, _ = digits
    cls = LieAffine
    model = small_classifier()
    model.compile(cls(0.3, ess=len(x), noise_scale=0.05, seed=4), LOSS)
    model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "lie.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    weights_close([_numpy(v) for v in loaded.optimizer.variables],
                  [_numpy(v) for v in model.optimizer.variables], atol=0)
    weights_close(loaded.optimizer.posterior_std(),
                  model.optimizer.posterior_std(), atol=0)
    weights_close(loaded.get_weights(), model.optimizer.posterior_mean(),
                  atol=0)
    # Training resumes from the restored state.
    loaded.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == int(
        model.optimizer.iterations) + 1
