"""Faults, early stopping, mixed precision, accumulation and clipping."""

import keras
import numpy as np
import pytest

import keras_bayes
from keras_bayes import optimizers as kbo
from keras_bayes.per_example import VOGNModel
from keras_bayes.training import TwoPassModel
from tests.helpers import backend
from tests.helpers import small_classifier

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _batches(seed=0, n=4, size=16):
    rng = np.random.RandomState(seed)
    x = rng.randn(n * size, 64).astype("float32")
    y = rng.randint(0, 10, n * size).astype("int32")
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size])
            for i in range(n)]


def _poisoned(batch, value=np.nan):
    x, y = batch
    x = x.copy()
    x[3, 5] = value
    return x, y


# name -> (optimizer factory, model wrapper)
OPTIMIZERS = {
    "soba": (lambda: kbo.SOBA(0.1, ess=64, seed=1), None),
    "soba_fused": (lambda: kbo.SOBA(0.1, ess=64, seed=1, fused_update=True),
                   None),
    "soba_2_samples": (lambda: kbo.SOBA(0.1, ess=64, seed=1, mc_samples=2),
                       TwoPassModel),
    "bsam": (lambda: kbo.BSAM(0.05, ess=64, seed=1), TwoPassModel),
    "lie_additive": (lambda: kbo.LieAdditive(0.05, seed=1), None),
    "lie_affine": (lambda: kbo.LieAffine(0.05, ess=64, seed=1), None),
    "lie_multiplicative": (lambda: kbo.LieMultiplicative(0.05, ess=64,
                                                          seed=1), None),
    "vogn": (lambda: kbo.VOGN(1e-3, ess=64, seed=1), VOGNModel),
}


def _compiled(name, **compile_kwargs):
    make, wrapper = OPTIMIZERS[name]
    model = small_classifier()
    if wrapper is not None:
        model = wrapper(model)
    optimizer = make()
    model.compile(optimizer, LOSS, **compile_kwargs)
    return model, optimizer


def _posterior_state(optimizer, model):
    """Every posterior slot and the model's weights, as NumPy arrays."""
    state = {name: [_numpy(s) for s in slots]
             for name, slots in optimizer._state.items()}
    state["model"] = [_numpy(w) for w in model.trainable_weights]
    return state


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for u, v in zip(a[name], b[name]):
            np.testing.assert_array_equal(u, v, err_msg=name)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nonfinite_gradient_skips_the_step(name, bad):
    if name == "vogn" and backend() == "torch" and bad == np.inf:
        pytest.skip("one value per optimizer is enough on torch")
    batches = _batches()
    model, optimizer = _compiled(name)
    model.train_on_batch(*batches[0])
    model.train_on_batch(*batches[1])
    before = _posterior_state(optimizer, model)
    model.train_on_batch(*_poisoned(batches[2], bad))
    _assert_state_equal(_posterior_state(optimizer, model), before)
    assert optimizer.nonfinite_steps == 1
    # Transient per-step statistics are not left holding NaN either.
    for variable in optimizer.variables:
        assert np.all(np.isfinite(_numpy(variable))), variable.path
    model.train_on_batch(*batches[3])
    after = _posterior_state(optimizer, model)
    assert not np.array_equal(after["model"][0], before["model"][0])
    assert all(np.all(np.isfinite(w)) for w in after["model"])
    assert optimizer.nonfinite_steps == 1


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_skipped_first_step_leaves_the_mean_on_the_variables(name):
    # A skipped step is no update: the mean still follows the variables
    # (their initial values), though the step left its slot untouched.
    batches = _batches()
    model, optimizer = _compiled(name)
    initial = [_numpy(w) for w in model.trainable_weights]
    model.train_on_batch(*_poisoned(batches[0]))
    assert optimizer.nonfinite_steps == 1
    for mean, weight in zip(optimizer.posterior_mean(), initial):
        np.testing.assert_array_equal(mean, weight)
    model.train_on_batch(*batches[1])
    assert all(np.all(np.isfinite(m)) for m in optimizer.posterior_mean())


