"""The private Keras pieces of `keras_bayes._keras_compat`, one test each.

Every test checks that the piece exists *and* still behaves as keras_bayes
relies on. A failure names the piece and says that Keras changed it, so a
Keras upgrade that breaks keras_bayes points at the line to adapt in
`keras_bayes/_keras_compat.py` instead of at a numerical test far away.
"""

import contextlib
import pathlib
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_bayes import _keras_compat as compat

BACKEND = keras.backend.backend()
PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def only_on(backend):
    return pytest.mark.skipif(
        BACKEND != backend,
        reason=f"a private piece of Keras' {backend} backend only")


@contextlib.contextmanager
def relied_on(piece):
    """Turn any failure inside into one that names `piece`."""
    try:
        yield
    except Exception as error:
        pytest.fail(
            f"Keras {keras.version()} changed the private `{piece}` that "
            f"keras_bayes relies on ({type(error).__name__}: {error}). "
            "Adapt keras_bayes/_keras_compat.py, or install a Keras in the "
            "range pyproject.toml declares.")


def numpy(x):
    return ops.convert_to_numpy(x)


def dense_model(regularized=False, metrics=None, optimizer="sgd"):
    """A built and compiled 3 -> 2 linear model."""
    regularizer = keras.regularizers.L2(0.5) if regularized else None
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(2, kernel_regularizer=regularizer),
    ])
    model.compile(optimizer=optimizer, loss="mse", metrics=metrics)
    return model


def batch(n=4):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 3)).astype("float32"),
            rng.normal(size=(n, 2)).astype("float32"))


class RecordingOptimizer(keras.optimizers.Optimizer):
    """Plain SGD that records the calls of the hooks keras_bayes overrides."""

    def __init__(self, calls, skip_weight_decay=False, **kwargs):
        super().__init__(learning_rate=0.5, **kwargs)
        # A bound method: Keras' attribute tracking would copy a list.
        self.record = calls.append
        self.skip_weight_decay = skip_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        variable.assign(variable - learning_rate * gradient)

    def _apply_weight_decay(self, variables):
        self.record(("_apply_weight_decay", list(variables)))
        if not self.skip_weight_decay:
            super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self.record(("_backend_update_step",
                           [numpy(g) for g in grads],
                           list(trainable_variables),
                           float(numpy(learning_rate))))
        super()._backend_update_step(grads, trainable_variables,
                                     learning_rate)


# -- The check itself ------------------------------------------------------


def test_check_private_api_finds_everything():
    compat.check_private_api()


def test_check_private_api_names_a_missing_piece(monkeypatch):
    monkeypatch.setattr(keras.layers.BatchNormalization, "_moments", None)
    with pytest.raises(RuntimeError,
                       match=r"BatchNormalization\._moments") as error:
        compat.check_private_api()
    assert compat.MINIMUM_KERAS_VERSION in str(error.value)


def release(version):
    """`"3.15.0"` -> `(3, 15, 0)`; a missing part counts as 0."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def declared_keras_range():
    """`(X, Y)` of pyproject.toml's `keras>=X,<Y`."""
    text = PYPROJECT.read_text()
    match = re.search(r'"keras>=([\d.]+),<([\d.]+)"', text)
    assert match, "pyproject.toml declares keras as `keras>=X,<Y`"
    return match.group(1), match.group(2)


@pytest.mark.skipif(not PYPROJECT.exists(), reason="no source checkout")
def test_declared_range_matches_the_compat_module_and_the_install():
    floor, ceiling = declared_keras_range()
    assert floor == compat.MINIMUM_KERAS_VERSION, (
        "pyproject.toml's floor and MINIMUM_KERAS_VERSION agree")
    assert release(floor) <= release(keras.version()) < release(ceiling), (
        f"Keras {keras.version()} is outside the declared range "
        f">={floor},<{ceiling}: run scripts/test_keras_floor.sh and the "
        "suite on it before widening the range")


# -- Optimizers --------------------------------------------------------------


def test_backend_update_step_receives_clipped_grads_vars_and_lr():
    with relied_on("BaseOptimizer._backend_update_step"):
        assert "_backend_update_step" in compat.OPTIMIZER_HOOKS
        calls = []
        optimizer = RecordingOptimizer(calls, clipnorm=1.0)
        variable = keras.Variable(np.zeros(2, "float32"))
        optimizer.apply([ops.convert_to_tensor([3.0, 4.0])], [variable])
        updates = [c for c in calls if c[0] == "_backend_update_step"]
        assert len(updates) == 1, "called once per apply"
        _, grads, variables, learning_rate = updates[0]
        np.testing.assert_allclose(grads[0], [0.6, 0.8], rtol=1e-6,
                                   err_msg="gradients arrive clipped")
        assert variables == [variable] and variables[0] is variable
        assert learning_rate == pytest.approx(0.5)
        np.testing.assert_allclose(numpy(variable), [-0.3, -0.4],
                                   rtol=1e-6)


