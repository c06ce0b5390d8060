"""Every public name has a docstring with an example, and the example runs.

"Public" is what the modules' `__all__` lists name (the same lists the API
reference is generated from), classes and functions only (constants and
submodules have no example to run). A docstring's examples are its `>>>`
lines, checked with `doctest` (outputs compared, `ELLIPSIS` and
`NORMALIZE_WHITESPACE` on), and its ```python blocks, run with `exec` one
after the other in one fresh namespace, so that each docstring's example is
self-contained, as a user would copy it. Both run in a temporary working
directory (examples that save files leave nothing behind).

Examples that build or train a Keras model run on every backend; pure NumPy
ones are marked `backend_independent` (run once), and the torch.distributed
ones run on torch only. Examples are tiny (a few dozen examples, one or two
epochs); the slowest are the first builds of ResNet-20 and the transformer
on JAX, where each initializer is compiled once per process.
"""

import contextlib
import doctest
import importlib
import inspect
import io
import re
import textwrap

import keras
import pytest

PUBLIC_MODULES = [
    "keras_bayes.optimizers",
    "keras_bayes.callbacks",
    "keras_bayes.metrics",
    "keras_bayes.training",
    "keras_bayes.continual",
    "keras_bayes.distributed",
    "keras_bayes.plots",
    "keras_bayes.datasets",
    "keras_bayes.layers",
    "keras_bayes.models",
    "keras_bayes.posterior",
    "keras_bayes.predictive",
    "keras_bayes",
]

#: Examples whose result cannot depend on KERAS_BACKEND: NumPy functions
#: (metrics, datasets, plots, the continual-learning scores).
BACKEND_INDEPENDENT = {
    "keras_bayes.metrics.accuracy",
    "keras_bayes.metrics.auroc",
    "keras_bayes.metrics.average_precision",
    "keras_bayes.metrics.brier_score",
    "keras_bayes.metrics.calibration_bins",
    "keras_bayes.metrics.classification_report",
    "keras_bayes.metrics.evaluate_probabilities",
    "keras_bayes.metrics.expected_calibration_error",
    "keras_bayes.metrics.fpr_at_tpr",
    "keras_bayes.metrics.gaussian_nll",
    "keras_bayes.metrics.interval_coverage",
    "keras_bayes.metrics.maximum_calibration_error",
    "keras_bayes.metrics.misclassification_detection",
    "keras_bayes.metrics.mutual_information",
    "keras_bayes.metrics.negative_log_likelihood",
    "keras_bayes.metrics.ood_detection",
    "keras_bayes.metrics.predictive_entropy",
    "keras_bayes.metrics.uncertainty_decomposition",
    "keras_bayes.continual.Task",
    "keras_bayes.continual.average_accuracy",
    "keras_bayes.continual.backward_transfer",
    "keras_bayes.continual.forgetting",
    "keras_bayes.continual.permuted_digits",
    "keras_bayes.continual.permuted_tasks",
    "keras_bayes.continual.split_cifar10",
    "keras_bayes.continual.split_digits",
    "keras_bayes.continual.split_mnist1d",
    "keras_bayes.continual.split_tasks",
    "keras_bayes.continual.accuracy_from_logits",
    "keras_bayes.distributed.shard_bounds",
    "keras_bayes.plots.pyplot",
    "keras_bayes.plots.reliability_diagram",
    "keras_bayes.plots.uncertainty_map",
    "keras_bayes.plots.continual_accuracy",
    "keras_bayes.datasets.load_digits",
    "keras_bayes.datasets.load_mnist1d",
    "keras_bayes.datasets.load_cifar10",
    "keras_bayes.datasets.load_tfds",
    "keras_bayes.datasets.class_split",
    "keras_bayes.datasets.synthetic_shift",
    "keras_bayes.predictive.softmax",
    "keras_bayes.predictive.average_log_probs",
    "keras_bayes.posterior.PriorSpec",
}

