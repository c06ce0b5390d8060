"""SOBA with the GPT-2 recipe on a small transformer language model.

The model is `keras_bayes.models.transformer_lm`; the optimizer comes from
`keras_bayes.recipes.soba_gpt2_recipe` (per-variable weight decay, clip
radius, global gradient clipping), trained under `mixed_bfloat16`.
"""

import math

import keras
import numpy as np
import pytest

import keras_bayes  # noqa: F401  (registers the classes for loading)
from keras_bayes import recipes
from keras_bayes.models import transformer_lm

# The training, saving and clip-radius tests read one training run (a
# module fixture): a parallel run keeps this file on one worker.
pytestmark = pytest.mark.xdist_group("transformer_lm")

CORPUS = "the quick brown fox jumps over the lazy dog. " * 40
SEQUENCE_LENGTH = 16
BATCH = 16
# The test trains on a repeated sentence, so "the number of training
# tokens" is taken as that of a million-character corpus: with the
# corpus's own 1 800 characters σ = 1/sqrt(λ·h0) ≈ 0.75 would bury the
# weights (init std 0.02) and the short run would test noise, not training.
TRAIN_TOKENS = 1e6
# A few dozen steps need larger steps than the recipe's few hundred
# thousand: α·h0·ξ = 5e-3 per coordinate at most.
LEARNING_RATE = 5000.0
HESS_INIT = 1e-3
CLIP_RADIUS = 1e-3
WEIGHT_DECAY = 1e-6
NO_DECAY = ("bias", "gamma", "beta")


def _corpus_windows(count, seed=0):
    vocabulary = sorted(set(CORPUS))
    ids = np.array([vocabulary.index(c) for c in CORPUS], dtype="int32")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - SEQUENCE_LENGTH - 1, size=count)
    windows = ids[starts[:, None] + np.arange(SEQUENCE_LENGTH + 1)]
    return windows[:, :-1], windows[:, 1:], len(vocabulary)


def _tiny_lm(vocab_size, seed=0):
    return transformer_lm(vocab_size, SEQUENCE_LENGTH, num_layers=1,
                          num_heads=2, hidden_dim=32, seed=seed)


def _recipe(total_steps, **kwargs):
    options = dict(train_tokens=TRAIN_TOKENS, total_steps=total_steps,
                   learning_rate=LEARNING_RATE, seed=3)
    options.update(kwargs)
    return recipes.soba_gpt2_recipe(**options)


def _compiled_lm(vocab_size, optimizer):
    model = _tiny_lm(vocab_size)
    model.compile(optimizer=optimizer, loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    return model


def _warmup(total_steps):
    # The recipe's default: 2 % of the run, at least one step.
    return max(1, round(0.02 * total_steps))


def _warmup_cosine(step, peak, total_steps, warmup_steps):
    """nanoGPT's schedule with min_lr = 0, counted from step 0."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _low_16_bits_used(array):
    """True where a float32 value is not representable in bfloat16."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return (bits & 0xFFFF) != 0


def _numpy(values):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in values]


class _RecordMeans(keras.callbacks.Callback):
    """The posterior mean after every step and the model's last sample."""

    def __init__(self):
        super().__init__()
        self.means = []
        self.sample = None

    def on_train_batch_end(self, batch, logs=None):
        # `self.model` syncs the JAX trainer's state into the variables.
        model = self.model
        self.means.append(_numpy(model.optimizer._state["mean"]))
        self.sample = _numpy(model.trainable_variables)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """Trains the tiny LM with the recipe under mixed_bfloat16, once per
    module: the training, saving and clip-radius tests read this run."""
    steps = 40
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        x, y, vocab_size = _corpus_windows(steps * BATCH)
        model = _compiled_lm(vocab_size, _recipe(steps))
        initial_means = _numpy(model.trainable_variables)
        record = _RecordMeans()
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0,
                  callbacks=[record])
        path = str(tmp_path_factory.mktemp("lm") / "lm.keras")
        model.save(path)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return dict(model=model, x=x, y=y, vocab_size=vocab_size, path=path,
                means=[initial_means] + record.means, sample=record.sample,
                steps=steps)


def test_soba_trains_the_lm_under_mixed_bfloat16(bf16_run):
    model, x, y = bf16_run["model"], bf16_run["x"], bf16_run["y"]
    # bf16 compute, float32 variables and float32 logits.
    assert model.get_layer("block0_mlp_up").compute_dtype == "bfloat16"
    assert model.get_layer("block0_attention").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert {v.dtype for v in model.weights} == {"float32"}

    # After `fit` the model holds the posterior mean.
    final = model.evaluate(x[:64], y[:64], verbose=0)
    uniform = math.log(bf16_run["vocab_size"])
    assert final < 0.5 * uniform, (final, uniform)

    # The posterior (mean, h, momentum) is float32 and finite; so are the
    # sample θ = m + ε and the mean, which keep bits a bf16 copy would drop.
    optimizer = model.optimizer
    assert isinstance(optimizer, keras_bayes.optimizers.SOBA)
    for name, slots in optimizer._state.items():
        for slot in slots:
            assert slot.dtype == "float32", (name, slot.path)
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(slot)))
    floats = [v for v in optimizer.variables if "float" in str(v.dtype)]
    assert {v.dtype for v in floats} == {"float32"}
    for values in (bf16_run["sample"], optimizer.posterior_mean()):
        flat = np.concatenate([v.ravel() for v in values])
        assert np.all(np.isfinite(flat))
        assert np.mean(_low_16_bits_used(flat)) > 0.9