def test_a_skipped_first_step_then_a_step_moves_the_mean_as_one_step():
    # The mean after (skipped, applied) is the mean after the applied step
    # alone: the update starts from the variables, not from the zeros in
    # the mean slot. (No momentum debiasing, which counts skipped steps.)
    batches = _batches()
    means = []
    for first in ([_poisoned(batches[0])], []):
        model = small_classifier()
        optimizer = kbo.SOBA(0.1, ess=64, seed=1, debias=False)
        model.compile(optimizer, LOSS)
        for batch in first + [batches[1]]:
            model.train_on_batch(*batch)
        means.append(optimizer.posterior_mean())
    for skipped, alone in zip(*means):
        assert not np.allclose(skipped, 0.0)
        np.testing.assert_allclose(skipped, alone, rtol=1e-6, atol=1e-7)


def test_raise_mode_raises_and_keeps_the_posterior():
    batches = _batches()
    model = small_classifier()
    optimizer = kbo.SOBA(0.1, ess=64, seed=1, nonfinite_gradients="raise")
    # A compiled JAX step refuses "raise" (test below): run it eagerly.
    model.compile(optimizer, LOSS, run_eagerly=backend() == "jax")
    model.train_on_batch(*batches[0])
    before = _posterior_state(optimizer, model)
    with pytest.raises(Exception, match="NaN or Inf"):
        model.train_on_batch(*_poisoned(batches[1]))
    _assert_state_equal(_posterior_state(optimizer, model), before)
    model.train_on_batch(*batches[2])
    assert all(np.all(np.isfinite(_numpy(w)))
               for w in model.trainable_weights)


@pytest.mark.skipif(backend() != "jax", reason="JAX-specific")
def test_raise_mode_is_refused_in_a_compiled_jax_step():
    model = small_classifier()
    model.compile(kbo.SOBA(0.1, ess=64, nonfinite_gradients="raise"), LOSS)
    with pytest.raises(ValueError, match="run_eagerly"):
        model.train_on_batch(*_batches()[0])


def test_nonfinite_gradients_validated_and_in_config():
    with pytest.raises(ValueError, match="nonfinite_gradients"):
        kbo.SOBA(0.1, ess=10, nonfinite_gradients="ignore")
    opt = kbo.BSAM(0.1, ess=10, nonfinite_gradients="raise")
    assert kbo.BSAM.from_config(
        opt.get_config()).nonfinite_gradients == "raise"


def test_a_nan_micro_batch_skips_the_whole_accumulated_update():
    batches = _batches(n=6)
    model = small_classifier()
    optimizer = kbo.SOBA(0.1, ess=64, seed=1, gradient_accumulation_steps=2)
    model.compile(optimizer, LOSS)
    model.train_on_batch(*batches[0])
    model.train_on_batch(*batches[1])          # update 1
    before = _posterior_state(optimizer, model)
    model.train_on_batch(*_poisoned(batches[2]))
    model.train_on_batch(*batches[3])          # update 2: skipped
    _assert_state_equal(_posterior_state(optimizer, model), before)
    assert optimizer.nonfinite_steps == 1
    model.train_on_batch(*batches[4])
    model.train_on_batch(*batches[5])          # update 3: applied
    assert not np.array_equal(_numpy(model.trainable_weights[0]),
                              before["model"][0])


# ----------------------------------------------------------------------
# Early stopping.