#: Examples that start a torch.distributed process group.
TORCH_ONLY = {
    "keras_bayes.distributed.broadcast_variables",
    "keras_bayes.distributed.fit_data_parallel",
    "keras_bayes.distributed.global_metrics_result",
    "keras_bayes.distributed.train_step",
}

PYTHON_BLOCK = re.compile(r"^([ \t]*)```python\n(.*?)^\1```",
                          re.DOTALL | re.MULTILINE)


def public_objects():
    """[(name, object)] of every public class and function, each object
    once: under the first module of `PUBLIC_MODULES` that lists it, by its
    own `__name__` where an alias names it too (`SOBA`, not `IVON`)."""
    found = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            earlier = found.get(id(obj))
            if earlier is None or (
                    earlier[0].rpartition(".")[0] == module_name
                    and name == obj.__name__):
                found[id(obj)] = (f"{module_name}.{name}", obj)
    return list(found.values())


PUBLIC = dict(public_objects())


def own_docstring(obj):
    """The object's own docstring (a class does not inherit its base's)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return inspect.cleandoc(doc) if doc else ""


def examples(doc):
    """(doctest lines present, [```python block sources])."""
    blocks = [textwrap.dedent(block)
              for _, block in PYTHON_BLOCK.findall(doc)]
    return ">>>" in doc, blocks


def _params():
    params = []
    for name in PUBLIC:
        marks = []
        if name in BACKEND_INDEPENDENT:
            marks.append(pytest.mark.backend_independent)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.backend_independent
def test_marks_name_public_objects():
    assert BACKEND_INDEPENDENT <= set(PUBLIC), (
        BACKEND_INDEPENDENT - set(PUBLIC))
    assert TORCH_ONLY <= set(PUBLIC), TORCH_ONLY - set(PUBLIC)


@pytest.mark.backend_independent
def test_every_public_module_has_all():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert hasattr(module, "__all__"), module_name
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (module_name, missing)


def docstring_problem(name):
    """What the docstring of public `name` lacks, or None."""
    doc = own_docstring(PUBLIC[name])
    if not doc:
        return f"{name}: no docstring"
    has_doctest, blocks = examples(doc)
    if not (has_doctest or blocks):
        return f"{name}: no example (`>>>` lines or a ```python block)"
    if "Example" not in doc:
        return f"{name}: no 'Example' heading"
    return None


@pytest.mark.backend_independent
def test_every_public_name_has_a_docstring_with_an_example():
    # One test for all names (each test costs a Keras session reset).
    problems = [p for p in map(docstring_problem, PUBLIC) if p]
    assert not problems, "\n".join(problems)


def run_examples(name, doc):
    has_doctest, blocks = examples(doc)
    if has_doctest:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(doc, {"__name__": "__main__"}, name,
                                  None, 0)
        runner = doctest.DocTestRunner(
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report = io.StringIO()
        result = runner.run(test, out=report.write)
        assert result.failed == 0, report.getvalue()
    namespace = {"__name__": "__main__"}
    for block in blocks:
        code = compile(block, f"<{name} example>", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)


@pytest.mark.parametrize("name", _params())
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    if name in TORCH_ONLY and keras.backend.backend() != "torch":
        pytest.skip("a torch.distributed example")
    monkeypatch.chdir(tmp_path)
    run_examples(name, own_docstring(PUBLIC[name]))


@pytest.mark.backend_independent
def test_a_failing_example_fails():
    """The runner is not vacuous: a wrong doctest output, and an exception
    in a ```python block, both fail."""
    with pytest.raises(AssertionError, match="Expected"):
        run_examples("wrong_output", ">>> 1 + 1\n3\n")
    with pytest.raises(ZeroDivisionError):
        run_examples("raises", "```python\n1 / 0\n```\n")
    # Blocks of one docstring share a namespace; other docstrings do not.
    run_examples("shared", "```python\na = 1\n```\n```python\nb = a\n```\n")
    with pytest.raises(NameError):
        run_examples("fresh", "```python\nb = a\n```\n")
