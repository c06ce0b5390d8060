"""SOBA through `compile` + `fit` on every model kind and execution mode."""

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes.optimizers import SOBA
from tests.helpers import small_classifier
from tests.helpers import weights_close

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _soba(n, **kw):
    kw = {"hess_init": 0.5, "seed": 42, **kw}
    return SOBA(0.2, ess=n, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_fit_trains_and_ends_at_the_mean(digits, kind, eager):
    x, y, xv, yv = digits
    model = small_classifier(kind)
    opt = _soba(len(x))
    model.compile(opt, LOSS, metrics=["accuracy"], run_eagerly=eager)
    before = model.evaluate(xv, yv, verbose=0)[0]
    hist = model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    after = model.evaluate(xv, yv, verbose=0)
    assert after[0] < 0.5 * before and after[1] > 0.7
    # After fit the model holds the posterior mean, in the model's order.
    weights_close([v.numpy() for v in model.trainable_variables],
                  opt.posterior_mean(), atol=0)
    stds = opt.posterior_std()
    assert [s.shape for s in stds] == [
        tuple(v.shape) for v in model.trainable_variables]
    assert all(np.all(np.isfinite(s)) and np.all(s > 0) for s in stds)


def test_variables_hold_samples_during_fit(digits):
    x, y, _, _ = digits
    model = small_classifier()
    opt = _soba(len(x))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (2, 3):
                w = self.model.trainable_variables[0].numpy()
                seen.append(w - opt.posterior_mean()[0])

    model.compile(opt, LOSS)
    model.fit(x[:512], y[:512], batch_size=64, epochs=1, verbose=0,
              callbacks=[Record()])
    z0, z1 = (d / opt.posterior_std()[0] for d in seen)
    # Standardised perturbations look like fresh N(0, 1) draws each step.
    for z in (z0, z1):
        assert 0.8 < z.std() < 1.2 and abs(z.mean()) < 0.2
    assert abs(np.corrcoef(z0.ravel(), z1.ravel())[0, 1]) < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_swap_mean_weights_validates_at_the_mean(digits, eager):
    x, y, xv, yv = digits

    def run(callbacks):
        keras.utils.set_random_seed(0)
        model = small_classifier()
        model.compile(_soba(len(x)), LOSS, run_eagerly=eager)
        hist = model.fit(x, y, batch_size=64, epochs=2, verbose=0,
                         shuffle=False, validation_data=(xv, yv),
                         callbacks=callbacks)
        return model, hist

    model, hist = run([keras_bayes.callbacks.SwapMeanWeights()])
    # The mean does not move after the last validation, so the last
    # val_loss must be the loss at the final mean.
    at_mean = model.evaluate(xv, yv, verbose=0)
    np.testing.assert_allclose(hist.history["val_loss"][-1], at_mean,
                               rtol=1e-5)
    # The swap restores the sample: training is exactly as without it.
    plain, plain_hist = run([])
    weights_close(model.get_weights(), plain.get_weights(), atol=1e-6)
    np.testing.assert_allclose(hist.history["loss"],
                               plain_hist.history["loss"], rtol=1e-5)
    assert abs(plain_hist.history["val_loss"][-1] - at_mean) > 1e-6


def test_swap_on_epoch_keeps_the_mean_between_epochs(digits):
    x, y, _, _ = digits
    model = small_classifier()
    opt = _soba(len(x))
    at_epoch_end = []

    class Check(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            at_epoch_end.append(
                np.allclose(self.model.trainable_variables[0].numpy(),
                            opt.posterior_mean()[0]))

    model.compile(opt, LOSS)
    model.fit(x[:256], y[:256], batch_size=64, epochs=2, verbose=0,
              callbacks=[keras_bayes.callbacks.SwapMeanWeights(
                  swap_on_epoch=True), Check()])
    assert at_epoch_end == [True, True]


def test_a_second_fit_continues_without_corrupting_the_posterior(digits):
    x, y, xv, yv = digits
    model = small_classifier()
    opt = _soba(len(x), beta2=0.99)
    model.compile(opt, LOSS)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    hess = [h.numpy().copy() for h in opt._state["hessian"]]
    mean = opt.posterior_mean()
    model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    # One step whose gradient was taken at the mean: the Hessian is kept,
    # and the mean moved by a small step from where the first fit ended.
    weights_close([h.numpy() for h in opt._state["hessian"]], hess, atol=0)
    for m0, m1 in zip(mean, opt.posterior_mean()):
        assert 0 < np.abs(m1 - m0).max() < 0.5
    loss_before = model.evaluate(xv, yv, verbose=0)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert model.evaluate(xv, yv, verbose=0) < loss_before + 0.05


class UnusedWeightModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)
        self.unused = self.add_weight(
            shape=(3,), initializer=keras.initializers.Constant(0.7),
            name="unused")

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_variables_without_gradient_are_left_alone(digits, eager):
    x, y, _, _ = digits
    model = UnusedWeightModel()
    model.compile(_soba(len(x)), LOSS, run_eagerly=eager)
    model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    if keras.backend.backend() == "jax":
        # jax.grad returns zeros, not None, for unused variables, so Keras
        # cannot tell them apart: they are trained under the prior alone,
        # which only shrinks the mean by the tiny prior precision.
        assert np.all(np.abs(model.unused.numpy() - 0.7) < 1e-3)
    else:
        np.testing.assert_allclose(model.unused.numpy(), 0.7)


def test_learning_rate_schedule(digits):
    x, y, _, _ = digits
    schedule = keras.optimizers.schedules.CosineDecay(0.2, decay_steps=38)
    model = small_classifier()
    opt = SOBA(schedule, ess=len(x), hess_init=0.5, seed=1)
    model.compile(opt, LOSS)
    hist = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert hist.history["loss"][1] < hist.history["loss"][0]
    np.testing.assert_allclose(float(opt.learning_rate), 0.0, atol=1e-6)


def test_gradient_accumulation_keeps_one_sample_per_update(digits):
    x, y, _, _ = digits
    model = small_classifier()
    opt = _soba(len(x), gradient_accumulation_steps=2)
    samples = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            samples.append(self.model.trainable_variables[0].numpy().copy())

    model.compile(opt, LOSS)
    model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0,
              callbacks=[Record()])
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 4
    changed = [not np.array_equal(a, b) for a, b in zip(samples, samples[1:])]
    # The sample changes on update steps only (2nd, 4th, ... micro-batch).
    assert changed == [True, False, True, False, True, False, True]