class _Score(keras.callbacks.Callback):
    """Writes a fixed score per epoch into the logs (best at epoch 1) and
    records the posterior at the end of every epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores
        self.means, self.stds = [], []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
        optimizer = self.model.optimizer
        self.means.append(optimizer.posterior_mean())
        self.stds.append(optimizer.posterior_std())


def _fit_with(stopper, digits, swap=False):
    x, y, _, _ = digits
    model = small_classifier()
    optimizer = kbo.SOBA(0.2, ess=len(x), seed=3)
    model.compile(optimizer, LOSS)
    score = _Score([3.0, 1.0, 2.0, 4.0, 5.0])
    callbacks = [score]
    if swap:
        callbacks.append(keras_bayes.callbacks.SwapMeanWeights(
            swap_on_epoch=True))
    model.fit(x[:512], y[:512], batch_size=64, epochs=5, verbose=0,
              callbacks=callbacks + [stopper])
    return model, optimizer, score


def test_early_stopping_restores_the_best_mean_and_posterior(digits):
    stopper = keras_bayes.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=2, restore_best_weights=True)
    model, optimizer, score = _fit_with(stopper, digits)
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    for weight, mean in zip(model.trainable_weights, score.means[1]):
        np.testing.assert_array_equal(_numpy(weight), mean)
    for std, best in zip(optimizer.posterior_std(), score.stds[1]):
        np.testing.assert_allclose(std, best, rtol=1e-6)
    # The last epoch's posterior differs, so the restore did something.
    assert not np.allclose(score.means[3][0], score.means[1][0])


def test_keras_early_stopping_alone_restores_a_sample(digits):
    """Why the subclass exists; Keras' callback after SwapMeanWeights(
    swap_on_epoch=True) is the documented alternative."""
    stopper = keras.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=2, restore_best_weights=True)
    model, _, score = _fit_with(stopper, digits)
    assert not np.allclose(_numpy(model.trainable_weights[0]),
                           score.means[1][0])
    stopper = keras.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=2, restore_best_weights=True)
    model, _, score = _fit_with(stopper, digits, swap=True)
    np.testing.assert_array_equal(_numpy(model.trainable_weights[0]),
                                  score.means[1][0])


# ----------------------------------------------------------------------
# Mixed precision.

@pytest.fixture
def policy():
    def set_policy(name):
        keras.mixed_precision.set_dtype_policy(name)
    try:
        yield set_policy
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def _float32_state(optimizer):
    for variable in optimizer.variables:
        if "float" in str(variable.dtype):
            assert str(variable.dtype) == "float32", variable.path
            assert np.all(np.isfinite(_numpy(variable))), variable.path


@pytest.mark.parametrize("name,dtype_policy", [
    ("soba", "mixed_float16"), ("soba", "mixed_bfloat16"),
    ("bsam", "mixed_float16")])
def test_mixed_precision_trains_with_float32_posterior(policy, dtype_policy,
                                                      name, digits):
    policy(dtype_policy)
    x, y, xv, yv = digits
    model = small_classifier()
    if name == "bsam":
        model = TwoPassModel(model)
        inner = kbo.BSAM(0.5, ess=len(x), seed=1)
    else:
        inner = kbo.SOBA(0.2, ess=len(x), seed=1)
    model.compile(inner, LOSS)
    optimizer = model.optimizer
    if dtype_policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras_bayes.optimizers.base.unwrap_optimizer(optimizer) is inner
    layer = (model.inner if hasattr(model, "inner") else model).layers[0]
    assert layer.compute_dtype == dtype_policy.split("_")[1]
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    assert all(str(w.dtype) == "float32" for w in model.trainable_weights)
    _float32_state(inner)
    assert all(np.all(np.isfinite(s)) for s in inner.posterior_std())
    model.compile(inner, LOSS, metrics=["accuracy"])  # evaluate as is
    # Chance is 0.1; float32 reaches 0.8-0.9 in these 3 epochs.
    assert model.evaluate(xv, yv, verbose=0)[1] > 0.7


def test_loss_scale_overflow_skips_the_inner_update(policy):
    policy("mixed_float16")
    batches = _batches()
    model = small_classifier()
    inner = kbo.SOBA(0.1, ess=64, seed=1)
    optimizer = keras.optimizers.LossScaleOptimizer(inner,
                                                    initial_scale=2.0 ** 40)
    model.compile(optimizer, LOSS)
    weights = [_numpy(w) for w in model.trainable_weights]
    model.train_on_batch(*batches[0])
    # float16 gradients of a loss scaled by 2^40 overflow: the wrapper halves
    # the scale and SOBA never sees the step.
    assert int(_numpy(inner.iterations)) == 0
    assert float(_numpy(optimizer.dynamic_scale)) == 2.0 ** 39
    for w, before in zip(model.trainable_weights, weights):
        np.testing.assert_array_equal(_numpy(w), before)
    for batch in batches * 10:
        model.train_on_batch(*batch)
        if int(_numpy(inner.iterations)) > 0:
            break
    assert int(_numpy(inner.iterations)) > 0
    _float32_state(inner)


# ----------------------------------------------------------------------
# Gradient accumulation and clipping, method by method.

@pytest.mark.parametrize("make", [
    lambda: kbo.BSAM(0.1, ess=10, gradient_accumulation_steps=2),
    lambda: kbo.SAM(0.1, gradient_accumulation_steps=2),
    lambda: kbo.VOGN(0.1, ess=10, gradient_accumulation_steps=2),
    lambda: kbo.SOBA(0.1, ess=10, mc_samples=2,
                     gradient_accumulation_steps=2),
], ids=["bsam", "sam", "vogn", "soba_2_samples"])
def test_accumulation_rejected_where_the_statistics_would_not_match(make):
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        make()


@pytest.mark.parametrize("name", ["lie_additive", "lie_affine",
                                  "lie_multiplicative"])
def test_lie_rules_accumulate_at_one_sample_per_update(name):
    batches = _batches(n=4)
    model = small_classifier()
    cls = {"lie_additive": lambda: kbo.LieAdditive(
        0.05, seed=1, gradient_accumulation_steps=2),
        "lie_affine": lambda: kbo.LieAffine(
            0.05, ess=64, seed=1, gradient_accumulation_steps=2),
        "lie_multiplicative": lambda: kbo.LieMultiplicative(
            0.05, ess=64, seed=1, gradient_accumulation_steps=2)}[name]
    model.compile(cls(), LOSS)
    samples = []
    for batch in batches:
        model.train_on_batch(*batch)
        samples.append(_numpy(model.trainable_weights[0]))
    changed = [not np.array_equal(a, b) for a, b in zip(samples,
                                                        samples[1:])]
    assert changed == [True, False, True]


def test_global_clipnorm_clips_the_sampled_gradient_before_the_update():
    v = keras.Variable(np.zeros(4, "float32"))
    w = keras.Variable(np.zeros(3, "float32"))
    opt = kbo.LieAdditive(1.0, beta1=0.0, noise_scale=0.0, weight_decay=0.0,
                          global_clipnorm=1.0)
    opt.apply_gradients([
        (keras.ops.convert_to_tensor(np.full(4, 3.0, "float32")), v),
        (keras.ops.convert_to_tensor(np.full(3, 4.0, "float32")), w)])
    # ‖g‖ = sqrt(4·9 + 3·16) = sqrt(84); zero-noise additive rule = SGD.
    np.testing.assert_allclose(_numpy(v), -3.0 / np.sqrt(84.0), rtol=1e-5)
    np.testing.assert_allclose(_numpy(w), -4.0 / np.sqrt(84.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["soba", "lie_affine"])
def test_accumulating_two_half_batches_equals_one_full_batch(name):
    """The accumulated gradient is the full batch's gradient at the same
    sample, so every curvature statistic built from it is the full batch's
    too: k = 2 over halves reproduces the run on whole batches."""
    halves = _batches(n=8, size=16)
    wholes = [(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
              for a, b in zip(halves[::2], halves[1::2])]
    make = {"soba": lambda **k: kbo.SOBA(0.1, ess=64, seed=1, **k),
            "lie_affine": lambda **k: kbo.LieAffine(0.05, ess=64, seed=1,
                                                    **k)}[name]
    results = []
    for batches, kwargs in [(halves, {"gradient_accumulation_steps": 2}),
                            (wholes, {})]:
        keras.utils.set_random_seed(0)
        model = small_classifier()
        optimizer = make(**kwargs)
        model.compile(optimizer, LOSS)
        for batch in batches:
            model.train_on_batch(*batch)
        results.append(_posterior_state(optimizer, model))
        assert int(_numpy(optimizer.iterations)) == 4
    for key in results[0]:
        for u, v in zip(results[0][key], results[1][key]):
            np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6,
                                       err_msg=key)
