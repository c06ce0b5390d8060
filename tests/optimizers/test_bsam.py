"""bSAM: the update equations, the posterior, saving and validation."""

import keras
import numpy as np
import pytest

from keras_bayes import backend
from keras_bayes.optimizers.bsam import BSAM
from keras_bayes.training import TwoPassModel
from tests.training.test_two_pass import data
from tests.training.test_two_pass import dense_model
from tests.training.test_two_pass import mse_grads

EAGER = pytest.mark.parametrize("eager", [False, True],
                                ids=["compiled", "eager"])
HYPER = dict(learning_rate=0.1, ess=50.0, rho=0.05, beta1=0.8, beta2=0.9,
             weight_decay=0.01, damping=0.1, precision_init=2.0)


def numpy_bsam(sample, mean, precision, momentum, x, y, h=HYPER):
    """One bSAM step (algorithms.md §2.2), float64, old s in the mean step."""
    g1 = mse_grads(*sample, x, y)
    curvature = [np.sqrt(s) * np.abs(g) for s, g in zip(precision, g1)]
    point = [m + h["rho"] * g / s for m, g, s in zip(mean, g1, precision)]
    g2 = mse_grads(*point, x, y)
    delta = h["weight_decay"]
    momentum = [h["beta1"] * gm + (1 - h["beta1"]) * (g + delta * m)
                for gm, g, m in zip(momentum, g2, mean)]
    new_mean = [m - h["learning_rate"] * gm / s
                for m, gm, s in zip(mean, momentum, precision)]
    precision = [h["beta2"] * s + (1 - h["beta2"]) * (a + delta + h["damping"])
                 for s, a in zip(precision, curvature)]
    return new_mean, precision, momentum


def wrapped(eager, **overrides):
    wrapper = TwoPassModel(dense_model())
    wrapper.compile(optimizer=BSAM(**{**HYPER, "seed": 5, **overrides}),
                    loss="mse", run_eagerly=eager)
    return wrapper


def slots(opt, model, name):
    return [keras.ops.convert_to_numpy(
        opt._state[name][opt._get_variable_index(v)])
        for v in model.trainable_variables]


def set_slots(opt, model, name, values):
    for v, value in zip(model.trainable_variables, values):
        opt._state[name][opt._get_variable_index(v)].assign(value)


@pytest.mark.parametrize("fused", [False, True], ids=["per_var", "fused"])
@EAGER
def test_one_update_matches_the_equations(eager, fused):
    x, y = data()
    wrapper = wrapped(eager, fused_update=fused)
    opt = wrapper.optimizer
    wrapper.train_on_batch(x, y)  # builds; iterations = 1 afterwards

    rng = np.random.default_rng(1)
    shapes = [w.shape for w in wrapper.get_weights()]
    mean = [rng.normal(size=s) for s in shapes]
    precision = [rng.uniform(0.5, 3.0, size=s) for s in shapes]
    momentum = [0.1 * rng.normal(size=s) for s in shapes]
    # The "fixed noise": the sample the first pass runs at.
    sample = [m + 0.05 * rng.normal(size=s) for m, s in zip(mean, shapes)]
    set_slots(opt, wrapper, "mean", [m.astype("float32") for m in mean])
    set_slots(opt, wrapper, "precision",
              [s.astype("float32") for s in precision])
    set_slots(opt, wrapper, "momentum",
              [g.astype("float32") for g in momentum])
    wrapper.set_weights([s.astype("float32") for s in sample])

    wrapper.train_on_batch(x, y)
    want_mean, want_precision, want_momentum = numpy_bsam(
        sample, mean, precision, momentum, x, y)
    for name, want in (("mean", want_mean), ("precision", want_precision),
                       ("momentum", want_momentum)):
        for got, w in zip(slots(opt, wrapper, name), want):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6,
                                       err_msg=name)
    # The next sample: m + N(0, 1/(N·s)) with the new s.
    std = [1.0 / np.sqrt(HYPER["ess"] * s) for s in want_precision]
    for got, w in zip(opt.posterior_std(), std):
        np.testing.assert_allclose(got, w, rtol=1e-5)
    z = np.concatenate([((theta - m) / s).ravel() for theta, m, s in
                        zip(wrapper.get_weights(), want_mean, std)])
    assert np.all(np.abs(z) < 6.0) and np.std(z) > 0.1


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="torch's compiled kernels")
@pytest.mark.parametrize("fused", [False, True], ids=["per_var", "fused"])
def test_compiled_passes_and_update_match_the_equations(monkeypatch, fused):
    """The same step with every elementwise kernel compiled on torch (the
    second-pass point, the curvature statistic written in place, the
    update): the threshold set to 0."""
    from keras_bayes.backend import torch as torch_backend

    monkeypatch.setattr(torch_backend, "COMPILE_MIN_ENTRIES", 0)
    test_one_update_matches_the_equations(eager=False, fused=fused)


