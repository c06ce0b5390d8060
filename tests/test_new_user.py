"""What a new user hits first: `SOBA()` out of the box, and silent failures
made loud (issue 16, optimizer rows)."""

import warnings

import keras
import numpy as np
import pytest

import keras_bayes
import keras_bayes.per_example
from keras_bayes.optimizers import SOBA

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def logistic_regression():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])


def shuffled_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_soba_with_no_arguments_trains_digits():
    x, y, xv, yv = shuffled_digits()
    model = logistic_regression()
    model.compile(optimizer=SOBA(), loss=LOSS, metrics=["accuracy"])
    initial = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(x, y, epochs=6, verbose=0)
    opt = model.optimizer
    assert opt.ess == len(x)
    assert model.evaluate(xv, yv, verbose=0)[1] >= 0.9
    # The posterior moved: the mean from the initial weights, σ from
    # 1/sqrt(ess·(h0 + δ)).
    moved = [np.abs(m - w).max() for m, w in zip(opt.posterior_mean(),
                                                 initial)]
    assert min(moved) > 0.05
    initial_std = 1.0 / np.sqrt(len(x) * (opt.hess_init + opt.weight_decay))
    assert max(np.abs(s - initial_std).max()
               for s in opt.posterior_std()) > 1e-6


def test_ess_is_the_training_part_and_is_saved(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 64)).astype("float32")
    y = np.arange(100) % 10
    model = logistic_regression()
    model.compile(optimizer=SOBA(), loss=LOSS)
    model.fit(x, y, batch_size=16, validation_split=0.2, epochs=1,
              verbose=0)
    assert model.optimizer.ess == 80
    path = tmp_path / "m.keras"
    model.save(path)
    assert keras.models.load_model(path).optimizer.ess == 80
    # A later fit on other data keeps it.
    model.fit(x[:50], y[:50], epochs=1, verbose=0)
    assert model.optimizer.ess == 80


def test_unknown_size_asks_for_ess():
    x = np.zeros((8, 64), "float32")
    y = np.zeros((8,), "int32")

    def batches():
        while True:
            yield x, y

    model = logistic_regression()
    model.compile(optimizer=SOBA(), loss=LOSS)
    with pytest.raises(ValueError, match=r"ess=len\(x_train\)"):
        model.fit(batches(), steps_per_epoch=2, epochs=1, verbose=0)
    model = logistic_regression()
    model.compile(optimizer=SOBA(), loss=LOSS)
    with pytest.raises(ValueError, match=r"ess=len\(x_train\)"):
        model.train_on_batch(x, y)
    # Given explicitly, the generator trains.
    model = logistic_regression()
    model.compile(optimizer=SOBA(ess=8), loss=LOSS)
    model.fit(batches(), steps_per_epoch=2, epochs=1, verbose=0)


@pytest.mark.backend_independent
def test_unresolved_ess_is_a_clear_error_for_the_posterior():
    model = logistic_regression()
    opt = SOBA()
    opt.build(model.trainable_variables)
    with pytest.raises(ValueError, match="ess=None"):
        opt.posterior_std()


@pytest.mark.parametrize("ess, warns", [(1, True), (512, False),
                                        (100_000, True)])
def test_ess_far_from_the_data_size_warns(ess, warns):
    x = np.zeros((512, 64), "float32")
    y = np.zeros((512,), "int32")
    model = logistic_regression()
    model.compile(optimizer=SOBA(ess=ess), loss=LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if "`ess`" in str(w.message)]
    assert bool(messages) == warns
    if warns:
        assert "512" in messages[0] and "10x" in messages[0]


def _messages(caught, text):
    return [str(w.message) for w in caught if text in str(w.message)]


def test_skipped_steps_warn_once_with_the_count_and_are_logged():
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    y = np.arange(64) % 10
    x[16:24] = np.nan  # batch 2 of 8
    x[40] = np.inf  # batch 5
    model = logistic_regression()
    model.compile(optimizer=SOBA(ess=64), loss=LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
            callbacks=[keras_bayes.callbacks.NonfiniteSteps()])
    skipped = _messages(caught, "NaN or Inf gradient")
    assert len(skipped) == 1 and "skipped 4 of 16 steps" in skipped[0]
    assert history.history["nonfinite_steps"] == [2, 4]
    assert model.optimizer.nonfinite_steps == 4
    assert all(np.all(np.isfinite(m)) for m in model.optimizer.posterior_mean())
    # The next fit reports only its own steps.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    assert not _messages(caught, "NaN or Inf gradient")


@pytest.mark.parametrize("beta2, warns", [(0.99999, True), (0.9, False)])
def test_short_run_for_beta2_warns_at_the_end_of_fit(beta2, warns):
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    y = np.arange(64) % 10
    model = logistic_regression()
    model.compile(optimizer=SOBA(ess=64, beta2=beta2), loss=LOSS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    messages = _messages(caught, "beta2")
    assert len(messages) == (1 if warns else 0)
    if warns:
        assert "ran 8 steps" in messages[0] and "hess_init" in messages[0]


@pytest.mark.parametrize("cls", ["SOBA", "VOGN"])
def test_one_optimizer_in_two_models_is_refused_before_a_write(cls):
    x = np.random.default_rng(0).normal(size=(32, 64)).astype("float32")
    y = np.arange(32) % 10
    opt = (SOBA(ess=32) if cls == "SOBA"
           else keras_bayes.optimizers.VOGN(0.01, ess=32))
    wrap = (keras_bayes.per_example.VOGNModel if cls == "VOGN"
            else (lambda model: model))
    first = wrap(logistic_regression())
    first.compile(optimizer=opt, loss=LOSS)
    first.fit(x, y, batch_size=8, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in first.trainable_variables]
    state = [s.copy() for s in opt.posterior_mean()]
    second = wrap(logistic_regression())
    second.compile(optimizer=opt, loss=LOSS)
    with pytest.raises(ValueError, match="(?i)new optimizer|recreate"):
        second.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, first.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())
    for a, b in zip(state, opt.posterior_mean()):
        np.testing.assert_array_equal(a, b)
    # The first model still trains with it.
    first.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_model_checkpoint_saves_the_mean_and_the_posterior(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    y = np.arange(64) % 10
    model = logistic_regression()
    opt = SOBA(ess=64, hess_init=0.05, beta2=0.9, seed=3)
    model.compile(optimizer=opt, loss=LOSS)
    path = tmp_path / "last.keras"
    samples = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: samples.append(
            [v.numpy().copy() for v in model.trainable_variables]))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        keras_bayes.callbacks.ModelCheckpoint(path), record])
    mean = opt.posterior_mean()
    # The callback after it still sees the sample, not the mean.
    assert max(np.abs(s - m).max() for s, m in zip(samples[-1], mean)) > 1e-3
    loaded = keras.models.load_model(path)
    for saved, m in zip(loaded.trainable_variables, mean):
        np.testing.assert_allclose(saved.numpy(), m, rtol=1e-6, atol=1e-7)
    for saved, s in zip(loaded.optimizer.posterior_std(), opt.posterior_std()):
        np.testing.assert_allclose(saved, s, rtol=1e-6)
    # Training continues from the saved posterior.
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 12