def test_clipnorm_is_applied_before_the_update():
    v = keras.Variable(np.zeros(4, "float32"))
    opt = SOBA(1.0, ess=10.0, hess_init=1.0, weight_decay=0.0, clipnorm=1.0,
               seed=0)
    opt.apply_gradients([(np.full(4, 10.0, "float32"), v)])
    # First step: m ← −α·clip(g) with ‖clip(g)‖ = 1.
    np.testing.assert_allclose(opt.posterior_mean()[0], -0.5, rtol=1e-5)


def test_sampled_and_mean_weights_context_managers(digits):
    x, y, xv, _ = digits
    model = small_classifier()
    opt = _soba(len(x))
    model.compile(opt, LOSS)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    mean = model.get_weights()
    with opt.sampled_weights(seed=3):
        inside = model.get_weights()
    weights_close(model.get_weights(), mean, atol=0)
    z = (inside[0] - mean[0]) / opt.posterior_std()[0]
    assert 0.8 < z.std() < 1.2
    with pytest.raises(RuntimeError, match="boom"):
        with opt.sampled_weights():
            raise RuntimeError("boom")
    weights_close(model.get_weights(), mean, atol=0)
    with opt.sampled_weights(seed=3):
        weights_close(model.get_weights(), inside, atol=0)


def test_predictive_averages_samples(digits):
    x, y, xv, yv = digits
    model = small_classifier()
    opt = _soba(len(x))
    model.compile(opt, LOSS)
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    mean = model.get_weights()
    pred = keras_bayes.Predictive(model, num_samples=4, from_logits=True,
                                  seed=0)
    logp = pred.predict_log_samples(xv)
    assert logp.shape == (4, len(xv), 10)
    probs = pred.predict(xv)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, np.exp(logp).mean(0), rtol=1e-5,
                               atol=1e-7)
    assert not np.allclose(logp[0], logp[1])
    weights_close(model.get_weights(), mean, atol=0)
    with pytest.raises(ValueError, match="num_samples"):
        keras_bayes.Predictive(model, num_samples=0)
    with pytest.raises(ValueError, match="keras_bayes optimizer"):
        plain = small_classifier()
        plain.compile("adam", LOSS)
        keras_bayes.Predictive(plain)


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="jit_compile=True is torch.compile on torch; "
                    "the XLA variable-lifting check is TensorFlow's")
@pytest.mark.parametrize("make", [
    lambda: keras_bayes.optimizers.SOBA(0.1, ess=64.0, seed=0),
    lambda: keras_bayes.optimizers.SOBA(0.1, ess=64.0, seed=0,
                                        gradient_accumulation_steps=2),
], ids=["plain", "accumulated"])
def test_jit_compile_true(make):
    """XLA on TensorFlow (the default there on a GPU): the optimizer is built
    inside the traced step, so no slot may start from a traced value."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    initial = [w.copy() for w in model.get_weights()]
    optimizer = make()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), jit_compile=True)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # The mean moved away from the initial weights, and not towards 0 (the
    # constant the mean slot starts from): the first update used the
    # weights as the mean.
    mean = optimizer.posterior_mean()
    assert not np.allclose(mean[0], initial[0])
    assert np.abs(mean[0] - initial[0]).max() < 0.5 * np.abs(
        initial[0]).max()
