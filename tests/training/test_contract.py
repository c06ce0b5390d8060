"""The training-step contract: a new multi-pass method defined here, outside
the package, trains through `TwoPassModel` with no change to the step."""

import ast
import inspect

import keras
import numpy as np
import pytest
from keras import ops

from keras_bayes.training import TwoPassModel
from keras_bayes.training import contract
from keras_bayes.training.contract import MultiPassOptimizer
from keras_bayes.training.contract import PassRecord
from keras_bayes.training.contract import StepContext
from keras_bayes.training.contract import StepPlan

EAGER = pytest.mark.parametrize("eager", [False, True],
                                ids=["compiled", "eager"])


class Extragradient(MultiPassOptimizer, keras.optimizers.SGD):
    """A toy two-pass rule: the gradient at the look-ahead point.

    g1 = ∇ℓ̄(w),  g2 = ∇ℓ̄(w − a·g1),  w ← w − α·g2 (plain SGD on g2),
    with the minibatch cut into `sub_batches` parts whose g2 are averaged.
    """

    def __init__(self, learning_rate, lookahead, sub_batches=1, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.lookahead = lookahead
        self.sub_batches = sub_batches
        self.seen = []   # (records, context) types, recorded while traced

    def step_plan(self):
        return StepPlan(sub_batches=self.sub_batches, second_pass=True)

    def second_pass_point(self, gradients, trainable_variables):
        return [ops.convert_to_tensor(v) - self.lookahead * g
                for g, v in zip(gradients, trainable_variables)]

    def combine_passes(self, records, context):
        self.seen.append((records, context))
        return super().combine_passes(records, context)


def data(n=8, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype("float32"),
            rng.normal(size=(n, k)).astype("float32"))


def dense_model(d=3, k=2, seed=3):
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(
        k, kernel_initializer=init,
        bias_initializer=keras.initializers.Constant(0.1))])


def mse_grads(kernel, bias, x, y):
    residual = x @ kernel + bias - y
    scale = 2.0 / residual.size
    return scale * x.T @ residual, scale * residual.sum(0)


def numpy_step(weights, x, y, lr, lookahead, parts):
    g2s = []
    for j in range(parts):
        lo, hi = j * len(x) // parts, (j + 1) * len(x) // parts
        g1 = mse_grads(*weights, x[lo:hi], y[lo:hi])
        point = [w - lookahead * g for w, g in zip(weights, g1)]
        g2s.append(mse_grads(*point, x[lo:hi], y[lo:hi]))
    g2 = [sum(parts_g) / parts for parts_g in zip(*g2s)]
    return [w - lr * g for w, g in zip(weights, g2)]


@pytest.mark.parametrize("parts", [1, 2])
@EAGER
def test_a_new_two_pass_method_trains_through_the_unchanged_step(parts,
                                                                 eager):
    x, y = data()
    lr, lookahead = 0.1, 0.5
    optimizer = Extragradient(lr, lookahead, sub_batches=parts)
    wrapper = TwoPassModel(dense_model())
    wrapper.compile(optimizer=optimizer, loss="mse", run_eagerly=eager)
    weights = [np.array(w, dtype="float64") for w in wrapper.get_weights()]
    for _ in range(3):
        wrapper.train_on_batch(x, y)
        weights = numpy_step(weights, x, y, lr, lookahead, parts)
        for got, want in zip(wrapper.get_weights(), weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    records, context = optimizer.seen[-1]
    assert len(records) == parts
    assert all(isinstance(r, PassRecord) for r in records)
    assert records[0].point is None                    # pass 1: variables
    assert all(r.second_grads is not None for r in records)
    assert isinstance(context, StepContext)
    assert len(context.variables) == len(wrapper.trainable_variables)


def test_the_new_method_refuses_a_plain_model():
    x, y = data()
    model = dense_model()
    model.compile(optimizer=Extragradient(0.1, 0.5), loss="mse")
    with pytest.raises(ValueError, match="TwoPassModel"):
        model.fit(x, y, verbose=0)


def test_step_plan_says_when_keras_own_step_suffices():
    assert not StepPlan().is_multi_pass
    assert StepPlan(second_pass=True).is_multi_pass
    assert StepPlan(samples=2).is_multi_pass
    assert StepPlan(sub_batches=2).is_multi_pass


def test_contract_is_a_leaf_module():
    # Optimizers import it, so it must not import anything of keras_bayes.
    tree = ast.parse(inspect.getsource(contract))
    imported = [alias.name for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("keras_bayes")]