@EAGER
def test_first_step_perturbs_the_initial_weights(eager):
    # Step 1: the mean is the initial weights, g1 is taken at them.
    x, y = data()
    wrapper = wrapped(eager)
    weights = [np.array(w, dtype="float64") for w in wrapper.get_weights()]
    precision = [np.full_like(w, HYPER["precision_init"]) for w in weights]
    momentum = [np.zeros_like(w) for w in weights]
    wrapper.train_on_batch(x, y)
    want_mean, want_precision, _ = numpy_bsam(weights, weights, precision,
                                              momentum, x, y)
    for got, w in zip(wrapper.optimizer.posterior_mean(), want_mean):
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)
    for got, w in zip(slots(wrapper.optimizer, wrapper, "precision"),
                      want_precision):
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)


def test_fit_writes_the_mean_at_the_end():
    x, y = data(n=16)
    wrapper = wrapped(False)
    history = wrapper.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for got, m in zip(wrapper.get_weights(),
                      wrapper.optimizer.posterior_mean()):
        np.testing.assert_allclose(got, m, rtol=1e-6)


def test_save_load_continues_identically(tmp_path):
    x, y = data()
    wrapper = wrapped(False)
    for _ in range(2):
        wrapper.train_on_batch(x, y)
    path = str(tmp_path / "bsam.keras")
    wrapper.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TwoPassModel)
    assert isinstance(loaded.optimizer, BSAM)
    assert loaded.optimizer.get_config() == wrapper.optimizer.get_config()
    for a, b in zip(wrapper.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    for model in (wrapper, loaded):
        for _ in range(2):
            model.train_on_batch(x, y)
    for a, b in zip(wrapper.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(wrapper.optimizer.posterior_mean(),
                    loaded.optimizer.posterior_mean()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_config_round_trips_every_argument():
    args = dict(learning_rate=0.3, ess=123.0, rho=0.02, beta1=0.8,
                beta2=0.99, weight_decay=3e-4, damping=0.2,
                precision_init=0.5, batch_split=1, seed=9,
                fused_update=False, clipnorm=2.0, name="my_bsam")
    opt = BSAM(**args)
    config = opt.get_config()
    for key, value in args.items():
        assert config[key] == pytest.approx(value), key
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is BSAM and again.get_config() == config


@pytest.mark.backend_independent
@pytest.mark.parametrize("kwargs,name", [
    (dict(ess=0.0), "ess"),
    (dict(rho=-1.0), "rho"),
    (dict(beta1=1.0), "beta1"),
    (dict(beta2=1.0), "beta2"),
    (dict(beta2=-0.1), "beta2"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(damping=-0.1), "damping"),
    (dict(precision_init=0.0), "precision_init"),
    (dict(batch_split=0), "batch_split"),
    (dict(batch_split=2.0), "batch_split"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(seed=1.5), "seed"),
    (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
    (dict(use_ema=True), "use_ema"),
])
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BSAM(**{"learning_rate": 0.1, "ess": 10.0, **kwargs})


def test_loss_scale_factor_does_not_change_the_update():
    # g1 is unscaled before ρ·g1/s and sqrt(s)·|g1| (Keras unscales g2).
    x, y = data()
    results = []
    for factor in (None, 64.0):
        wrapper = wrapped(False, loss_scale_factor=factor)
        wrapper.train_on_batch(x, y)
        results.append(wrapper.optimizer.posterior_mean()
                       + slots(wrapper.optimizer, wrapper, "precision"))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_subclassed_inner_model_trains():
    from tests.helpers import small_classifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, size=16)
    wrapper = TwoPassModel(small_classifier("subclassed"))
    wrapper.compile(optimizer=BSAM(0.05, ess=16.0, seed=1),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True))
    history = wrapper.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert wrapper.predict(x, verbose=0).shape == (16, 10)


def test_loss_scale_optimizer_wrapper_gives_the_same_update():
    x, y = data()
    results = []
    for wrap in (False, True):
        opt = BSAM(**{**HYPER, "seed": 3})
        if wrap:
            opt = keras.optimizers.LossScaleOptimizer(opt, initial_scale=64.0)
        wrapper = TwoPassModel(dense_model())
        wrapper.compile(optimizer=opt, loss="mse")
        for _ in range(2):
            wrapper.train_on_batch(x, y)
        results.append(getattr(opt, "inner_optimizer", opt).posterior_mean())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def replay_normals(optimizer, shapes):
    """The per-variable N(0, 1) draws the optimizer's training seed will
    produce next, from a copy of its state."""
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(
        keras.ops.convert_to_numpy(optimizer._seed_generator.state.value))
    return [keras.ops.convert_to_numpy(backend.standard_normal(
        s, "float32", generator)).astype(np.float64)
        for s in shapes]


@EAGER
def test_every_fit_starts_from_a_sample(eager):
    # The first step of each `fit` takes g1 at m + e (e from the training
    # seed), not at the mean: also the first step of a second `fit`, whose
    # variables hold the mean written back by the first.
    x, y = data()
    wrapper = wrapped(eager)
    opt = wrapper.optimizer
    mean = [np.array(w, dtype="float64") for w in wrapper.get_weights()]
    shapes = [m.shape for m in mean]
    precision = [np.full(s, HYPER["precision_init"]) for s in shapes]
    momentum = [np.zeros(s) for s in shapes]
    for _ in range(2):
        normals = replay_normals(opt, shapes)
        sample = [m + z / np.sqrt(HYPER["ess"] * s)
                  for m, z, s in zip(mean, normals, precision)]
        wrapper.fit(x, y, batch_size=len(x), epochs=1, shuffle=False,
                    verbose=0)
        mean, precision, momentum = numpy_bsam(sample, mean, precision,
                                               momentum, x, y)
        for got, want in zip(opt.posterior_mean(), mean):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        for got, want in zip(slots(opt, wrapper, "precision"), precision):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        # `fit` wrote the mean back.
        for got, want in zip(wrapper.get_weights(), mean):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_repeated_fit_after_save_load_is_bit_identical(tmp_path):
    x, y = data(n=16)
    wrapper = wrapped(False)
    wrapper.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "bsam.keras")
    wrapper.save(path)
    loaded = keras.models.load_model(path)
    for model in (wrapper, loaded):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(wrapper.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(wrapper.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


class _StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resume_is_bit_identical(tmp_path):
    # An interrupted run resumed by BackupAndRestore (as the benchmark
    # harness does) equals the uninterrupted one, noise included.
    x, y = data(n=16)

    def run(callbacks):
        wrapper = wrapped(False)
        wrapper.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                    callbacks=callbacks)
        return wrapper

    straight = run([])
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), _StopAtEpoch(2)])
    resumed = run([keras.callbacks.BackupAndRestore(backup)])
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(straight.optimizer.posterior_std(),
                    resumed.optimizer.posterior_std()):
        np.testing.assert_array_equal(a, b)