def test_clip_radius_bounds_every_mean_step(bf16_run):
    model = bf16_run["model"]
    means = bf16_run["means"]
    steps = bf16_run["steps"]
    assert len(means) == steps + 1
    saturated = 0
    for step in range(steps):
        rate = _warmup_cosine(step, LEARNING_RATE, steps, _warmup(steps))
        for variable, old, new in zip(model.trainable_variables,
                                      means[step], means[step + 1]):
            # soba.py: m ← m − α_t·(h0 + δ)·clip(u, ±ξ) with δ the
            # variable's weight decay (0 when excluded), so
            # |Δm| ≤ α_t·(h0 + δ)·ξ; float32 adds one rounding of the
            # product (relative 2⁻²³) and half an ulp of m − step.
            delta = 0.0 if variable.name in NO_DECAY else WEIGHT_DECAY
            bound = rate * (HESS_INIT + delta) * CLIP_RADIUS
            ulp = np.spacing(np.maximum(np.abs(old), np.abs(new)))
            change = np.abs(new.astype(np.float64) - old)
            assert np.all(change <= bound * (1 + 1e-6) + ulp), (
                variable.path, step, change.max(), bound)
            if bound > 0:
                saturated += int(np.sum(change >= 0.99 * bound))
    # The clipped gradient over h0 = 1e-3 is far above ξ, so most steps
    # are at the bound: without the clip this check fails.
    assert saturated > 0.5 * sum(m.size for m in means[0]) * (
        bf16_run["steps"] - 1)


def test_recipe_round_trips_through_config_and_keras_file(bf16_run):
    optimizer = _recipe(300, warmup_steps=6)
    config = optimizer.get_config()
    rebuilt = type(optimizer).from_config(config)
    assert isinstance(rebuilt, keras_bayes.optimizers.SOBA)
    assert rebuilt.get_config()["no_decay_names"] == list(NO_DECAY)
    for key, value in (("clip_radius", CLIP_RADIUS), ("global_clipnorm", 1.0),
                       ("hess_init", HESS_INIT), ("beta2", 0.99999),
                       ("weight_decay", WEIGHT_DECAY),
                       ("ess", TRAIN_TOKENS)):
        assert config[key] == value, key
        assert rebuilt.get_config()[key] == value, key
    # Linear warmup to the peak at step 6, cosine to 0 at step 300.
    schedule = rebuilt._learning_rate
    steps = (0, 3, 6, 153, 300)
    np.testing.assert_allclose(
        [float(schedule(step)) for step in steps],
        [0.0, LEARNING_RATE / 2, LEARNING_RATE, LEARNING_RATE / 2, 0.0],
        rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        [float(schedule(step)) for step in steps],
        [_warmup_cosine(step, LEARNING_RATE, 300, 6) for step in steps],
        rtol=1e-5, atol=1e-3)
    # The exclusions are in force in the rebuilt optimizer.
    variables = [keras.Variable(np.ones((2, 3)), name="kernel"),
                 keras.Variable(np.ones((2, 3)), name="bias"),
                 keras.Variable(np.ones((3,)), name="gamma")]
    rebuilt.build(variables)
    assert [rebuilt._weight_decay_for(v) for v in variables] == [
        WEIGHT_DECAY, 0.0, 0.0]

    model = bf16_run["model"]
    loaded = keras.models.load_model(bf16_run["path"])
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.get_layer("block0_mlp_up").compute_dtype == "bfloat16"
    for name, slots in model.optimizer._state.items():
        for a, b in zip(_numpy(slots), _numpy(loaded.optimizer._state[name])):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for a, b in zip(_numpy(model.optimizer.variables),
                    _numpy(loaded.optimizer.variables)):
        np.testing.assert_array_equal(a, b)
    assert [loaded.optimizer._weight_decay_for(v)
            for v in loaded.trainable_variables] == [
        0.0 if v.name in NO_DECAY else WEIGHT_DECAY
        for v in model.trainable_variables]