def test_apply_weight_decay_is_the_decay_hook():
    with relied_on("BaseOptimizer._apply_weight_decay"):
        assert "_apply_weight_decay" in compat.OPTIMIZER_HOOKS
        zero = [ops.zeros((2,))]
        calls = []
        overridden = RecordingOptimizer(calls, skip_weight_decay=True,
                                        weight_decay=0.1)
        variable = keras.Variable(np.ones(2, "float32"))
        overridden.apply(zero, [variable])
        assert [c[0] for c in calls] == ["_apply_weight_decay",
                                         "_backend_update_step"]
        assert calls[0][1] == [variable] and calls[0][1][0] is variable
        np.testing.assert_allclose(
            numpy(variable), [1.0, 1.0],
            err_msg="overriding the hook disables Keras' decoupled decay")
        decaying = RecordingOptimizer([], weight_decay=0.1)
        variable = keras.Variable(np.ones(2, "float32"))
        decaying.apply(zero, [variable])
        np.testing.assert_allclose(numpy(variable), [0.95, 0.95],
                                   rtol=1e-6)


def test_track_variable_makes_an_optimizer_variable():
    with relied_on("BaseOptimizer._track_variable"):
        optimizer = keras.optimizers.SGD()
        extra = keras.Variable(np.array([7.0, 8.0], "float32"),
                               trainable=False)
        compat.track_variable(optimizer, extra)
        optimizer.build([keras.Variable(np.zeros(2, "float32"))])
        assert any(v is extra for v in optimizer.variables)
        store = {}
        optimizer.save_own_variables(store)
        extra.assign([0.0, 0.0])
        optimizer.load_own_variables(store)
        np.testing.assert_allclose(numpy(extra), [7.0, 8.0],
                                   err_msg="tracked variables are saved")


def test_variable_index_and_key():
    with relied_on("BaseOptimizer._get_variable_index / _var_key"):
        optimizer = keras.optimizers.SGD()
        variables = [keras.Variable(np.zeros(n, "float32")) for n in (1, 2, 3)]
        optimizer.build(variables)
        assert [compat.variable_index(optimizer, v) for v in variables] == [
            0, 1, 2]
        keys = [compat.variable_key(optimizer, v) for v in variables]
        assert len(set(keys)) == 3
        assert compat.variable_key(optimizer, variables[1]) == keys[1]


def test_uses_weight_decay_honours_exclusions():
    with relied_on("BaseOptimizer._use_weight_decay"):
        optimizer = keras.optimizers.AdamW(weight_decay=0.1)
        kernel = keras.Variable(np.zeros(2, "float32"), name="kernel")
        bias = keras.Variable(np.zeros(2, "float32"), name="bias")
        other = keras.Variable(np.zeros(2, "float32"), name="other")
        optimizer.exclude_from_weight_decay(var_list=[other],
                                            var_names=["bias"])
        optimizer.build([kernel, bias, other])
        assert compat.uses_weight_decay(optimizer, kernel) is True
        assert compat.uses_weight_decay(optimizer, bias) is False
        assert compat.uses_weight_decay(optimizer, other) is False


def test_optimizer_variables_built_for():
    with relied_on("BaseOptimizer._trainable_variables"):
        optimizer = keras.optimizers.SGD()
        variables = [keras.Variable(np.zeros(n, "float32")) for n in (2, 1)]
        optimizer.build(variables)
        built_for = compat.optimizer_variables_built_for(optimizer)
        assert len(built_for) == 2
        assert all(a is b for a, b in zip(built_for, variables))


# -- Trainers and layers -----------------------------------------------------


class WithTraining(keras.layers.Layer):
    def call(self, inputs, training=None):
        return inputs


class WithoutTraining(keras.layers.Layer):
    def call(self, inputs):
        return inputs


def test_call_has_training_arg():
    with relied_on("Layer._call_has_training_arg"):
        assert compat.call_has_training_arg(WithTraining()) is True
        assert compat.call_has_training_arg(WithoutTraining()) is False
        assert compat.training_call_kwargs(WithTraining()) == {
            "training": True}
        assert compat.training_call_kwargs(WithoutTraining()) == {}


def test_compute_compiled_loss_adds_layer_losses():
    with relied_on("Trainer._compute_loss"):
        model = dense_model(regularized=True)
        x, y = batch()
        y_pred = model(x)
        loss = compat.compute_compiled_loss(model, x, y, y_pred, None)
        kernel = numpy(model.layers[0].kernel)
        expected = (np.mean((numpy(y_pred) - y) ** 2)
                    + 0.5 * np.sum(kernel ** 2))
        assert float(numpy(loss)) == pytest.approx(expected, rel=1e-5)


def test_loss_tracker_is_the_logged_loss():
    with relied_on("Trainer._loss_tracker"):
        model = dense_model()
        x, y = batch()
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                            shuffle=False)
        tracker = compat.loss_tracker(model)
        assert isinstance(tracker, keras.metrics.Mean)
        assert any(m is tracker for m in model.metrics)
        assert float(numpy(tracker.result())) == pytest.approx(
            history.history["loss"][-1], rel=1e-6)


def test_losses_override_replaces_layer_losses():
    with relied_on("Layer._losses_override"):
        model = dense_model(regularized=True)
        x, y = batch()
        y_pred = model(x)
        regular = [float(numpy(v)) for v in model.losses]
        assert len(regular) == 1
        replacement = ops.convert_to_tensor(10.0)
        compat.set_losses_override(model, [replacement])
        try:
            assert [float(numpy(v)) for v in model.losses] == [10.0]
            loss = compat.compute_compiled_loss(model, x, y, y_pred, None)
            expected = np.mean((numpy(y_pred) - y) ** 2) + 10.0
            assert float(numpy(loss)) == pytest.approx(expected, rel=1e-5)
        finally:
            compat.clear_losses_override(model)
        assert [float(numpy(v)) for v in model.losses] == pytest.approx(
            regular)