def test_weight_decay_on_kernels_and_embeddings_only():
    model = _tiny_lm(7)
    variables = model.trainable_variables
    assert {v.name for v in variables} == set(NO_DECAY) | {"kernel",
                                                           "embeddings"}
    # The attention biases are 2-D: excluded by name, not by rank.
    assert any(v.name == "bias" and len(v.shape) == 2 for v in variables)
    # The rule, for every variable of the model.
    optimizer = _recipe(10, warmup_steps=0)
    optimizer.build(variables)
    assert [optimizer._weight_decay_for(v) for v in variables] == [
        0.0 if v.name in NO_DECAY else WEIGHT_DECAY for v in variables]

    # The behaviour, on one variable of each kind (eager steps are slow
    # on JAX): with a zero gradient only the prior moves the mean.
    chosen = [model.get_layer(layer).weights[index] for layer, index in (
        ("token_embedding", 0), ("block0_ln1", 0), ("block0_ln1", 1),
        ("block0_mlp_up", 0), ("block0_attention", 1))]
    assert [v.name for v in chosen] == [
        "embeddings", "gamma", "beta", "kernel", "bias"]
    # Biases and betas start at 0, where no decay could show.
    for variable in chosen:
        if variable.name in ("bias", "beta"):
            variable.assign(np.ones(tuple(variable.shape), "float32"))
    before = _numpy(chosen)
    optimizer = _recipe(10, warmup_steps=0)
    zeros = [keras.ops.zeros(tuple(v.shape), "float32") for v in chosen]
    for _ in range(2):
        optimizer.apply(zeros, chosen)
    for variable, old, new in zip(chosen, before,
                                  optimizer.posterior_mean()):
        if variable.name in NO_DECAY:
            # δ = 0 and g = 0: the mean does not move at all.
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
        else:
            # δ = 1e-6: the prior pulls the mean towards 0 by a factor
            # 1 − α_t·(h0 + δ)·δ/(h + δ) ≈ 1 − α_t·δ per step (h ≈ h0).
            rates = [_warmup_cosine(t, LEARNING_RATE, 10, 0)
                     for t in range(2)]
            expected = 1.0 - np.prod([1.0 - r * WEIGHT_DECAY for r in rates])
            shrink = 1.0 - np.linalg.norm(new) / np.linalg.norm(old)
            np.testing.assert_allclose(shrink, expected, rtol=1e-2,
                                       err_msg=variable.path)


def _state_arrays(optimizer):
    return {name: _numpy(slots) for name, slots in optimizer._state.items()}


def test_global_clipnorm_acts_before_the_soba_update():
    """The momentum and the Price estimate ĥ = λ(h+δ)·ε·g both see the
    clipped gradient (algorithms.md §1.8): clipping in the optimizer equals
    feeding it the gradient scaled to norm 1 by hand."""
    rng = np.random.default_rng(1)
    initial = [rng.normal(0.0, 0.1, (8, 5)), rng.normal(0.0, 0.1, (5,))]

    def variables():
        return [keras.Variable(initial[0].astype("float32"), name="kernel"),
                keras.Variable(initial[1].astype("float32"), name="bias")]

    clipped_vars, manual_vars = variables(), variables()
    clipped = _recipe(20, warmup_steps=1)
    manual = _recipe(20, warmup_steps=1, global_clipnorm=None)
    for _ in range(3):
        grads = [rng.normal(0.0, 1.0, v.shape).astype("float32")
                 for v in initial]
        norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                             for g in grads))
        assert norm > 2.0
        # Backend tensors: Keras' clipping multiplies them by a tensor.
        clipped.apply([keras.ops.convert_to_tensor(g) for g in grads],
                      clipped_vars)
        manual.apply([keras.ops.convert_to_tensor(g / np.float32(norm))
                      for g in grads], manual_vars)
    clipped_state, manual_state = (_state_arrays(clipped),
                                   _state_arrays(manual))
    for name in ("mean", "hessian", "momentum"):
        for a, b in zip(clipped_state[name], manual_state[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8,
                                       err_msg=name)
    # The curvature moved (steps 2 and 3 had ε ≠ 0), so ĥ was compared;
    # unclipped gradients would move it much further.
    hessian = np.concatenate([h.ravel() for h in clipped_state["hessian"]])
    assert np.max(np.abs(hessian - HESS_INIT)) > 1e-7


def test_lm_is_causal_and_seeded():
    model = _tiny_lm(11, seed=5)
    again = _tiny_lm(11, seed=5)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    attention = model.get_layer("block0_attention")
    kernels = [keras.ops.convert_to_numpy(w) for w in attention.weights
               if w.name == "kernel"]
    assert not np.allclose(kernels[0], kernels[1])   # query ≠ key
    tokens = np.random.default_rng(0).integers(0, 11, (2, SEQUENCE_LENGTH))
    changed = tokens.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    out = keras.ops.convert_to_numpy(model(tokens))
    out_changed = keras.ops.convert_to_numpy(model(changed))
    assert out.shape == (2, SEQUENCE_LENGTH, 11)
    np.testing.assert_allclose(out[:, :-1], out_changed[:, :-1], atol=1e-5)
    assert not np.allclose(out[:, -1], out_changed[:, -1])