def test_symbolic_build_builds_optimizer_and_metrics():
    with relied_on("Trainer._symbolic_build"):
        model = keras.Sequential([keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        x, y = batch()
        compat.symbolic_build(model, (x, y))
        assert model.built and model.optimizer.built
        assert len(model.metrics_variables) > 0
        assert len(model.optimizer.variables) > 0


def test_flatten_layers():
    with relied_on("Layer._flatten_layers"):
        norm = keras.layers.BatchNormalization()
        inner = keras.Sequential([keras.layers.Dense(2), norm])
        model = keras.Sequential([keras.Input((3,)), inner,
                                  keras.layers.Dense(1)])
        layers = compat.flatten_layers(model)
        assert all(layer is not model for layer in layers)
        assert any(layer is inner for layer in layers)
        assert any(layer is norm for layer in layers), "recursive"
        with_self = compat.flatten_layers(model, include_self=True)
        assert any(layer is model for layer in with_self)


def test_batch_norm_moments_and_instance_shadow():
    with relied_on("BatchNormalization._moments"):
        x = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
        layer = keras.layers.BatchNormalization(epsilon=1e-3)
        other = keras.layers.BatchNormalization(epsilon=1e-3)
        layer.build((None, 3))
        other.build((None, 3))
        mean, variance = compat.batch_norm_moments(layer)(
            ops.convert_to_tensor(x), None)
        np.testing.assert_allclose(numpy(mean), x.mean(0), atol=1e-5)
        np.testing.assert_allclose(numpy(variance), x.var(0), rtol=1e-4)

        fixed_mean = np.array([1.0, 2.0, 3.0], "float32")
        fixed_variance = np.array([4.0, 1.0, 0.25], "float32")
        seen = []

        def moments(inputs, mask):
            seen.append(mask)
            return (ops.convert_to_tensor(fixed_mean),
                    ops.convert_to_tensor(fixed_variance))

        token = compat.shadow_batch_norm_moments(layer, moments)
        try:
            shadowed = numpy(layer(x, training=True))
            untouched = numpy(other(x, training=True))
            inference = numpy(layer(x, training=False))
        finally:
            compat.restore_batch_norm_moments(layer, token)
        assert len(seen) == 1, "`call` uses `_moments` in training mode only"
        np.testing.assert_allclose(
            shadowed, (x - fixed_mean) / np.sqrt(fixed_variance + 1e-3),
            rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            untouched, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3),
            rtol=1e-3, atol=1e-4, err_msg="shadow is on the instance only")
        assert inference.shape == x.shape
        assert "_moments" not in vars(layer), "restored"
        np.testing.assert_allclose(numpy(layer(x, training=True)), untouched,
                                   rtol=1e-4, atol=1e-5)


def test_unscale_loss_is_identity_outside_a_strategy():
    with relied_on("keras.src.losses.loss.unscale_loss_for_distribution"):
        loss = ops.convert_to_tensor(3.5)
        assert float(numpy(compat.unscale_loss_for_distribution(loss))) == (
            3.5)


@only_on("jax")
def test_update_jax_metrics_variables_returns_logs():
    with relied_on("JAXTrainer._update_metrics_variables"):
        model = dense_model(metrics=["mae"])
        x, y = batch()
        compat.symbolic_build(model, (x, y))
        y_pred = model(x)
        before = [numpy(v) for v in model.metrics_variables]
        values = [v.value for v in model.metrics_variables]
        logs, values = compat.update_jax_metrics_variables(
            model, values, ops.convert_to_tensor(2.5), x, y, y_pred, None)
        assert float(numpy(logs["loss"])) == pytest.approx(2.5)
        assert float(numpy(logs["mae"])) == pytest.approx(
            np.mean(np.abs(numpy(y_pred) - y)), rel=1e-5)
        assert len(values) == len(model.metrics_variables)
        for variable, old in zip(model.metrics_variables, before):
            np.testing.assert_array_equal(
                numpy(variable), old, err_msg="stateless: variables untouched")


@only_on("jax")
def test_jax_state_detached_while_the_trainer_holds_it():
    with relied_on("Variable._value (JAX trainer state)"):
        model = dense_model()
        kernel = model.layers[0].kernel
        seen = []

        class Probe(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                seen.append(compat.jax_state_detached(kernel))

        assert compat.jax_state_detached(kernel) is False
        x, y = batch()
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[Probe()])
        assert seen == [True], "fit holds the state outside the variables"
        assert compat.jax_state_detached(kernel) is False, "synced back"


@only_on("torch")
def test_torch_variable_tensor_can_be_a_view_that_assign_writes_into():
    """A torch variable stores a `torch.nn.Parameter` (`_value`), which may
    be replaced by a view of a larger buffer: `value` and `numpy` read it,
    `assign` copies into it in place (what `backend.share_storage` relies
    on), and the stored tensor is not what a `StatelessScope` maps."""
    import torch

    with relied_on("Variable._value (torch: the stored Parameter)"):
        variable = keras.Variable(np.ones((2, 3), "float32"),
                                  trainable=False)
        stored = compat.torch_variable_tensor(variable)
        assert isinstance(stored, torch.nn.Parameter)
        assert variable.value is stored
        buffer = torch.zeros(10)
        view = torch.nn.Parameter(buffer[2:8].view(2, 3),
                                  requires_grad=False)
        compat.set_torch_variable_tensor(variable, view)
        assert variable.value is view
        variable.assign(np.full((2, 3), 5.0, "float32"))
        np.testing.assert_array_equal(buffer.numpy(),
                                      [0, 0, 5, 5, 5, 5, 5, 5, 0, 0])
        buffer[2] = 7.0
        assert numpy(variable)[0, 0] == 7.0
        with keras.StatelessScope(state_mapping=[
                (variable, torch.zeros(2, 3))]):
            assert variable.value is not view
            assert compat.torch_variable_tensor(variable) is view


class _RecordExamples(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append(compat.fit_examples_per_epoch())


@pytest.mark.parametrize("n, batch_size, split", [
    (100, 32, 0.0), (96, 32, 0.0), (100, 16, 0.2)])
def test_fit_examples_per_epoch_is_the_training_set_size(n, batch_size,
                                                         split):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    record = _RecordExamples()
    x, y = np.zeros((n, 3), "float32"), np.zeros((n, 1), "float32")
    with relied_on("Trainer.fit's epoch_iterator.data_adapter"):
        model.fit(x, y, batch_size=batch_size, validation_split=split,
                  epochs=1, verbose=0, callbacks=[record])
        assert set(record.seen) == {int(n * (1 - split))}
    # Unknown outside `fit` and for a generator.
    assert compat.fit_examples_per_epoch() is None

    def batches():
        while True:
            yield x[:10], y[:10]

    record.seen.clear()
    model.fit(batches(), steps_per_epoch=2, epochs=1, verbose=0,
              callbacks=[record])
    assert record.seen == [None, None]
